"""Run configuration: YAML files in configs/, validated, with `--set a.b=value` overrides.

Unknown keys and wrong types are errors. Relative model paths resolve against the
folder of the config file that names them, so a config can travel with its models.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.classify import place_classifier
from pipeline.errors import FervidError

# Containers FFmpeg commonly reads: camera, phone, broadcast, web and dataset formats.
VIDEO_EXTENSIONS = [".3g2", ".3gp", ".asf", ".avi", ".f4v", ".flv", ".m2ts", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg",
                    ".mpg", ".mts", ".mxf", ".ogv", ".ts", ".vob", ".webm", ".wmv"]


@dataclass
class InputsConfig:
    extensions: list[str] = field(default_factory=lambda: list(VIDEO_EXTENSIONS))  # file endings taken, any case
    include: list[str] = field(default_factory=list)  # globs over the path under VIDEOS; none: every video
    exclude: list[str] = field(default_factory=list)  # globs over the path under VIDEOS: left out


@dataclass
class SamplingConfig:
    fps: float | None = 5.0  # frames per second of video, by decoder timestamps
    every_n_frames: int | None = None  # the alternative: every Nth decoded frame
    segment_s: float = 10.0  # length of the work unit one worker takes
    decode_max_side: int | None = None  # decode larger frames scaled down to this longer side; None: as stored


@dataclass
class DetectorConfig:
    model: str = "buffalo_l"  # InsightFace pack name, or a path to an SCRFD .onnx
    det_size: int | str = "auto"  # detector input's longer side, a multiple of 32; auto: per frame by face size
    aspect_fit: bool = True  # det_size on the longer side, the frame's aspect on the other (else a square)
    threshold: float = 0.5
    min_face_px: int = 0  # faces whose shorter box side is below this are dropped
    max_faces: int = 0  # per frame, largest first; 0 keeps all
    threads: int = 1  # ONNX Runtime threads per detector actor
    actors: int = 0  # decode+detect+crop actors; 0 means one per CPU left over
    device: str = "auto"  # auto (cuda when num_gpus > 0), cpu or cuda
    num_gpus: float = 0.0  # per actor, fractional: > 0 runs SCRFD on ONNX Runtime's CUDA provider
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources per actor, to pin it to nodes


@dataclass
class CropConfig:
    margin: float = 0.2  # extra side length around the face box, as a fraction of it
    align: bool = True  # turn each face upright by its keypoints before cutting; false: the box as the frame shows it


@dataclass
class QualityConfig:
    """Which faces are `usable`; the views summarise those only (all faces stay in `faces`)."""

    min_face_px: float = 40.0  # the face box's longer side, source pixels
    max_yaw_deg: float = 45.0  # rough head turn, either way
    max_pitch_deg: float = 35.0  # rough head tilt, up or down
    min_sharpness: float = 0.2  # faces.sharpness: sharp faces measure 0.45-0.6, a blur of 2% of the face about 0.2
    min_det_score: float = 0.6  # the detector's confidence (detector.threshold finds faces from 0.5)


@dataclass
class ClassifierConfig:
    model: str = "trpakov/vit-face-expression"  # Hugging Face hub id or local directory
    revision: str | None = None  # hub revision (branch, tag or commit)
    temperature: float | None = None  # softmax temperature; null: the model folder's temperature.json, else 1
    batch_size: int = 32
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16
    quantize: str | None = None  # int8: dynamic int8 feed-forward layers, for CPU-only boxes
    runtime: str = "auto"  # auto (onnxruntime for fp32 on the CPU, else torch), onnxruntime or torch
    device: str = "auto"  # auto, cpu or cuda
    actors: int | None = None  # null: 1 where the cluster has GPUs, else 0: score inside the decode+detect actors
    num_gpus: float | None = None  # per actor; None: 1 where the cluster has GPUs, else 0
    num_cpus: float = 1.0  # per actor
    threads: int = 0  # torch / ONNX Runtime threads per actor; 0 means num_cpus
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources per actor, to pin it to nodes


@dataclass
class TrackingConfig:
    enabled: bool = True  # fill faces.track_id
    high_score: float = 0.6  # detections at or above it start and extend tracks; weaker ones only extend
    match_iou: float = 0.3  # least buffered IoU between a track's predicted box and a detection
    max_gap_s: float = 1.0  # a track unseen for longer ends
    min_frames: int = 2  # tracks with fewer detections are dropped (their faces get no track)


@dataclass
class IdentityConfig:
    """Who is who: face embeddings, tracks cut where the person changes, person ids across the results folder."""

    enabled: bool = True  # false: no embeddings computed or stored, no person ids
    model: str | None = None  # ArcFace-style recognition .onnx (112x112); null: the detector pack's (w600k_*.onnx)
    min_face_px: float = 40.0  # smaller faces (box side, source pixels) are not embedded
    fps: float = 2.0  # at most this many sampled frames per second of video have their faces embedded
    split_similarity: float = 0.2  # a track is cut where 2 embedded faces in a row are less similar to it
    same_person: float = 0.5  # a track joins the most similar person at least this similar, else a new one
    gallery: str | None = None  # a folder holding a folder of photos per person name
    gallery_similarity: float = 0.5  # a person takes the most similar gallery name at least this similar


@dataclass
class Config:
    inputs: InputsConfig = field(default_factory=InputsConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of every setting that changes results; not paths to the same weights, not resources."""
        from pipeline.classify import temperature
        from pipeline.models import model_revision, resolve_classifier

        d, c = self.detector, self.classifier
        key = {
            "sampling": {"fps": self.sampling.fps, "every_n_frames": self.sampling.every_n_frames,
                         "decode_max_side": self.sampling.decode_max_side},
            "detector": {
                "model": model_revision(d.model, kind="detector"),
                "det_size": d.det_size,
                "aspect_fit": d.aspect_fit,
                "threshold": d.threshold,
                "min_face_px": d.min_face_px,
                "max_faces": d.max_faces,
            },
            "crop": dataclasses.asdict(self.crop),
            "quality": dataclasses.asdict(self.quality),
            "classifier": {"model": model_revision(c.model, kind="classifier", revision=c.revision),
                           "dtype": c.dtype, "quantize": c.quantize, "runtime": c.runtime,
                           "temperature": temperature(c, resolve_classifier(c.model, c.revision))},
            "tracking": dataclasses.asdict(self.tracking),
            "identity": self._identity_key(),
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def _identity_key(self) -> dict[str, Any] | bool:
        """What of identity changes a video's tables (embeddings, track cuts); people and names are assigned
        over the whole folder after every run, so same_person and the gallery are not part of it."""
        from pipeline.models import file_digest, resolve_recognizer

        i = self.identity
        if not i.enabled:
            return False
        return {"model": file_digest(resolve_recognizer(i.model, self.detector.model)), "min_face_px": i.min_face_px,
                "fps": i.fps, "split_similarity": i.split_similarity}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (defaults when None), apply `a.b=value` overrides, validate."""
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FervidError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise FervidError(f"config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise FervidError(f"config {path} must be a mapping of sections")
        base = path.resolve().parent
    config = _build(Config, _sampling_choice(raw, "in the config file"), "")
    _resolve_model_paths(config, base)
    given: dict[str, Any] = {}
    for item in overrides or []:
        key, given[key] = _apply_override(config, item)
    _sampling_choice({"sampling": {key: value for key, value in given.items() if key in SAMPLING_MODES}}, "with --set")
    _check(config)
    return config


SAMPLING_MODES = ("fps", "every_n_frames")  # sample by time or by count: the one a user sets wins


def _sampling_choice(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """raw with the sampling mode it sets chosen over the other's default; both set to values is an error."""
    sampling = raw.get("sampling")
    if not isinstance(sampling, dict):
        return raw
    if all(sampling.get(mode) is not None for mode in SAMPLING_MODES):
        raise FervidError(f"sampling.fps and sampling.every_n_frames are both set {where}: set one of them "
                          "(or the other to null)")
    chosen = [mode for mode in SAMPLING_MODES if sampling.get(mode) is not None]
    others = {mode: None for mode in SAMPLING_MODES if chosen and mode != chosen[0] and mode not in sampling}
    return {**raw, "sampling": {**sampling, **others}}


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise FervidError(f"config section '{where or 'top'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise FervidError(f"unknown config key '{_join(where, unknown[0])}' (known: {', '.join(sorted(names))})")
    values = {}
    for name, value in raw.items():
        hint = hints[name]
        key = _join(where, name)
        values[name] = _build(hint, value, key) if dataclasses.is_dataclass(hint) else _coerce(hint, value, key)
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Check one value against its type hint; ints are accepted where floats are expected."""
    if typing.get_origin(hint) is list:
        if not isinstance(value, list):
            raise FervidError(f"config key '{key}' must be a list, got {value!r}")
        (item_type,) = typing.get_args(hint)
        return [_coerce(item_type, item, key) for item in value]
    if typing.get_origin(hint) is dict:
        if not isinstance(value, dict):
            raise FervidError(f"config key '{key}' must be a mapping, got {value!r}")
        key_type, value_type = typing.get_args(hint)
        return {_coerce(key_type, k, key): _coerce(value_type, v, f"{key}.{k}") for k, v in value.items()}
    allowed = typing.get_args(hint) or (hint,)
    if value is None and type(None) in allowed:
        return None
    for t in allowed:
        if t is bool and isinstance(value, bool):
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is str and isinstance(value, str):
            return value
    names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
    raise FervidError(f"config key '{key}' must be {names}, got {value!r}")


def _apply_override(config: Config, item: str) -> tuple[str, Any]:
    """Apply one `section.name=value`; returns (name, value). Setting one sampling mode clears the other."""
    if "=" not in item:
        raise FervidError(f"--set takes key=value, got '{item}'")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2:
        raise FervidError(f"--set key must be section.name, got '{key}'")
    section_name, name = parts
    section = getattr(config, section_name, None)
    if not dataclasses.is_dataclass(section):
        raise FervidError(f"unknown config section '{section_name}' in --set {item}")
    value = yaml.safe_load(text) if text.strip() else None
    values = {**dataclasses.asdict(section), name: value}
    if section_name == "sampling" and name in SAMPLING_MODES and value is not None:
        values.update({mode: None for mode in SAMPLING_MODES if mode != name})
    setattr(config, section_name, _build(type(section), values, section_name))
    return name if section_name == "sampling" else f"{section_name}.{name}", value


def _resolve_model_paths(config: Config, base: Path) -> None:
    """A model named by a relative path that exists beside the config file becomes absolute."""
    for section in (config.detector, config.classifier, config.identity):
        if section.model is None:
            continue
        candidate = base / section.model
        if not Path(section.model).is_absolute() and (candidate.exists() or section.model.startswith(".")):
            section.model = str(candidate.resolve())


def _check(config: Config) -> None:
    s, d, c = config.sampling, config.detector, config.classifier
    odd = [e for e in config.inputs.extensions if not (e.startswith(".") and len(e) > 1 and "/" not in e)]
    if odd or not config.inputs.extensions:
        raise FervidError(f"inputs.extensions must be file endings such as .mp4, got {odd or 'none'}")
    if (s.fps is None) == (s.every_n_frames is None):
        raise FervidError("set exactly one of sampling.fps and sampling.every_n_frames (the other to null)")
    if s.fps is not None and s.fps <= 0:
        raise FervidError("sampling.fps must be positive")
    if s.every_n_frames is not None and s.every_n_frames < 1:
        raise FervidError("sampling.every_n_frames must be at least 1")
    if s.segment_s <= 0:
        raise FervidError("sampling.segment_s must be positive")
    if s.decode_max_side is not None and s.decode_max_side < 32:
        raise FervidError("sampling.decode_max_side must be at least 32 (or null: frames as stored)")
    if d.det_size != "auto" and (isinstance(d.det_size, str) or d.det_size <= 0 or d.det_size % 32):
        raise FervidError("detector.det_size must be auto or a positive multiple of 32")
    if not 0 < d.threshold < 1:
        raise FervidError("detector.threshold must be between 0 and 1")
    for key, value in (("detector.min_face_px", d.min_face_px), ("detector.max_faces", d.max_faces),
                       ("detector.actors", d.actors), ("classifier.actors", c.actors or 0),
                       ("classifier.threads", c.threads)):
        if value < 0:
            raise FervidError(f"{key} must not be negative")
    if d.threads < 1 or c.batch_size < 1:
        raise FervidError("detector.threads and classifier.batch_size must be at least 1")
    if config.crop.margin < 0:
        raise FervidError("crop.margin must not be negative")
    q = config.quality
    for key, value in (("quality.min_face_px", q.min_face_px), ("quality.max_yaw_deg", q.max_yaw_deg),
                       ("quality.max_pitch_deg", q.max_pitch_deg), ("quality.min_sharpness", q.min_sharpness),
                       ("quality.min_det_score", q.min_det_score)):
        if value < 0:
            raise FervidError(f"{key} must not be negative")
    if c.temperature is not None and c.temperature <= 0:
        raise FervidError("classifier.temperature must be positive (or null: the model folder's, else 1)")
    if c.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise FervidError("classifier.dtype must be auto, float32, bfloat16 or float16")
    if c.quantize not in (None, "int8"):
        raise FervidError("classifier.quantize must be null or int8")
    if c.runtime not in ("auto", "onnxruntime", "torch"):
        raise FervidError("classifier.runtime must be auto, onnxruntime or torch")
    for key, value in (("detector.device", d.device), ("classifier.device", c.device)):
        if value not in ("auto", "cpu", "cuda"):
            raise FervidError(f"{key} must be auto, cpu or cuda")
    place_classifier(c, cluster_gpus=1)  # settings that contradict each other, whatever the cluster has
    if (c.num_gpus is not None and c.num_gpus < 0) or c.num_cpus < 0 or d.num_gpus < 0:
        raise FervidError("classifier.num_gpus, classifier.num_cpus and detector.num_gpus must not be negative")
    for section, resources in (("detector", d.resources), ("classifier", c.resources)):
        if any(amount < 0 for amount in resources.values()):
            raise FervidError(f"{section}.resources amounts must not be negative")
    i = config.identity
    if i.fps <= 0 or i.min_face_px < 0:
        raise FervidError("identity.fps must be positive and identity.min_face_px not negative")
    for key, value in (("identity.split_similarity", i.split_similarity), ("identity.same_person", i.same_person),
                       ("identity.gallery_similarity", i.gallery_similarity)):
        if not -1 < value < 1:
            raise FervidError(f"{key} must be between -1 and 1 (a cosine similarity)")
    t = config.tracking
    for key, value in (("tracking.high_score", t.high_score), ("tracking.match_iou", t.match_iou)):
        if not 0 < value < 1:
            raise FervidError(f"{key} must be between 0 and 1")
    if t.max_gap_s < 0:
        raise FervidError("tracking.max_gap_s must not be negative")
    if t.min_frames < 1:
        raise FervidError("tracking.min_frames must be at least 1")


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name
