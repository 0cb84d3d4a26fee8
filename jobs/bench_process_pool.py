"""What a run could take without Ray on one machine: fervid's fused stage over a plain process pool.

    python -m jobs.bench_process_pool [--repeat 3]

The workload of `fervid bench --repeat N`, probed and then analysed segment by segment by one spawned
process per core, each holding a DecodeDetectClassify built from configs/bench.yaml, as a Ray actor does.
Printed: when every video was probed, when the first segment's rows were back, and when all were, in
seconds from the pool's start. Not a product path: no commits, tracking or records, and a crashed
process would break the whole pool. It measures what Ray's start costs a short local run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from pipeline.bench import SHARED, fused_stage, make_workload
from pipeline.config import load_config
from pipeline.decode import VideoInfo, probe
from pipeline.plan import plan_segments

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "bench.yaml")
_stage = None  # each pool process's stage, built once


def _build_stage(config_path: str) -> None:
    global _stage
    _stage = fused_stage(load_config(config_path))


def _probe(path: str) -> tuple[str, VideoInfo]:
    return path, probe(path)


def _analyse(row: dict) -> int:
    return _stage(pa.Table.from_pylist([row])).num_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="copies of ../shared/videos (default 3: 588 frames)")
    args = parser.parse_args(argv)
    config = load_config(CONFIG)
    with tempfile.TemporaryDirectory(prefix="fervid-pool-") as tmp:
        paths = make_workload(SHARED / "videos", args.repeat, Path(tmp))
        start = time.perf_counter()
        context = multiprocessing.get_context("spawn")
        with context.Pool(os.cpu_count(), initializer=_build_stage, initargs=(CONFIG,)) as pool:
            probed = pool.map(_probe, [str(p) for p in paths])
            probed_s = time.perf_counter() - start
            segments = [s for k, (path, info) in enumerate(probed)
                        for s in plan_segments(f"v{k}", path, info, config.sampling)]
            first_s = None
            for _ in pool.imap_unordered(_analyse, [s.to_row() for s in segments]):
                first_s = first_s or time.perf_counter() - start
        frames = sum(len(s.frame_index) for s in segments)
        print(f"{os.cpu_count()} processes, {len(paths)} videos, {frames} sampled frames: probed after "
              f"{probed_s:.2f} s, first segment back after {first_s:.2f} s, all after "
              f"{time.perf_counter() - start:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
