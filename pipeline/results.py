"""The results folder (local, or at an object-store URI): Parquet tables written atomically, run records, the lock.

    faces/video_id=<id>/<run>.parquet   frames/video_id=<id>/<run>.parquet   tracks/video_id=<id>/<run>.parquet
    videos/<run>.<first record>.parquet runs/<run>.json                      people/people.parquet
    meta/meta.parquet (fervid meta)     <table>/part-<time>-<hex>.parquet: many videos' rows (pipeline/compact.py)

A video's files are complete before its record lands in videos/; the record is the commit. Each commit
adds files and rewrites none, so it takes the same time however many videos came before.
Superseded files of a video are removed only after the new record is in.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow.fs import FileType

from pipeline import query, storage
from pipeline.errors import FervidError
from pipeline.schema import OK, PEOPLE_SCHEMA, PER_VIDEO_TABLES, TABLES, VIDEOS_SCHEMA

OBJECT_LOCK_EXPIRES_S = 24 * 3600  # a results lock on an object store older than this is taken as left behind
PEOPLE_FILE = "people.parquet"
META_FILE = "meta.parquet"

class ResultsStore:
    """Writes one RESULTS folder, local or at an object-store URI. What counts as done is the views' rule."""

    def __init__(self, root: str | Path) -> None:
        """Opens RESULTS for writing, creating its folders: call it once the run's checks have passed."""
        self.root = storage.locate(root)
        self.records_written: dict[str, int] = {}  # per run: records already in videos/
        probe = self.root.child(".write-test")
        try:
            if self.root.remote:  # an unknown bucket, bad credentials, no endpoint: one line naming RESULTS
                storage.stat(self.root)
            else:  # folders exist on disks only
                for sub in (*TABLES, "runs"):
                    Path(self.root.path, sub).mkdir(parents=True, exist_ok=True)
            storage.write_bytes(probe, b"")
            storage.delete(probe)
        except OSError as e:
            raise FervidError(f"output folder {self.root.uri} is not writable ({e.strerror}); "
                              "choose another --out") from None

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """One writer at a time: a second run on the same results refuses instead of interleaving."""
        return self._object_lock() if self.root.remote else self._file_lock()

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        with open(Path(self.root.path, ".lock"), "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise FervidError(f"{self.root.uri} is in use by another fervid run ({holder}); "
                                  "wait for it to finish or choose another --out") from None
            handle.truncate(0)
            handle.write(f"pid {os.getpid()}")
            handle.flush()
            try:
                yield
            finally:
                handle.truncate(0)
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def _object_lock(self) -> Iterator[None]:
        """An object store has no lock: a .lock object names its holder (host, pid, since when) and is honoured
        until it is OBJECT_LOCK_EXPIRES_S old (a run that died leaves it behind). Checking and writing it are two
        requests, so two runs starting at the same moment can both go ahead: it is not atomic."""
        path = self.root.child(".lock")
        info = storage.stat(path)
        if info.type == FileType.File and time.time() - info.mtime_ns / 1e9 < OBJECT_LOCK_EXPIRES_S:
            holder = storage.read_bytes(path).decode(errors="replace").strip() or "another run"
            raise FervidError(f"{self.root.uri} is in use by another fervid run ({holder}); wait for it to finish "
                              f"or choose another --out (a lock left by a run that died expires "
                              f"{OBJECT_LOCK_EXPIRES_S // 3600} h after it was taken; delete {path.uri} to go on)")
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        storage.write_bytes(path, f"{socket.gethostname()} pid {os.getpid()} since {started}".encode())
        try:
            yield
        finally:
            storage.delete(path)

    def done(self, fingerprint: str) -> set[str]:
        """Video ids whose latest record is ok with this config fingerprint (the `videos` view's rule)."""
        latest = query.latest_records(self.root)
        return {r["video_id"] for r in latest.to_pylist() if r["status"] == OK and r["config_fingerprint"] == fingerprint}

    def write_video(self, video_id: str, run_id: str, faces: pa.Table, frames: pa.Table,
                    tracks: pa.Table | None = None) -> None:
        """A video's tables, each written whole (tracks only with identity on)."""
        for name, table in zip(PER_VIDEO_TABLES, (faces, frames, tracks)):
            if table is not None:
                storage.write_bytes(self.root.child(name, f"video_id={video_id}", f"{run_id}.parquet"), parquet_bytes(table))

    def write_people(self, people: pa.Table) -> None:
        """The person of every track, replacing the last assignment whole (one object, written atomically)."""
        storage.write_bytes(self.root.child("people", PEOPLE_FILE), parquet_bytes(people))

    def write_meta(self, meta: pa.Table) -> None:
        """The table `fervid meta` attached, replacing the last one whole."""
        storage.write_bytes(self.root.child("meta", META_FILE), parquet_bytes(meta))

    def read_people(self) -> pa.Table:
        location = self.root.child("people", PEOPLE_FILE)
        if storage.stat(location).type != FileType.File:
            return PEOPLE_SCHEMA.empty_table()
        return pq.read_table(pa.BufferReader(storage.read_bytes(location))).cast(PEOPLE_SCHEMA)

    def write_records(self, run_id: str, records: list[dict]) -> None:
        """This run's video records so far: those not yet written go into a new file, named by the first
        one's place in the run (videos/<run>.<n>.parquet), so a commit writes only its own."""
        first = self.records_written.get(run_id, 0)
        if len(records) > first:
            table = pa.Table.from_pylist(records[first:], schema=VIDEOS_SCHEMA)
            storage.write_bytes(self.root.child("videos", f"{run_id}.{first:07d}.parquet"), parquet_bytes(table))
            self.records_written[run_id] = len(records)

    def drop_superseded(self, video_id: str, run_id: str) -> None:
        """A video's files from other runs (rows of it in parts go when the part is merged again)."""
        for name in PER_VIDEO_TABLES:
            for old, _ in storage.list_files(self.root.child(name, f"video_id={video_id}")):
                if old.name.endswith(".parquet") and old.name != f"{run_id}.parquet":
                    storage.delete(old)

    def write_run(self, run_id: str, record: dict) -> None:
        text = json.dumps(record, indent=2, default=str)
        storage.write_bytes(self.root.child("runs", f"{run_id}.json"), text.encode())


def parquet_bytes(table: pa.Table, row_group_size: int | None = None) -> pa.Buffer:
    """A table as one Parquet file's bytes, as every fervid table is written (zstd)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=row_group_size)
    return sink.getvalue()
