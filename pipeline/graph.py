"""The only module that knows Ray: connecting, probing in isolated tasks, and the Ray Data graphs.

    fervid run:  from_items(segments) -> map_batches(DecodeDetectCrop, CPU actors)
                                      -> map_batches(Classify, GPU/CPU actors) -> driver
                 (classifier.actors 0: from_items(segments) -> map_batches(DecodeDetectClassify) -> driver)
    fervid eval: from_items(images)   -> map_batches(read_image_crops, CPU tasks)
                                      -> map_batches(Classify, GPU/CPU actors) -> driver
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from pipeline import storage
from pipeline.config import ClassifierConfig, Config
from pipeline.decode import VideoInfo, probe
from pipeline.errors import FervidError
from pipeline.models import ClassifierSpec
from pipeline.stages import Classify, DecodeDetectClassify, DecodeDetectCrop, read_image_crops

if TYPE_CHECKING:
    import ray.data

IN_SUBMITTED_JOB = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray in the environment of a submitted job's entrypoint
CODE_EXCLUDES = ["__pycache__", "*.pyc"]
QUIET_RAY_LOGGERS = (
    "ray.data._internal.progress",  # "Progress bars disabled": fervid shows its own
    "ray._private.authentication.authentication_token_setup",  # "Token authentication is enabled" (Ray's default)
)
WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # for every worker
EXTRACT_NODE, CLASSIFY_NODE = "extract_node", "classify_node"  # row columns: the Ray node each stage ran on


def project_code() -> list[str]:
    """The folders of fervid's packages, as a Ray runtime_env's py_modules."""
    root = Path(__file__).resolve().parents[1]
    return [str(root / "pipeline"), str(root / "jobs")]


class DecodeDetectCropOnNode(DecodeDetectCrop):
    """DecodeDetectCrop whose rows name the node they were made on, for the run record."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _with_node(super().__call__(batch), EXTRACT_NODE)


class DecodeDetectClassifyOnNode(DecodeDetectClassify):
    """DecodeDetectClassify whose rows name the node they were made and scored on, for the run record."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _with_node(_with_node(super().__call__(batch), EXTRACT_NODE), CLASSIFY_NODE)


class ClassifyOnNode(Classify):
    """Classify whose rows name the node they were scored on, for the run record."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _with_node(super().__call__(batch), CLASSIFY_NODE)


def _with_node(rows: pa.Table, column: str) -> pa.Table:
    import ray

    node = ray.get_runtime_context().get_node_id()
    return rows.append_column(column, pa.array([node] * len(rows), pa.string()))


def cluster_address(address: str | None) -> str | None:
    """The cluster to join: address, else RAY_ADDRESS; None means a Ray inside this process."""
    return address or os.environ.get("RAY_ADDRESS") or None


def connect(address: str | None) -> None:
    """Join the cluster at address (or RAY_ADDRESS); otherwise start Ray inside this process.

    Joining a cluster from outside a submitted job carries this copy of fervid's code to its workers,
    so they run the same code as the driver (a submitted job carries it already, see submit.py). A
    ray:// address joins over Ray Client, where Ray Data cannot run: see client.py.
    """
    import ray
    from ray.data import DataContext

    context = DataContext.get_current()  # also where Ray is up: a run inside a Ray task (client.py)
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    for choice in QUIET_RAY_LOGGERS:  # their warnings only restate what fervid chose, on every run
        logging.getLogger(choice).setLevel(logging.ERROR)
    if ray.is_initialized():
        return
    address = cluster_address(address)
    if address:
        runtime_env = {"env_vars": dict(WORKER_ENV)}
        if IN_SUBMITTED_JOB not in os.environ:
            runtime_env.update(py_modules=project_code(), excludes=CODE_EXCLUDES)
        ray.init(address=address, logging_level=logging.WARNING, runtime_env=runtime_env)
    else:
        # A local Ray's workers inherit this process's environment. A runtime_env would pass the same
        # variables but keep Ray from using the workers it starts with: it starts new ones for the
        # first tasks (1.2 s more before the first probe returned, measured).
        for name, value in WORKER_ENV.items():
            os.environ.setdefault(name, value)
        ray.init(include_dashboard=False, logging_level=logging.WARNING)


def refuse_ray_client(what: str) -> None:
    """One clear line where a Ray library needs a process of the cluster's own and this one is a Ray Client."""
    import ray

    if ray.util.client.ray.is_connected():
        raise FervidError(f"{what} does not run over Ray Client (ray://; only fervid run takes such addresses): "
                          "run this on a node of the cluster with --address HEAD:6379")


def cancelled(error: BaseException) -> bool:
    """Whether error comes from this task being cancelled: Ray cancels its child tasks first, and Ray Data
    raises their TaskCancelledError from wherever it was waiting on one."""
    import ray

    while error is not None:
        if isinstance(error, ray.exceptions.TaskCancelledError):
            return True
        error = error.__cause__ or error.__context__
    return False


