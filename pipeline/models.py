"""Finding model weights: local paths, InsightFace packs, Hugging Face hub ids; offline errors.

Resolution happens once on the driver, before any worker starts, so a missing model is one
clear error instead of a failure in every actor.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import FervidError

_LOCAL_HINT = "point the config at a local copy (e.g. --set {key}={example})"


@dataclass(frozen=True)
class ClassifierSpec:
    """What the driver needs to know about the classifier without loading its weights."""

    source: str  # local directory or hub id, as given to from_pretrained
    revision: str  # hub commit hash, or a content hash of local weights
    labels: tuple[str, ...]  # from id2label, in index order
    input_size: int  # square side from the preprocessor config


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """A cheap content hash: size plus the first, middle and last MiB. Renames don't change it."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.blake2b(digest_size=8)
    h.update(str(size).encode())
    with path.open("rb") as f:
        for offset in sorted({0, max(0, size // 2 - chunk // 2), max(0, size - chunk)}):
            f.seek(offset)
            h.update(f.read(chunk))
    return h.hexdigest()


def resolve_detector(model: str) -> Path:
    """An SCRFD .onnx path as given, or the detection model of an InsightFace pack (fetched if absent)."""
    path = Path(model).expanduser()
    if path.suffix == ".onnx" or path.exists():
        if not path.is_file():
            raise FervidError(f"detector model not found: {model}")
        return path
    try:
        from insightface.utils.storage import ensure_available

        pack = Path(ensure_available("models", model))
    except Exception as e:  # insightface raises whatever its downloader hits
        raise FervidError(
            f"InsightFace pack '{model}' is not cached in ~/.insightface/models and could not be fetched "
            f"({type(e).__name__}); {_LOCAL_HINT.format(key='detector.model', example='/path/to/det_10g.onnx')}"
        ) from None
    found = sorted(pack.rglob("det_*.onnx"))
    if not found:
        raise FervidError(f"InsightFace pack '{model}' has no det_*.onnx detection model in {pack}")
    return found[0]


@functools.lru_cache(maxsize=8)
def resolve_classifier(model: str, revision: str | None = None) -> ClassifierSpec:
    """Read the classifier's config and preprocessor (no weights): labels, input size, revision."""
    from huggingface_hub.utils import logging as hub_logging
    from transformers import AutoConfig, AutoImageProcessor

    hub_logging.set_verbosity_error()  # retries against an unreachable hub would print a line each

    local = Path(model).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise FervidError(f"classifier model directory {model} has no config.json")
        if not list(local.glob("*.safetensors")):
            raise FervidError(f"classifier model {model} has no .safetensors weights (pickle checkpoints are refused)")
        source = str(local.resolve())
    else:
        source = model
    kwargs = {"revision": revision, "trust_remote_code": False}
    try:
        try:
            config = AutoConfig.from_pretrained(source, local_files_only=True, **kwargs)
            processor = AutoImageProcessor.from_pretrained(source, local_files_only=True, **kwargs)
        except OSError:
            if local.exists():
                raise
            config = AutoConfig.from_pretrained(source, **kwargs)
            processor = AutoImageProcessor.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        raise FervidError(
            f"classifier model '{model}' could not be loaded ({str(e).splitlines()[0][:160]}); "
            f"if it is not cached and the hub is unreachable, "
            f"{_LOCAL_HINT.format(key='classifier.model', example='/path/to/model_dir')}"
        ) from None
    if not getattr(config, "id2label", None):
        raise FervidError(f"classifier model '{model}' has no id2label in its config")
    labels = tuple(config.id2label[i] for i in sorted(config.id2label))
    size = dict(processor.size) if not isinstance(processor.size, int) else {"height": processor.size}
    side = size.get("height") or size.get("shortest_edge")
    if not side:
        raise FervidError(f"classifier model '{model}' has no input size in its preprocessor config")
    if local.exists():
        weights = sorted(local.glob("*.safetensors"))
        rev = hashlib.blake2b("".join(file_digest(w) for w in weights).encode(), digest_size=8).hexdigest()
    else:
        rev = getattr(config, "_commit_hash", None) or revision or "unknown"
    return ClassifierSpec(source=source, revision=rev, labels=labels, input_size=int(side))


def model_revision(model: str, kind: str, revision: str | None = None) -> str:
    """A stable identity for the weights a model name points at, for the config fingerprint."""
    if kind == "detector":
        return file_digest(resolve_detector(model))
    spec = resolve_classifier(model, revision)
    return spec.revision if Path(spec.source).exists() else f"{spec.source}@{spec.revision}"
