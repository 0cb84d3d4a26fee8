"""The results folder (local, or at an object-store URI): Parquet tables written atomically, run records, the lock.

    faces/video_id=<id>/<run>.parquet   frames/video_id=<id>/<run>.parquet
    videos/<run>.parquet                runs/<run>.json

A video's files are complete before its record lands in videos/; the record is the commit.
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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow.fs import FileType

from pipeline import storage
from pipeline.config import TrackingConfig
from pipeline.errors import FervidError
from pipeline.track import NO_TRACK, smooth_scores, track_faces

OBJECT_LOCK_EXPIRES_S = 24 * 3600  # a results lock on an object store older than this is taken as left behind

VIDEOS_SCHEMA = pa.schema([
    ("video_id", pa.string()), ("path", pa.string()), ("size_bytes", pa.int64()),
    ("duration_s", pa.float64()), ("fps", pa.float64()), ("width", pa.int32()), ("height", pa.int32()),
    ("rotation", pa.int16()), ("frame_count", pa.int64()), ("sampled_frames", pa.int64()),
    ("faces", pa.int64()), ("status", pa.string()), ("error", pa.string()), ("decoder", pa.string()),
    ("config_fingerprint", pa.string()), ("detector", pa.string()), ("detector_revision", pa.string()),
    ("classifier", pa.string()), ("classifier_revision", pa.string()),
    ("started_at", pa.timestamp("ms", tz="UTC")), ("finished_at", pa.timestamp("ms", tz="UTC")),
    ("run_id", pa.string()),
])

FRAMES_SCHEMA = pa.schema([
    ("frame_index", pa.int32()), ("pts_s", pa.float64()), ("face_count", pa.int16()),
    ("small_faces", pa.int16()),  # found but under detector.min_face_px: not in `faces`
    ("run_id", pa.string()),
])

FACE_COLUMNS = ["frame_index", "pts_s", "face_index", "track_id", "x1", "y1", "x2", "y2", "det_score", "landmarks"]


def faces_table(rows: pa.Table, labels: list[str], run_id: str, tracking: TrackingConfig | None = None) -> pa.Table:
    """Stage face rows of one video -> the `faces` table: sorted, tracks, smoothed scores, argmax label, confidence.

    Tracking needs the whole video's rows in frame order, which is why it runs here and not in the stages.
    `tracking` defaults to the built-in tracking settings.
    """
    tracking = tracking or TrackingConfig()
    rows = rows.sort_by([("frame_index", "ascending"), ("face_index", "ascending")])
    scores = [f"p_{label}" for label in labels]
    probs = np.column_stack([rows.column(c).to_numpy() for c in scores]) if len(rows) else np.zeros((0, len(labels)))
    best = probs.argmax(axis=1)
    if tracking.enabled:
        pts = rows.column("pts_s").to_numpy()
        xyxy = np.column_stack([rows.column(c).to_numpy() for c in ("x1", "y1", "x2", "y2")]).reshape(-1, 4)
        ids = track_faces(rows.column("frame_index").to_numpy(), pts, xyxy, rows.column("det_score").to_numpy(),
                          tracking)
        track_id = pa.array(ids, pa.int32(), mask=ids == NO_TRACK)
        smooth = [pa.array(column, pa.float32()) for column in smooth_scores(ids, pts, probs, tracking.smooth_s).T]
    else:
        track_id = pa.nulls(len(rows), pa.int32())
        smooth = [pa.nulls(len(rows), pa.float32())] * len(scores)
    columns = {
        "frame_index": rows.column("frame_index"), "pts_s": rows.column("pts_s"),
        "face_index": rows.column("face_index"), "track_id": track_id,
        **{c: rows.column(c) for c in ("x1", "y1", "x2", "y2", "det_score")},
        "landmarks": rows.column("landmarks").cast(pa.list_(pa.float32())),
        **{c: rows.column(c) for c in scores},
        **{f"{c}_smooth": column for c, column in zip(scores, smooth)},
        "emotion": pa.array(np.asarray(labels, dtype=object)[best] if len(rows) else [], pa.string()),
        "confidence": pa.array(probs[np.arange(len(rows)), best], pa.float32()),
        "run_id": pa.array([run_id] * len(rows), pa.string()),
    }
    return pa.table(columns)


def frames_table(segments: list[dict], run_id: str) -> pa.Table:
    """Closing rows of one video's segments -> the `frames` table, one row per sampled frame."""
    segments = sorted(segments, key=lambda s: s["segment_index"])
    index = [i for s in segments for i in s["frames_index"]]
    return pa.table({
        "frame_index": pa.array(index, pa.int32()),
        "pts_s": pa.array([t for s in segments for t in s["frames_pts_s"]], pa.float64()),
        "face_count": pa.array([c for s in segments for c in s["frames_face_count"]], pa.int16()),
        "small_faces": pa.array([c for s in segments for c in s["frames_small_faces"]], pa.int16()),
        "run_id": pa.array([run_id] * len(index), pa.string()),
    }, schema=FRAMES_SCHEMA)


