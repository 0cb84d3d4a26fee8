"""`fervid bench` / `python -m jobs.bench`: how fast fervid is, against the loop a user would write.

In one process run, on the same videos and models:
- each stage alone, one worker, in this process: decode (sampled frames/s), detect (frames/s, at the sizes
  detector.det_size gives),
  classify (faces/s, batched as configured);
- the plain sequential loop, written with the libraries alone: open each video, read each sampled
  frame, detect, crop, classify one face at a time (library default threads, torch on one thread);
- fervid end to end, as `fervid run` runs it: Runner starts a local Ray of its own, so Ray's start is on the
  clock (measured first; Ray is stopped before the rest): throughput, where the start's seconds go (Ray up,
  videos probed, first scored rows, first committed video), an actor's imports and constructor alone in a
  fresh process, peak memory of the driver and of the Ray workers, object-store spill.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.config import Config, InputsConfig, load_config
from pipeline.crop import square_crops
from pipeline.decode import probe, read_frames, sample_indices
from pipeline.detect import AUTO, FULL_SIZE, FaceDetector, SizeChooser
from pipeline.models import resolve_classifier, resolve_detector
from pipeline.plan import decode_size, discover
from pipeline.schema import OK

if TYPE_CHECKING:
    from pipeline.stages import DecodeDetectClassify

SHARED = Path(__file__).resolve().parents[2] / "shared"
DEFAULT_REPEAT = 8  # about 5 minutes of video: long enough that fervid's fixed start-up is not most of the run


def make_workload(source: Path, repeat: int, folder: Path) -> list[Path]:
    """`repeat` copies of every video in source; a few trailing bytes give each copy its own content id."""
    paths = []
    for k in range(repeat):
        for video in discover(source, InputsConfig()).videos:
            copy = folder / f"{k:03d}_{video.path.name}"
            shutil.copyfile(video.path, copy)
            with copy.open("ab") as f:
                f.write(b"\0" * (k + 1))
            paths.append(copy)
    return paths


def measure_stages(paths: list[Path], config: Config) -> dict:
    """Each stage alone, one worker with the configured threads, on every sampled frame of the workload."""
    from pipeline.classify import EmotionClassifier

    d, c = config.detector, config.classifier
    spec = resolve_classifier(c.model, c.revision)
    detector = FaceDetector.from_config(d, resolve_detector(d.model))
    classifier = EmotionClassifier.from_config(c, spec)
    decode_s = detect_s = 0.0
    frames, crops = 0, []
    for path in paths:
        info = probe(str(path))
        indices = sample_indices(info.pts_s, config.sampling.fps, config.sampling.every_n_frames)
        size = decode_size(info.width, info.height, config.sampling.decode_max_side)
        reader = read_frames(str(path), info.decoder, indices, info.rotation, size, info.pts_s[indices].tolist())
        pts_of = dict(zip(indices.tolist(), info.pts_s[indices].tolist()))
        sizes = SizeChooser(detector)  # det_size auto chooses along the video, as along a segment
        while True:
            start = time.perf_counter()
            item = next(reader, None)
            decode_s += time.perf_counter() - start
            if item is None:
                break
            start = time.perf_counter()
            found, _ = sizes.detect(item[1], pts_of[item[0]])
            detect_s += time.perf_counter() - start
            crops.append(square_crops(item[1], found.xyxy, config.crop.margin, spec.input_size))
            frames += 1
    faces = np.concatenate(crops)
    start = time.perf_counter()
    classifier.predict(faces)
    classify_s = time.perf_counter() - start
    return {"frames": frames, "faces": len(faces), "decode_frames_per_s": frames / decode_s,
            "detect_frames_per_s": frames / detect_s, "classify_faces_per_s": len(faces) / classify_s}


def reference_loop(paths: list[Path], config: Config) -> dict:
    """The loop a user would write with the libraries alone, same models and settings: per video, per
    sampled frame, per face; insightface's detector at its default threads, the image processor and
    model of transformers one crop at a time, torch on one thread."""
    import decord
    import insightface
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its bar for loading the weights would land in the middle of the table
    torch.set_num_threads(1)  # one crop at a time: faster than torch's default of all cores (measured), so the loop is at its best
    d, c = config.detector, config.classifier
    spec = resolve_classifier(c.model, c.revision)
    start = time.perf_counter()
    detector = insightface.model_zoo.get_model(str(resolve_detector(d.model)), providers=["CPUExecutionProvider"])
    size = FULL_SIZE if d.det_size == AUTO else d.det_size  # the loop detects at one size
    detector.prepare(ctx_id=-1, input_size=(size, size), det_thresh=d.threshold)
    processor = AutoImageProcessor.from_pretrained(spec.source)
    model = AutoModelForImageClassification.from_pretrained(spec.source).eval()
    frames = faces = 0
    for path in paths:
        reader = decord.VideoReader(str(path))
        pts = reader.get_frame_timestamp(range(len(reader)))[:, 0].astype(np.float64)
        for index in sample_indices(pts, config.sampling.fps, config.sampling.every_n_frames):
            frame = reader[int(index)].asnumpy()
            boxes, _ = detector.detect(frame[..., ::-1], max_num=d.max_faces)  # SCRFD takes BGR
            boxes = boxes[np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= d.min_face_px]
            for crop in square_crops(frame, boxes[:, :4], config.crop.margin, spec.input_size):
                with torch.no_grad():
                    model(**processor(images=crop, return_tensors="pt")).logits.softmax(-1)
                faces += 1
            frames += 1
    wall = time.perf_counter() - start
    return {"frames": frames, "faces": faces, "wall_s": wall, "frames_per_s": frames / wall}


class Sampler:
    """Calls `read` every `every_s` seconds in a background thread while in its `with` block; keeps the values
    it returns (None: nothing to record then)."""

    def __init__(self, read: Callable[[], float | None], every_s: float = 0.25) -> None:
        self.read, self.every_s = read, every_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(self.every_s):
            value = self.read()
            if value is not None:
                self.samples.append(value)


def end_to_end(paths: list[Path], config: Config, out: Path) -> dict:
    """fervid on the workload as `fervid run` runs it, Ray's start included (a Ray of its own, unless one is
    up already: the GPU check's)."""
    from pipeline.executor import connect
    from pipeline.runner import Runner

    folder = paths[0].parent
    with Sampler(_ray_workers_rss()) as workers, Sampler(lambda: _rss(os.getpid())) as driver:
        summary = Runner(folder, out, config, force=True, show_progress=False).run()
    spilled = connect.spilled_mib()
    connect.shutdown()
    return {
        "videos_ok": summary.counts[OK], "frames": summary.frames, "faces": summary.faces,
        "wall_s": summary.wall_s, "frames_per_s": summary.frames / summary.wall_s,
        "faces_per_s": summary.faces / summary.wall_s, "ray_up_s": summary.ray_up_s, "probed_s": summary.probed_s,
        "first_result_s": summary.first_result_s, "first_commit_s": summary.first_commit_s,
        "first_result_frames": summary.first_result_frames,
        # the pipeline's rate once its actors are up: the frames after the first result over the time after it
        "running_frames_per_s": (summary.frames - summary.first_result_frames)
        / max(summary.wall_s - summary.first_result_s, 1e-9),
        "driver_peak_rss_mib": max(driver.samples, default=0) / 2**20,
        "workers_peak_rss_mib": max(workers.samples, default=0) / 2**20,
        "spilled_mib": spilled,
    }


