"""Benchmark: Delta Lake (delta-rs) as fervid's faces table, the measurement behind keeping fervid's own layout.

    pip install deltalake && python -m jobs.bench_table_format [--videos 2000] [--checkpoint-every 100]

Appends one synthetic video's faces (50 rows, as jobs.bench_query makes them) per commit, as a run commits
videos, and prints the time per append for the first and the last 200, then how long opening the table
and two queries through DuckDB take, before and after `optimize.compact()` and a checkpoint. Compare with
`python -m jobs.bench_query`, whose commits write three tables and a record each (docs/performance.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from jobs.bench_query import LABELS, synthetic_tables, video_id


def timed_reads(table: str) -> str:
    from deltalake import DeltaTable

    started = time.perf_counter()
    dataset = DeltaTable(table).to_pyarrow_dataset()
    opened = time.perf_counter() - started
    con = duckdb.connect()
    con.register("faces", dataset)
    took = []
    for sql in ("SELECT video_id, count(*), avg(p_happy) FROM faces GROUP BY video_id",
                f"SELECT * FROM faces WHERE video_id = '{video_id(7)}'"):
        started = time.perf_counter()
        con.sql(sql).fetchall()
        took.append(time.perf_counter() - started)
    return f"open {opened:.3f}s, per-video counts {took[0]:.3f}s, one video's rows {took[1]:.3f}s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=2000)
    parser.add_argument("--checkpoint-every", type=int, default=100, help="commits between checkpoints (0: none)")
    args = parser.parse_args()
    try:
        from deltalake import DeltaTable, write_deltalake
    except ImportError:
        raise SystemExit("this benchmark needs deltalake: pip install deltalake") from None
    faces, _ = synthetic_tables(50, LABELS, "bench", np.random.default_rng(0))
    with tempfile.TemporaryDirectory() as scratch:
        table = str(Path(scratch) / "faces")
        took = []
        for v in range(args.videos):
            rows = faces.append_column("video_id", pa.array([video_id(v)] * len(faces)))
            started = time.perf_counter()
            write_deltalake(table, rows, mode="append")
            if args.checkpoint_every and (v + 1) % args.checkpoint_every == 0:
                DeltaTable(table).create_checkpoint()
            took.append(time.perf_counter() - started)
        print(f"{args.videos} appends of 50 rows: first 200 {np.mean(took[:200]) * 1000:.1f} ms each, "
              f"last 200 {np.mean(took[-200:]) * 1000:.1f} ms each, slowest {max(took) * 1000:.0f} ms")
        print(f"before optimize: {timed_reads(table)}")
        started = time.perf_counter()
        delta = DeltaTable(table)
        delta.optimize.compact()
        delta.create_checkpoint()
        print(f"optimize.compact() and a checkpoint: {time.perf_counter() - started:.1f}s")
        print(f"after: {timed_reads(table)}")


if __name__ == "__main__":
    main()
