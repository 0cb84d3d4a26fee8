"""Finding model weights: local paths, InsightFace packs, Hugging Face hub ids; offline errors.

Resolution happens once on the driver, before any worker starts, so a missing model is one
clear error instead of a failure in every actor.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from pipeline import storage
from pipeline.calibrate import read_temperature
from pipeline.errors import FervidError, first_line

if TYPE_CHECKING:
    import onnxruntime

DERIVED_MODELS = Path(tempfile.gettempdir()) / "fervid-models"  # files fervid makes from models, per machine
_LOCAL_HINT = "point the config at a local copy (e.g. --set {key}={example})"
LOCAL_EXAMPLES = {"detector.model": "/path/to/det_10g.onnx", "classifier.model": "/path/to/model_dir"}


class NotCached(FervidError):
    """A model that is neither local nor cached, and whose hub could not be reached to fetch it."""

    def __init__(self, key: str, model: str, cache: str) -> None:
        self.key, self.model, self.cache = key, model, cache
        super().__init__(f"{key} '{model}' is not cached and its hub cannot be reached; "
                         f"{_LOCAL_HINT.format(key=key, example=LOCAL_EXAMPLES[key])}, or at a cache that holds it "
                         f"({cache})")


def looks_local(model: str) -> bool:
    """Whether a model name can only be a path (a hub id is owner/name, a pack a bare name)."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or Path(model).suffix in (".onnx", ".json")


def resolve_models(detector: str, classifier: str, revision: str | None) -> tuple[Path, ClassifierSpec]:
    """Both models, checked before any work; every problem is reported in one line, an unreachable hub once."""
    found, problems = [], []
    for resolve, args in ((resolve_detector, (detector,)), (resolve_classifier, (classifier, revision))):
        try:
            found.append(resolve(*args))
        except FervidError as e:
            problems.append(e)
    if not problems:
        return found[0], found[1]
    missing = [p for p in problems if isinstance(p, NotCached)]
    if len(missing) > 1:
        named = " and ".join(f"{p.key} '{p.model}'" for p in missing)
        hints = "; ".join(f"--set {p.key}={LOCAL_EXAMPLES[p.key]}" for p in missing)
        caches = ", ".join(p.cache for p in missing)
        problems = [p for p in problems if not isinstance(p, NotCached)] + [FervidError(
            f"the model hubs cannot be reached and {named} are not cached: point the config at local copies "
            f"({hints}) or at caches that hold them ({caches})")]
    return _raise_all(problems)


def _raise_all(problems: list[FervidError]) -> tuple[Path, ClassifierSpec]:
    if len(problems) == 1:
        raise problems[0]
    raise FervidError(f"{len(problems)} problems with the models: " + "; ".join(map(str, problems)))


@dataclass(frozen=True)
class ClassifierSpec:
    """What the driver needs to know about the classifier without loading its weights."""

    source: str  # local directory or hub id, as given to from_pretrained
    revision: str  # hub commit hash, or a content hash of local weights
    labels: tuple[str, ...]  # from id2label, in index order
    input_size: int  # square side from the preprocessor config
    temperature: float = 1.0  # softmax temperature fitted by `fervid eval --fit-temperature` (temperature.json)

    @property
    def identity(self) -> str:
        """The weights' identity: a local folder's content hash (wherever it lies), else hub id @ commit."""
        return self.revision if Path(self.source).exists() else f"{self.source}@{self.revision}"

    @property
    def identity_digest(self) -> str:
        """The identity as a short name for files made from these weights."""
        return hashlib.blake2b(self.identity.encode(), digest_size=8).hexdigest()


