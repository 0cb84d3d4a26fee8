"""Benchmark: the views over a synthetic RESULTS folder of about a million face rows (`video_summary`
is the figure the design quotes; one video's views, all emotion_segments, group_summary and group_timeline
over GROUPS folders, and the report's overview page are printed alongside).

    python -m jobs.bench_query [--videos 200] [--frames 5000] [--repeat 5] [--keep DIR]

The folder is written in the layout `fervid run` leaves (one face on every sampled frame, random
probabilities). The first and the last --commits videos are committed as a run commits them (ResultsStore:
the video's tables, then its record; a compaction every COMPACT_AT commits), and the time per commit is
printed for both, to show it does not grow with the folder. The videos in between are written directly
as the parts compaction makes of them (PART_ROWS rows each): committing 100,000 videos one by one takes
over an hour on a 2-core machine. Files replaced by compaction are kept for KEEP_REPLACED_S, for
queries that listed them; `connect` is timed with them and after they are deleted. The timing goes
through `pipeline.query.connect`, as `fervid query` does.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.compact import COMPACT_AT, END_COMPACT_AT, KEEP_REPLACED_S, PART_ROWS, compact, write_part
from pipeline.config import QualityConfig, TrackingConfig
from pipeline.finalize import faces_table, frames_table
from pipeline.presentation import emotion_colours
from pipeline.query import connect
from pipeline.report import overview
from pipeline.results import ResultsStore
from pipeline.schema import FACE_BOX, VIDEOS_SCHEMA, score_column

LABELS = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
GROUPS = 4  # the synthetic videos lie in this many folders
SAMPLING_FPS = 5.0


def synthetic_tables(frames: int, labels: list[str], run_id: str,
                     rng: np.random.Generator) -> tuple[pa.Table, pa.Table]:
    """One video's faces and frames tables: a face on every sampled frame, random probabilities and quality."""
    index = np.arange(frames, dtype=np.int32)
    pts = index / SAMPLING_FPS
    probs = rng.dirichlet(np.ones(len(labels)), frames).astype(np.float32)
    box = rng.uniform(0, 500, (frames, 4)).astype(np.float32)
    rows = pa.table({
        "frame_index": index, "pts_s": pts, "face_index": np.zeros(frames, np.int16),
        **{name: box[:, i] for i, name in enumerate(FACE_BOX)},
        "det_score": rng.uniform(0.5, 1, frames).astype(np.float32),
        "landmarks": pa.FixedSizeListArray.from_arrays(rng.uniform(0, 500, frames * 10).astype(np.float32), 10),
        "roll_deg": rng.normal(0, 10, frames).astype(np.float32),
        "yaw_deg": rng.normal(0, 20, frames).astype(np.float32),
        "pitch_deg": rng.normal(0, 15, frames).astype(np.float32),
        "face_px": rng.uniform(30, 300, frames).astype(np.float32),
        "sharpness": rng.uniform(0.1, 0.6, frames).astype(np.float32),
        **{score_column(label): probs[:, i] for i, label in enumerate(labels)},
    })
    segment = {"segment_index": 0, "frames_index": index.tolist(), "frames_pts_s": pts.tolist(),
               "frames_face_count": [1] * frames, "frames_small_faces": [0] * frames, "frames_det_size": [640] * frames}
    return faces_table(rows, labels, run_id, TrackingConfig(), QualityConfig()), frames_table([segment], run_id)


def synthetic_record(video_id: str, run_id: str, frames: int, status: str = "ok",
                     finished_at: datetime | None = None, folder: str = ".") -> dict:
    """The videos/ record of a synthetic video."""
    finished_at = finished_at or datetime.now(timezone.utc)
    return {
        "video_id": video_id, "path": f"/videos/{video_id}.mp4", "folder": folder, "size_bytes": 0,
        "duration_s": frames / SAMPLING_FPS, "fps": 30.0, "width": 1280, "height": 720, "rotation": 0,
        "frame_count": frames * 6, "sampled_frames": frames, "faces": frames, "status": status, "error": None,
        "decoder": "synthetic", "config_fingerprint": "synthetic", "detector": "synthetic",
        "detector_revision": None, "classifier": "synthetic", "classifier_revision": None,
        "started_at": finished_at - timedelta(seconds=1), "finished_at": finished_at, "run_id": run_id,
    }


