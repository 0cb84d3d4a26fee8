"""Compaction: the small files every commit adds, merged into few large parts, so reading stays fast at
100,000 videos.

Each committed video adds a file to faces/, frames/ and tracks/ (video_id=<id>/<run>.parquet) and one to
videos/ (its record), and opening and scanning cost follows the file count. compact() rewrites a table's
small files into one new part (with its parts under PART_ROWS rows, once there are MERGE_PARTS of them), <table>/part-<time>-<hex>.parquet,
sorted by video_id in row groups of ROW_GROUP_ROWS, so a filter on one video reads a row group or two. Only
rows that count are kept: a video's rows from its latest ok run, so files of superseded runs and of killed
runs (written, never committed) go too; videos/ keeps every record.

The part's footer names the files it replaces. A reader (pipeline/query.py) leaves out every file that a
part it lists replaces, so it counts each row once whether it listed before, during or after a compaction,
and a compaction killed at any point leaves readable results: the part is one atomic write. Replaced files
are deleted once KEEP_REPLACED_S have passed since their part landed, so a query that listed them just
before still reads them; a part is deleted only after every file it replaced is gone, so none comes back.

Only the results' one writer compacts, holding the lock: `fervid run` every COMPACT_AT commits and at its
end, and `fervid compact`.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
from pyarrow.fs import FileType

from pipeline import query, storage
from pipeline.errors import FervidError
from pipeline.results import ResultsStore, parquet_bytes
from pipeline.schema import OK, PER_VIDEO_TABLES

COMPACT_AT = 256  # small files in a table that a run merges into a part as it goes
END_COMPACT_AT = 64  # ... and at its end: a folder of a few dozen videos keeps one file per video
PART_ROWS = 500_000  # a part this big is final ...
MERGE_PARTS = 8  # ... smaller ones are merged into one when there are this many, so a row is rewritten a few times
ROW_GROUP_ROWS = 16_384  # one video's rows span a row group or two of a part
KEEP_REPLACED_S = 600  # a replaced file stays this long after its part landed, for queries that listed it
TABLES = ("videos", *PER_VIDEO_TABLES)
ORDER = {"videos": "video_id, finished_at, run_id", "faces": "video_id, run_id, frame_index, face_index",
         "frames": "video_id, run_id, frame_index", "tracks": "video_id, run_id, track_id"}


@dataclass
class Compaction:
    merged: dict[str, int] = field(default_factory=dict)  # per table: small files and parts merged into a part
    deleted: int = 0  # replaced files deleted

    def line(self) -> str:
        merged = ", ".join(f"{n} {table} files" for table, n in self.merged.items()) or "nothing to merge"
        return f"compacted: {merged}; {self.deleted} replaced files deleted"


def compact(results_dir: str | storage.Location, min_files: int = COMPACT_AT,
            keep_replaced_s: float = KEEP_REPLACED_S) -> Compaction:
    """Merge each table with at least min_files small files into a new part, then delete the files replaced
    at least keep_replaced_s ago. The caller holds the results lock."""
    root = storage.locate(results_dir)
    done = Compaction()
    current = None
    for table in TABLES:
        files = query.table_files(root, table)
        small = [loc for loc in files if not query.is_part(loc)]
        if small and len(small) >= min_files:
            current = current if current is not None else current_runs(root)
            unfinished = [loc for loc in files if query.is_part(loc) and query.part_info(loc).rows < PART_ROWS]
            merged = small + (unfinished if len(unfinished) >= MERGE_PARTS else [])
            write_part(root, table, merged, _kept_rows(root, table, merged, current))
            done.merged[table] = len(merged)
        done.deleted += delete_replaced(root, table, keep_replaced_s)
    return done


def compact_results(results_dir: str | Path, keep_replaced_s: float = KEEP_REPLACED_S) -> Compaction:
    """`fervid compact`: every table with a small file merged, under the results lock."""
    root = storage.locate(results_dir)
    if storage.stat(root).type != FileType.Directory or not query.table_files(root, "videos"):
        raise FervidError(f"{root.uri} holds no fervid results (no videos/*.parquet)")
    store = ResultsStore(root)
    with store.lock():
        return compact(root, min_files=1, keep_replaced_s=keep_replaced_s)


def current_runs(root: storage.Location) -> pa.Table:
    """(video_id, run_id) of each video's latest ok record: the rows worth keeping (the views count a video's
    rows from that run, while it is the video's latest record)."""
    con = duckdb.connect()
    videos = query.read_rows(root, "videos")
    if not len(videos):
        return pa.table({"video_id": pa.array([], pa.string()), "run_id": pa.array([], pa.string())})
    return con.sql(f"SELECT video_id, run_id FROM videos WHERE status = '{OK}' QUALIFY row_number() OVER "
                   "(PARTITION BY video_id ORDER BY finished_at DESC, run_id DESC) = 1").to_arrow_table()


def _kept_rows(root: storage.Location, table: str, files: list[storage.Location], current: pa.Table) -> pa.Table:
    """The files' rows that count, in ORDER, with the files' own column types (not DuckDB's)."""
    con = duckdb.connect()
    datasets = query.table_datasets(root, table, files)
    source = query.register_table(con, table, datasets)
    keep = "" if table == "videos" else "SEMI JOIN current USING (video_id, run_id)"
    con.register("current", current)
    rows = con.sql(f"SELECT * FROM {source} {keep} ORDER BY {ORDER[table]}").to_arrow_table()
    schema = pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f
                        for f in datasets[-1].schema])
    return rows.select(schema.names).cast(schema)


def write_part(root: storage.Location, table: str, replaces: list[storage.Location], rows: pa.Table) -> None:
    """rows as a new part of table that replaces those files, in one atomic write."""
    base = root.child(table)
    now = datetime.now(timezone.utc)
    info = {"replaces": [query.relative_name(base, loc) for loc in replaces], "written_at": now.timestamp()}
    name = f"{query.PART_PREFIX}{now.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}.parquet"
    storage.write_bytes(base.child(name), parquet_bytes(rows.replace_schema_metadata({query.PART_KEY: json.dumps(info)}),
                                                        row_group_size=ROW_GROUP_ROWS))


def delete_replaced(root: storage.Location, table: str, keep_replaced_s: float) -> int:
    """Delete the table's files replaced at least keep_replaced_s ago (small files first, then parts whose
    replaced files are all gone), and temporary files of killed writes as old; returns how many."""
    base = root.child(table)
    now = time.time()
    listed = {query.relative_name(base, loc): loc for loc, _ in storage.list_files(base)}
    parts = {name: query.part_info(loc) for name, loc in listed.items()
             if name.count("/") == 0 and query.is_part(loc) and name.endswith(".parquet")}
    replaced_at: dict[str, float] = {}
    for info in parts.values():
        for name in info.replaces:
            replaced_at[name] = min(replaced_at.get(name, math.inf), info.written_at)
    due = sorted((name for name, at in replaced_at.items() if name in listed and now - at >= keep_replaced_s),
                 key=lambda name: name in parts)
    deleted = set()
    for name in due:
        if name in parts and any(r in listed and r not in deleted for r in parts[name].replaces):
            continue
        storage.delete(listed[name], prune_folder=True)
        deleted.add(name)
    for name, loc in listed.items():  # a write killed before its rename; none is in progress: we hold the lock
        if name.endswith(".tmp") and now - storage.stat(loc).mtime_ns / 1e9 >= keep_replaced_s:
            storage.delete(loc, prune_folder=True)
            deleted.add(name)
    return len(deleted)
