"""The Ray graphs over the stages, and probing each video apart from the others.

    fervid run:  from_items(segments) -> map_batches(DecodeDetectCrop, CPU actors)
                                      -> map_batches(Classify, GPU/CPU actors) -> driver
                 (no GPU, or classifier.actors 0: segments -> DecodeDetectClassify actors (pool.py) -> driver)
    fervid eval: from_items(images)   -> map_batches(read_image_crops, CPU tasks)
                                      -> map_batches(Classify, GPU/CPU actors) -> driver
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from pipeline.classify import place_classifier
from pipeline.config import ClassifierConfig, Config
from pipeline.decode import VideoInfo
from pipeline.executor.connect import refuse_ray_client
from pipeline.executor.pool import ActorPool, probe_error, probe_local_copy
from pipeline.models import ClassifierSpec
from pipeline.schema import CLASSIFY_NODE, EXTRACT_NODE, EXTRACT_SCHEMA, Segment
from pipeline.stages import Classify, DecodeDetectClassify, DecodeDetectCrop, read_image_crops, segment_error_row

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


class Analysis:
    """What `fervid run` asks of Ray, started as soon as Ray is up: probe the videos, then score their segments.

    Without a GPU to feed (placement.actors 0), plain actors (pool.py) do both, each running whole
    segments through DecodeDetectClassify. Otherwise every video is probed in a Ray task of its own,
    and a Ray Data graph streams the segments through a decode+detect pool into a classifier pool.
    """

    def __init__(self, config: Config, detector_path: str | Path, spec: ClassifierSpec,
                 recognizer_path: str | Path | None = None) -> None:
        import ray

        d, c = config.detector, config.classifier
        self.config, self.spec = config, spec
        resources = ray.cluster_resources()
        placement = place_classifier(c, resources.get("GPU", 0), fused_threads=d.threads)
        # Decode+detect actors share what the classifier leaves, fractionally if need be, so that
        # every actor fits and a light classifier (num_cpus < 1) doesn't idle a whole core.
        cpus_left = max(resources.get("CPU", 1) - placement.actors * c.num_cpus, 0.5)
        self.extract_actors = d.actors or max(1, round(cpus_left))
        self.options = {"num_cpus": min(float(d.threads), cpus_left / self.extract_actors), "num_gpus": d.num_gpus,
                        "resources": d.resources or None}
        self.extract = {"detector": d, "detector_path": str(detector_path), "crop": config.crop,
                        "crop_size": spec.input_size, "identity": config.identity,
                        "recognizer_path": recognizer_path and str(recognizer_path)}
        self.pool = None
        if placement.actors == 0:  # the classifier runs inside the decode+detect actors, on their CPU share
            self.extract.update(classifier=c, spec=spec, placement=placement)
            self.pool = ActorPool(DecodeDetectClassifyOnNode, self.extract, self.extract_actors, self.options)

    def __enter__(self) -> Analysis:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.close()

    def probe(self, videos: dict[str, str]) -> Iterator[tuple[str, VideoInfo | Exception]]:
        """(path, VideoInfo or why not) for every video (path -> video_id), each probed apart from the
        others, so a decoder crash costs one video, not the run."""
        if self.pool is not None:
            yield from self.pool.probe(videos)
            return
        import ray

        task = ray.remote(num_cpus=1, max_retries=1)(probe_local_copy)
        pending = {task.remote(path, video_id): path for path, video_id in videos.items()}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            path = pending.pop(ready[0])
            try:
                yield path, ray.get(ready[0])
            except Exception as e:  # the decoder's error, or the worker died: a crash inside the decoder
                yield path, probe_error(e)

    def scores(self, segments: list[Segment]) -> Iterator[pa.Table]:
        """Run the stages over the segments; yield scored rows as they come out, in any order."""
        rows = [s.to_row() for s in segments]
        if self.pool is not None:
            yield from self.pool.run(rows, _lost)
            return
        import ray
        from ray.data import ActorPoolStrategy

        ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
        ds = ds.map_batches(DecodeDetectCropOnNode, fn_constructor_kwargs=self.extract, batch_size=1,
                            batch_format="pyarrow", compute=ActorPoolStrategy(size=self.extract_actors), **self.options)
        yield from _classify(ds, self.config.classifier, self.spec).iter_batches(batch_format="pyarrow", batch_size=None)


def _lost(segment: dict, why: str) -> pa.Table:
    """The closing row of a segment whose rows never came back, which fails its video."""
    return pa.Table.from_pylist([segment_error_row(Segment.from_row(segment), why)], schema=EXTRACT_SCHEMA)


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