def write_synthetic(root: Path, videos: int, frames: int, labels: list[str] = LABELS, seed: int = 0,
                    commits: int | None = None) -> dict[str, list[float]]:
    """A RESULTS folder of `videos` videos of `frames` sampled frames each, from one run: the first and last
    `commits` (all by default) committed one by one, the rest written as parts; returns the seconds of each
    commit (compactions included), of the first ones and of the last ones.

    Every video gets the same tables (building them is the slow part; reading them is what is timed).
    """
    commits = videos if commits is None else min(commits, videos)
    store = ResultsStore(root)
    faces, frame_rows = synthetic_tables(frames, labels, "bench", np.random.default_rng(seed))
    records: list[dict] = []

    def commit(v: int) -> float:
        started = time.perf_counter()
        store.write_video(video_id(v), "bench", faces, frame_rows)
        records.append(synthetic_record(video_id(v), "bench", frames, folder=f"group{v % GROUPS}"))
        store.write_records("bench", records)
        if len(records) % COMPACT_AT == 0:
            compact(root)
        return time.perf_counter() - started

    first = [commit(v) for v in range(commits)]
    bulk = range(commits, max(videos - commits, commits))
    per_part = max(PART_ROWS // max(frames, 1), 1)
    for start in range(bulk.start, bulk.stop, per_part):
        ids = [video_id(v) for v in range(start, min(start + per_part, bulk.stop))]
        for table, rows in (("faces", faces), ("frames", frame_rows)):
            write_part(store.root, table, [], _for_videos(rows, ids))
    bulk_records = [synthetic_record(video_id(v), "bench", frames, folder=f"group{v % GROUPS}") for v in bulk]
    if bulk_records:
        write_part(store.root, "videos", [], pa.Table.from_pylist(bulk_records, schema=VIDEOS_SCHEMA))
    last = [commit(v) for v in range(bulk.stop, videos)]
    compact(root, min_files=END_COMPACT_AT)
    return {"first": first, "last": last}


def video_id(v: int) -> str:
    return f"{v:016x}"


def _for_videos(rows: pa.Table, ids: list[str]) -> pa.Table:
    """One video's rows repeated for each of ids, with video_id as a column, as in a part."""
    table = pa.concat_tables([rows] * len(ids))
    return table.append_column("video_id", pa.array(np.repeat(ids, len(rows)), pa.string()))


QUERIES = {
    "video_summary": "SELECT * FROM video_summary",
    "one video's timeline": "SELECT * FROM timeline WHERE video_id = '0000000000000007'",
    "one video's emotion_segments": "SELECT * FROM emotion_segments WHERE video_id = '0000000000000007'",
    "emotion_segments, all videos": "SELECT count(*) FROM emotion_segments",
    "group_summary": "SELECT * FROM group_summary",
    "group_timeline(20)": "SELECT * FROM group_timeline(20)",
}


def write_and_time_commits(root: Path, args: argparse.Namespace) -> None:
    """The synthetic results, with the time per commit, and connect before and after the replaced files go."""
    started = time.perf_counter()
    took = write_synthetic(root, args.videos, args.frames, commits=args.commits)
    print(f"wrote {args.videos * args.frames:,} face rows in {args.videos} videos "
          f"in {time.perf_counter() - started:.1f}s")
    for which, seconds in took.items():
        if seconds:
            print(f"  {which} {len(seconds)} commits: mean {np.mean(seconds) * 1000:.1f} ms, "
                  f"99th percentile {np.percentile(seconds, 99) * 1000:.1f} ms (compactions included)")
    started = time.perf_counter()
    connect(root)
    print(f"connect, with the replaced files still kept: {time.perf_counter() - started:.3f}s")
    deleted = compact(root, keep_replaced_s=0).deleted
    print(f"deleted the {deleted} replaced files (as a run or `fervid compact` does once they are "
          f"{KEEP_REPLACED_S} s old)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--frames", type=int, default=5000, help="sampled frames (and faces) per video")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--commits", type=int, default=1000,
                        help="videos committed one by one at the start and at the end (the rest: as parts)")
    parser.add_argument("--keep", help="write the synthetic RESULTS here and keep it (default: a temp folder); "
                        "results already there are timed again, not rewritten")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.keep or scratch)
        if (root / "videos").is_dir():
            print(f"timing the results already in {root} (--videos, --frames and --commits do not apply)")
        else:
            write_and_time_commits(root, args)
        started = time.perf_counter()
        con = connect(root)
        print(f"connect (views, labels): {time.perf_counter() - started:.3f}s")
        print(f"over {args.repeat} runs: wall best / median, and CPU seconds (all threads) per run, which another "
              "load on the machine disturbs less")
        for name, sql in QUERIES.items():
            wall, cpu = [], []
            for _ in range(args.repeat):
                started, started_cpu = time.perf_counter(), time.process_time()
                con.sql(sql).fetchall()
                wall.append(time.perf_counter() - started)
                cpu.append(time.process_time() - started_cpu)
            print(f"  {name}: {min(wall):.3f}s / {np.median(wall):.3f}s, CPU {np.median(cpu):.2f}s")
        started = time.perf_counter()
        overview(con, "folder", LABELS, emotion_colours(LABELS))
        print(f"the overview page's figures (group_summary, group_timeline, people): {time.perf_counter() - started:.3f}s")


if __name__ == "__main__":
    main()