def probe_videos(videos: dict[str, str]) -> Iterator[tuple[str, VideoInfo | Exception]]:
    """Probe every video (path -> video_id) in its own Ray task, so a decoder crash costs one video, not the run."""
    import ray

    task = ray.remote(num_cpus=1, max_retries=1)(_probe_local_copy)
    pending = {task.remote(path, video_id): path for path, video_id in videos.items()}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        path = pending.pop(ready[0])
        try:
            yield path, ray.get(ready[0])
        except ray.exceptions.RayTaskError as e:
            yield path, e.cause if isinstance(e.cause, Exception) else e
        except Exception as e:  # the worker died: a crash inside the decoder
            yield path, RuntimeError(f"the decoder crashed ({type(e).__name__})")


def _probe_local_copy(path: str, video_id: str) -> VideoInfo:
    """Decoders need a file: a remote video is probed from this node's cached copy, which its segments reuse."""
    return probe(storage.local_file(path, video_id))


def stream_scores(segments: list[dict], config: Config, detector_path: str,
                  spec: ClassifierSpec) -> Iterator[pa.Table]:
    """Run the stages over the segments; yield scored rows as they come out, in any order."""
    import ray
    from ray.data import ActorPoolStrategy

    d, c = config.detector, config.classifier
    resources = ray.cluster_resources()
    # Decode+detect actors share what the classifier leaves, fractionally if need be, so that
    # every actor fits and a light classifier (num_cpus < 1) doesn't idle a whole core.
    cpus_left = max(resources.get("CPU", 1) - c.actors * c.num_cpus, 0.5)
    extract_actors = d.actors or max(1, round(cpus_left))
    extract_cpus = min(float(d.threads), cpus_left / extract_actors)
    detector = {"model_path": detector_path, "det_size": d.det_size, "aspect_fit": d.aspect_fit,
                "threshold": d.threshold, "min_face_px": d.min_face_px, "max_faces": d.max_faces,
                "threads": d.threads, "device": _device(d.device, d.num_gpus)}
    extract = {"detector": detector, "margin": config.crop.margin, "crop_size": spec.input_size}
    stage, scored = DecodeDetectCropOnNode, False
    if c.actors == 0:  # the classifier runs inside the decode+detect actors, on their CPU share
        extract["classifier"] = _classifier_kwargs(c, spec, "cpu", threads=c.threads or d.threads)
        stage, scored = DecodeDetectClassifyOnNode, True
    ds = ray.data.from_items(segments, override_num_blocks=max(1, len(segments)))
    ds = ds.map_batches(
        stage, fn_constructor_kwargs=extract, batch_size=1, batch_format="pyarrow",
        compute=ActorPoolStrategy(size=extract_actors), num_cpus=extract_cpus, num_gpus=d.num_gpus,
        resources=d.resources or None)
    if not scored:
        ds = _classify(ds, c, spec)
    yield from ds.iter_batches(batch_format="pyarrow", batch_size=None)


def stream_image_scores(images: list[dict], c: ClassifierConfig, spec: ClassifierSpec,
                        images_per_block: int = 256) -> Iterator[pa.Table]:
    """Score rows naming image files ({"path": ..., any other columns}) with the Classify stage of `fervid run`.

    Reading and resizing is a stage of its own (Ray Data fuses it into the classifier actors where
    their resources agree); rows come back with `p_<label>` columns, in any order, without the
    files that could not be read.
    """
    import ray

    ds = ray.data.from_items(images, override_num_blocks=max(1, -(-len(images) // images_per_block)))
    ds = ds.map_batches(read_image_crops, fn_kwargs={"side": spec.input_size}, batch_size=None,
                        batch_format="pyarrow", num_cpus=1)
    yield from _classify(ds, c, spec).iter_batches(batch_format="pyarrow", batch_size=None)


def _classify(ds: ray.data.Dataset, c: ClassifierConfig, spec: ClassifierSpec) -> ray.data.Dataset:
    """The classifier actor pool, on a GPU each where the cluster has GPUs (unless num_gpus, int8 or the
    onnxruntime runtime say otherwise)."""
    import ray
    from ray.data import ActorPoolStrategy

    refuse_ray_client("Ray Data")  # ray-project/ray#48682; `fervid run` runs its graph in a task instead
    gpus = ray.cluster_resources().get("GPU", 0)
    cpu_only = c.quantize or c.runtime == "onnxruntime"
    num_gpus = c.num_gpus if c.num_gpus is not None else (1.0 if gpus and not cpu_only else 0.0)
    classifier = _classifier_kwargs(c, spec, _device(c.device, num_gpus), threads=c.threads or max(1, int(c.num_cpus)))
    return ds.map_batches(
        ClassifyOnNode, fn_constructor_kwargs={"classifier": classifier},
        batch_size=c.batch_size, batch_format="pyarrow", compute=ActorPoolStrategy(size=max(c.actors, 1)),
        num_cpus=c.num_cpus, num_gpus=num_gpus, resources=c.resources or None)


def _classifier_kwargs(c: ClassifierConfig, spec: ClassifierSpec, device: str, threads: int) -> dict:
    """EmotionClassifier's arguments for an actor on `device` with `threads` threads."""
    return {"model": spec.source, "revision": c.revision, "device": device, "dtype": c.dtype,
            "quantize": c.quantize, "runtime": c.runtime, "batch_size": c.batch_size, "threads": threads}


def _device(device: str, num_gpus: float) -> str:
    """auto: CUDA exactly where Ray gave the actor a GPU (share), so no actor uses a GPU it did not ask for."""
    return device if device != "auto" else ("cuda" if num_gpus > 0 else "cpu")
