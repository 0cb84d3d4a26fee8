"""The Ray Data graphs over the stages, and probing videos in isolated Ray tasks.

    fervid run:  from_items(segments) -> map_batches(DecodeDetectCrop, CPU actors)
                                      -> map_batches(Classify, GPU/CPU actors) -> driver
                 (no GPU, or classifier.actors 0: from_items(segments) -> map_batches(DecodeDetectClassify) -> driver)
    fervid eval: from_items(images)   -> map_batches(read_image_crops, CPU tasks)
                                      -> map_batches(Classify, GPU/CPU actors) -> driver
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from pipeline import storage
from pipeline.classify import place_classifier
from pipeline.config import ClassifierConfig, Config
from pipeline.decode import VideoInfo, probe
from pipeline.executor.connect import refuse_ray_client
from pipeline.models import ClassifierSpec
from pipeline.schema import CLASSIFY_NODE, EXTRACT_NODE, Segment
from pipeline.stages import Classify, DecodeDetectClassify, DecodeDetectCrop, read_image_crops

if TYPE_CHECKING:
    import ray.data


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


def stream_scores(segments: list[Segment], config: Config, detector_path: str | Path,
                  spec: ClassifierSpec, recognizer_path: str | Path | None = None) -> Iterator[pa.Table]:
    """Run the stages over the segments; yield scored rows as they come out, in any order."""
    import ray
    from ray.data import ActorPoolStrategy

    d, c = config.detector, config.classifier
    resources = ray.cluster_resources()
    placement = place_classifier(c, resources.get("GPU", 0), fused_threads=d.threads)
    # Decode+detect actors share what the classifier leaves, fractionally if need be, so that
    # every actor fits and a light classifier (num_cpus < 1) doesn't idle a whole core.
    cpus_left = max(resources.get("CPU", 1) - placement.actors * c.num_cpus, 0.5)
    extract_actors = d.actors or max(1, round(cpus_left))
    extract_cpus = min(float(d.threads), cpus_left / extract_actors)
    extract = {"detector": d, "detector_path": str(detector_path), "crop": config.crop, "crop_size": spec.input_size,
               "identity": config.identity, "recognizer_path": recognizer_path and str(recognizer_path)}
    stage, scored = DecodeDetectCropOnNode, False
    if placement.actors == 0:  # the classifier runs inside the decode+detect actors, on their CPU share
        extract.update(classifier=c, spec=spec, placement=placement)
        stage, scored = DecodeDetectClassifyOnNode, True
    ds = ray.data.from_items([s.to_row() for s in segments], override_num_blocks=max(1, len(segments)))
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
    """The classifier actor pool, placed by place_classifier (a GPU each where the cluster has GPUs)."""
    import ray
    from ray.data import ActorPoolStrategy

    refuse_ray_client("Ray Data")  # ray-project/ray#48682; `fervid run` runs its graph in a task instead
    placement = place_classifier(c, ray.cluster_resources().get("GPU", 0))
    return ds.map_batches(
        ClassifyOnNode, fn_constructor_kwargs={"classifier": c, "spec": spec, "placement": placement},
        batch_size=c.batch_size, batch_format="pyarrow", compute=ActorPoolStrategy(size=max(placement.actors, 1)),
        num_cpus=c.num_cpus, num_gpus=placement.num_gpus, resources=c.resources or None)