def file_digest(source: str | Path | pa.NativeFile, chunk: int = 1 << 20) -> str:
    """A cheap content hash: size plus the first, middle and last MiB. Renames and copies keep it, local or
    remote alike; read by offset, so a remote video costs three ranged reads, not a download."""
    if not isinstance(source, pa.NativeFile):
        with storage.open_input(source) as f:
            return file_digest(f, chunk)
    size = source.size()
    h = hashlib.blake2b(digest_size=8)
    h.update(str(size).encode())
    for offset in sorted({0, max(0, size // 2 - chunk // 2), max(0, size - chunk)}):
        h.update(source.read_at(chunk, offset))
    return h.hexdigest()


def resolve_detector(model: str) -> Path:
    """An SCRFD .onnx path as given, or the detection model of an InsightFace pack (fetched if absent)."""
    path = Path(model).expanduser()
    if path.exists() or looks_local(model):
        if not path.is_file():
            raise FervidError(f"detector model not found: {model}")
        return path
    try:
        from insightface.utils.storage import ensure_available

        with contextlib.redirect_stdout(io.StringIO()):  # its downloader prints where it looks, whatever happens
            pack = Path(ensure_available("models", model))
    except Exception:  # insightface raises whatever its downloader hits
        raise NotCached("detector.model", model, "~/.insightface/models for InsightFace packs") from None
    found = sorted(pack.rglob("det_*.onnx"))
    if not found:
        raise FervidError(f"InsightFace pack '{model}' has no det_*.onnx detection model in {pack}")
    return found[0]


def resolve_recognizer(model: str | None, detector: str) -> Path:
    """The face-recognition .onnx of identity.model, or (None) the recognition model of the InsightFace pack the
    detector comes from (buffalo_l: w600k_r50.onnx)."""
    if model is not None:
        path = Path(model).expanduser()
        if not path.is_file():
            raise FervidError(f"identity model not found: {model}")
        return path
    found = sorted(resolve_detector(detector).parent.glob("w600k_*.onnx"))
    if not found:
        raise FervidError(f"identity.model is not set and the detector {detector} has no w600k_*.onnx recognition "
                          "model beside it (as an InsightFace pack has): set identity.model to a recognition .onnx, "
                          "or identity.enabled: false")
    return found[0]


@functools.lru_cache(maxsize=8)
def resolve_classifier(model: str, revision: str | None = None) -> ClassifierSpec:
    """Read the classifier's config and preprocessor JSON (no weights, no transformers import: the
    driver stays light): labels, input size, revision. Models that ask to run their own code are refused."""
    local = Path(model).expanduser()
    if not local.exists() and looks_local(model):
        raise FervidError(f"classifier model not found: {model}")
    if local.exists():
        if not (local / "config.json").is_file():
            raise FervidError(f"classifier model directory {model} has no config.json")
        weights = sorted(local.glob("*.safetensors"))
        if not weights:
            raise FervidError(f"classifier model {model} has no .safetensors weights (pickle checkpoints are refused)")
        source, folder = str(local.resolve()), local
        rev = hashlib.blake2b("".join(file_digest(w) for w in weights).encode(), digest_size=8).hexdigest()
    else:
        source, folder = model, _hub_snapshot(model, revision)
        rev = folder.name  # the snapshot folder is named after the commit
    try:
        config = json.loads((folder / "config.json").read_text())
        preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
    except (OSError, ValueError) as e:
        raise FervidError(f"classifier model '{model}' could not be read ({first_line(e)})") from None
    if "auto_map" in config or "auto_map" in preprocessor:
        raise FervidError(f"classifier model '{model}' asks to run its own code (auto_map); fervid refuses that")
    id2label = config.get("id2label")
    if not id2label:
        raise FervidError(f"classifier model '{model}' has no id2label in its config")
    labels = tuple(id2label[k] for k in sorted(id2label, key=int))
    size = preprocessor.get("size")
    side = size if isinstance(size, int) else (size or {}).get("height") or (size or {}).get("shortest_edge")
    if not side:
        raise FervidError(f"classifier model '{model}' has no input size in its preprocessor config")
    temperature = read_temperature(folder) if local.exists() else 1.0
    return ClassifierSpec(source=source, revision=rev, labels=labels, input_size=int(side), temperature=temperature)


def _hub_snapshot(model: str, revision: str | None) -> Path:
    """The local snapshot folder holding a hub model's config and preprocessor (fetched if not cached)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # retries against an unreachable hub would print a line each
    try:
        for name in ("preprocessor_config.json", "config.json"):
            try:
                path = hf_hub_download(model, name, revision=revision, local_files_only=True)
            except Exception:  # not cached: ask the hub
                path = hf_hub_download(model, name, revision=revision)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):  # offline or the hub unreachable, and not cached
        raise NotCached("classifier.model", model, "HF_HOME for Hugging Face models") from None
    except Exception as e:  # the hub answered: an unknown repo, a gated one, an HTTP error
        raise FervidError(f"classifier model '{model}' could not be loaded ({first_line(e, 160)}); "
                          f"{_LOCAL_HINT.format(key='classifier.model', example='/path/to/model_dir')}") from None
    return Path(path).parent


def model_revision(model: str, kind: str, revision: str | None = None) -> str:
    """A stable identity for the weights a model name points at, for the config fingerprint."""
    if kind == "detector":
        return file_digest(resolve_detector(model))
    return resolve_classifier(model, revision).identity


def derived_model_file(name: str, make: Callable[[Path], None]) -> Path:
    """DERIVED_MODELS/name, made by make(path) unless an earlier run or actor on this machine made it
    (actors starting together: one makes it, the others wait for it)."""
    DERIVED_MODELS.mkdir(parents=True, exist_ok=True)
    with storage.made_once(DERIVED_MODELS / name, make) as target:
        return target


def onnx_session_options(threads: int) -> onnxruntime.SessionOptions:
    """ONNX Runtime options for `threads` intra-op threads (0 keeps its default: all cores)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options