def _ray_workers_rss() -> Callable[[], int | None]:
    """A reading of the Ray workers' summed memory: None until the Runner has started Ray."""
    import ray

    from pipeline.executor import connect

    read = None

    def reading() -> int | None:
        nonlocal read
        if not ray.is_initialized():
            return None
        read = read or connect.worker_memory(_rss, _children)
        return read()
    return reading


def fused_stage(config: Config) -> DecodeDetectClassify:
    """The stage a CPU actor holds (every stage of a segment), built from a config in this process (its modules
    imported here, as an actor imports them)."""
    from pipeline.classify import place_classifier
    from pipeline.models import resolve_recognizer
    from pipeline.stages import DecodeDetectClassify

    d, c, i = config.detector, config.classifier, config.identity
    spec = resolve_classifier(c.model, c.revision)
    recognizer = resolve_recognizer(i.model, d.model) if i.enabled else None
    return DecodeDetectClassify(d, resolve_detector(d.model), config.crop, spec.input_size, c, spec,
                                place_classifier(c, 0, fused_threads=d.threads), i, recognizer)


ACTOR_START = """
import sys, time
start = time.perf_counter()
from pipeline.stages import DecodeDetectClassify
imported = time.perf_counter()
from pipeline.bench import fused_stage
from pipeline.config import load_config
fused_stage(load_config(sys.argv[1]))
print(imported - start, time.perf_counter() - imported)
"""