def latest_records(root: str | Path | storage.Location) -> pa.Table:
    """Per video, its latest record that was not a skip; reads only, so a report can use it on a read-only folder."""
    listed = storage.list_files(storage.locate(root).child("videos"))
    files = [loc for loc, _ in listed if loc.name.endswith(".parquet")]
    if not files:
        return VIDEOS_SCHEMA.empty_table()
    table = pa.concat_tables([storage.read_table(f, schema=VIDEOS_SCHEMA) for f in files])
    table = table.filter(pc.not_equal(table["status"], "skipped"))
    table = table.sort_by([("video_id", "ascending"), ("finished_at", "descending")])
    ids = table.column("video_id").to_numpy(zero_copy_only=False)
    first = np.concatenate([[True], ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, bool)
    return table.filter(pa.array(first))


class ResultsStore:
    """Reads and writes one RESULTS folder, local or at an object-store URI."""

    def __init__(self, root: str | Path) -> None:
        self.root = storage.locate(root)
        probe = self.root.child(".write-test")
        try:
            if self.root.remote:  # an unknown bucket, bad credentials, no endpoint: one line naming RESULTS
                storage.stat(self.root)
            else:  # folders exist on disks only
                for sub in ("faces", "frames", "videos", "runs"):
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

    def latest_records(self) -> pa.Table:
        return latest_records(self.root)

    def done(self, fingerprint: str) -> set[str]:
        """Video ids whose latest run is ok with this config fingerprint."""
        latest = self.latest_records()
        mask = pc.and_(pc.equal(latest["status"], "ok"), pc.equal(latest["config_fingerprint"], fingerprint))
        return set(latest.filter(mask).column("video_id").to_pylist())

    def write_video(self, video_id: str, run_id: str, faces: pa.Table, frames: pa.Table) -> None:
        for name, table in (("faces", faces), ("frames", frames)):
            storage.write_bytes(self.root.child(name, f"video_id={video_id}", f"{run_id}.parquet"), _parquet(table))

    def write_records(self, run_id: str, records: list[dict]) -> None:
        """This run's video records so far: the whole file is replaced, never appended to."""
        table = pa.Table.from_pylist(records, schema=VIDEOS_SCHEMA)
        storage.write_bytes(self.root.child("videos", f"{run_id}.parquet"), _parquet(table))

    def drop_superseded(self, video_id: str, run_id: str) -> None:
        for name in ("faces", "frames"):
            for old, _ in storage.list_files(self.root.child(name, f"video_id={video_id}")):
                if old.name.endswith(".parquet") and old.name != f"{run_id}.parquet":
                    storage.delete(old)

    def write_run(self, run_id: str, record: dict) -> None:
        text = json.dumps(record, indent=2, default=str)
        storage.write_bytes(self.root.child("runs", f"{run_id}.json"), text.encode())


def _parquet(table: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()