def actor_start(config: Config, folder: Path) -> dict:
    """What a CPU actor's start costs alone, in a fresh process: its imports (without Ray's), and its
    constructor (the detector, classifier and recognizer sessions)."""
    import subprocess

    import yaml

    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    out = subprocess.run([sys.executable, "-c", ACTOR_START, str(path)], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    return {"imports_s": float(out[-2]), "constructor_s": float(out[-1])}


def machine() -> dict:
    from importlib import metadata

    import torch

    info = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    for name in ("ray", "torch", "transformers", "onnxruntime", "decord", "insightface"):
        info[name] = metadata.version(name)
    return info


def run_bench(videos: Path, config: Config, repeat: int, results: Path | None = None) -> dict:
    """All figures for one workload; fervid's own results go to `results` when given (else a temp folder)."""
    with tempfile.TemporaryDirectory(prefix="fervid-bench-") as tmp:
        folder = Path(tmp) / "videos"
        folder.mkdir()
        paths = make_workload(videos, repeat, folder)
        # fervid first, so the driver's memory is its own; then Ray stops, so the loop has the cores to itself
        fervid = end_to_end(paths, config, results or Path(tmp) / "results")
        fervid["actor_start"] = actor_start(config, Path(tmp))
        stages = measure_stages(paths, config)
        reference = reference_loop(paths, config)
    slowest = min(stages["decode_frames_per_s"] * stages["detect_frames_per_s"] /
                  (stages["decode_frames_per_s"] + stages["detect_frames_per_s"]),
                  stages["classify_faces_per_s"] * stages["frames"] / max(stages["faces"], 1))
    return {
        "workload": {"videos": len(paths), "repeat": repeat, "source": str(videos)},
        "machine": machine(), "stages_one_worker": stages, "reference_loop": reference, "fervid": fervid,
        "speedup_vs_reference": fervid["frames_per_s"] / reference["frames_per_s"],
        # the fused decode+detect stage, one worker, in sampled frames/s; fervid runs several such workers
        "slowest_stage_one_worker_frames_per_s": slowest,
    }


def print_table(result: dict) -> None:
    s, r, f = result["stages_one_worker"], result["reference_loop"], result["fervid"]
    m = result["machine"]
    rows = [
        ("machine", f"{m['cpus']} CPUs, GPU: {m['gpu'] or 'none'}; ray {m['ray']}, torch {m['torch']}, "
                    f"onnxruntime {m['onnxruntime']}"),
        ("workload", f"{result['workload']['videos']} videos, {f['frames']} sampled frames, {f['faces']} faces "
                     f"(the loop found {r['faces']})"),
        ("decode alone (1 worker)", f"{s['decode_frames_per_s']:.1f} frames/s"),
        ("detect alone (1 worker)", f"{s['detect_frames_per_s']:.1f} frames/s"),
        ("classify alone (1 worker)", f"{s['classify_faces_per_s']:.1f} faces/s"),
        ("slowest stage (1 worker)", f"{result['slowest_stage_one_worker_frames_per_s']:.1f} frames/s"),
        ("sequential loop", f"{r['frames_per_s']:.1f} frames/s ({r['wall_s']:.1f} s)"),
        ("fervid end to end", f"{f['frames_per_s']:.1f} frames/s, {f['faces_per_s']:.1f} faces/s ({f['wall_s']:.1f} s, "
                              "Ray's start included)"),
        ("fervid / sequential loop", f"{result['speedup_vs_reference']:.2f}x"),
        ("fervid once running", f"{f['running_frames_per_s']:.1f} frames/s (after the first result)"),
        ("start (s into the run)", f"Ray up {f['ray_up_s']:.1f}, videos probed {f['probed_s']:.1f}, first scored "
                                   f"rows {f['first_result_s']:.1f}, first video committed {f['first_commit_s']:.1f}"),
        ("first video committed", f"{f['first_commit_s'] - f['ray_up_s']:.1f} s after Ray was up"),
        ("an actor's start alone", f"imports {f['actor_start']['imports_s']:.1f} s, constructor "
                                   f"{f['actor_start']['constructor_s']:.1f} s (a fresh process, Ray aside)"),
        ("peak memory", f"driver {f['driver_peak_rss_mib']:.0f} MiB, Ray workers {f['workers_peak_rss_mib']:.0f} MiB"),
        ("object store spill", f"{f['spilled_mib']} MiB"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fervid bench", description=__doc__.splitlines()[0])
    add_bench_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="?", default=str(SHARED / "videos"), help="default: ../shared/videos")
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "bench.yaml"),
                        help="default: configs/bench.yaml (the ../shared models, CPU)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                        help=f"copies of the videos in the workload (default {DEFAULT_REPEAT}; ../shared/videos once is 40 s)")
    parser.add_argument("--json", help="also write the figures to this JSON file")


def run_from_args(args: argparse.Namespace) -> int:
    result = run_bench(Path(args.videos), load_config(args.config, args.overrides), args.repeat)
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def _children(parents: set[int]) -> list[int]:
    """Processes whose parent is one of `parents` (Ray workers are children of their raylet)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) in parents:
                pids.append(int(entry))
    return pids


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
