"""`fervid run`: plan on the driver, stream the Ray Data graph, commit each video as it completes."""

from __future__ import annotations

import hashlib
import platform
import secrets
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import graph, storage
from pipeline.config import Config
from pipeline.decode import VideoInfo
from pipeline.errors import FervidError, first_line
from pipeline.models import file_digest, resolve_classifier, resolve_detector
from pipeline.plan import VideoFile, discover, plan_segments
from pipeline.progress import Progress, StatusLine, Steps
from pipeline.results import ResultsStore, faces_table, frames_table
from pipeline.stages import FACE, SEGMENT, scored_schema

ID_READERS = 8  # content ids read at once: ranged reads of remote videos wait on the network, not the CPU
PACKAGES = ("ray", "torch", "transformers", "insightface", "onnxruntime", "decord", "av", "pyarrow", "numpy")


@dataclass
class RunSummary:
    run_id: str
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0, "skipped": 0})
    frames: int = 0
    faces: int = 0
    wall_s: float = 0.0
    first_result_s: float | None = None  # from the start of the run to the first scored rows
    first_result_frames: int = 0  # sampled frames whose segments came with those first rows
    small_faces: int = 0  # found but under detector.min_face_px, so not classified

    def line(self) -> str:
        c = self.counts
        rate = self.frames / self.wall_s if self.wall_s else 0.0
        return (f"run {self.run_id}: {c['ok']} ok, {c['failed']} failed, {c['skipped']} skipped; "
                f"{self.frames} frames, {self.faces} faces in {self.wall_s:.1f}s ({rate:.1f} frames/s)")


@dataclass
class _Pending:
    """One video in flight: what its segments have sent back so far."""

    file: VideoFile
    info: VideoInfo
    segments_expected: int
    started_at: datetime
    segments: dict[int, dict] = field(default_factory=dict)
    faces: list[pa.Table] = field(default_factory=list)
    face_rows: int = 0

    def complete(self) -> bool:
        expected_faces = sum(s["face_rows"] for s in self.segments.values())
        return len(self.segments) == self.segments_expected and self.face_rows >= expected_faces


class Runner:
    """One run over one folder into one results folder."""

    def __init__(self, videos_dir: str | Path, out: str | Path, config: Config, address: str | None = None,
                 force: bool = False, show_progress: bool = True) -> None:
        self.videos_dir, self.config, self.address, self.force = videos_dir, config, address, force
        self.store = ResultsStore(out)
        self.line = StatusLine(enabled=show_progress)
        self.run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
        self.records: list[dict] = []
        self.summary = RunSummary(self.run_id)
        # committed work per Ray node id: which machines of a cluster did what
        self.frames_by_node: Counter[str] = Counter()
        self.faces_by_node: Counter[str] = Counter()

    def run(self) -> RunSummary:
        self.started = started = time.monotonic()
        started_at = _now()
        with self.store.lock():
            files = discover(self.videos_dir)
            c, d = self.config.classifier, self.config.detector
            self.spec = resolve_classifier(c.model, c.revision)
            self.detector_path = resolve_detector(d.model)
            self.fingerprint = self.config.fingerprint()
            self.base = {
                "config_fingerprint": self.fingerprint, "detector": d.model,
                "detector_revision": file_digest(self.detector_path), "classifier": c.model,
                "classifier_revision": self.spec.revision, "run_id": self.run_id,
            }
            todo = self._identify(files)
            if todo:
                self._analyse(todo)
            self.store.write_records(self.run_id, self.records)
            self.summary.wall_s = time.monotonic() - started
            self.store.write_run(self.run_id, self._run_record(started_at))
        return self.summary

    def _identify(self, files: list[VideoFile]) -> dict[str, VideoFile]:
        """Content ids; duplicates and videos already done with this config are skipped."""
        done = set() if self.force else self.store.done(self.fingerprint)
        todo: dict[str, VideoFile] = {}
        with ThreadPoolExecutor(ID_READERS) as pool:  # map keeps the files' order
            ids = list(Steps(self.line, "reading content ids", len(files)).track(pool.map(_content_id, files)))
        self.line.close()
        for file, video_id in zip(files, ids):
            if isinstance(video_id, Exception):
                path_id = hashlib.blake2b(str(file.path).encode(), digest_size=8).hexdigest()
                self._record(path_id, file, "failed", f"cannot read the file: {_io_reason(video_id)}")
                continue
            if video_id in todo:
                self._record(video_id, file, "skipped", f"same content as {todo[video_id].path}")
            elif video_id in done:
                self._record(video_id, file, "skipped", "already analysed with this configuration")
            else:
                todo[video_id] = file
        return todo

    def _analyse(self, todo: dict[str, VideoFile]) -> None:
        graph.connect(self.address)
        by_path = {str(f.path): (vid, f) for vid, f in todo.items()}
        pending: dict[str, _Pending] = {}
        segments: list[dict] = []
        probes = graph.probe_videos({path: vid for path, (vid, _) in by_path.items()})
        for path, result in Steps(self.line, "probing videos", len(by_path)).track(probes):
            video_id, file = by_path[path]
            if isinstance(result, Exception):
                self._record(video_id, file, "failed", _describe(result))
                continue
            planned = plan_segments(video_id, path, result, self.config.sampling)
            pending[video_id] = _Pending(file, result, len(planned), _now())
            segments += planned
        segments.sort(key=lambda s: (s["path"], s["segment_index"]))
        self.line.close()
        self.store.write_records(self.run_id, self.records)
        progress = Progress(self.line, len(pending), sum(len(s["frame_index"]) for s in segments))
        try:
            if segments:
                for batch in graph.stream_scores(segments, self.config, str(self.detector_path), self.spec):
                    self._take(batch, pending, progress)
        except Exception as e:
            if graph.cancelled(e):  # the run itself was cancelled (Ctrl-C over ray://): stopped, not failed
                raise KeyboardInterrupt from e
            for video_id, p in pending.items():
                self._record(video_id, p.file, "failed", f"run aborted: {_describe(e)}", p.info)
            raise FervidError(f"the analysis stopped: {_describe(e)}") from e
        finally:
            self.line.close()
            self.store.write_records(self.run_id, self.records)
        for video_id, p in pending.items():  # only reachable if rows went missing
            self._record(video_id, p.file, "failed", "some segments returned no results", p.info)

    def _take(self, batch: pa.Table, pending: dict[str, _Pending], progress: Progress) -> None:
        first = self.summary.first_result_s is None
        if first:
            self.summary.first_result_s = time.monotonic() - self.started
        faces = batch.filter(pc.equal(batch["kind"], FACE))
        for video_id in pc.unique(faces["video_id"]).to_pylist():
            rows = faces.filter(pc.equal(faces["video_id"], video_id))
            pending[video_id].faces.append(rows)
            pending[video_id].face_rows += len(rows)
        touched = set(pc.unique(faces["video_id"]).to_pylist())
        for segment in batch.filter(pc.equal(batch["kind"], SEGMENT)).to_pylist():
            p = pending[segment["video_id"]]
            if segment["segment_index"] not in p.segments:
                p.segments[segment["segment_index"]] = segment
                progress.update(frames=len(segment["frames_index"] or []), faces=segment["face_rows"])
                if first:
                    self.summary.first_result_frames += len(segment["frames_index"] or [])
            touched.add(segment["video_id"])
        for video_id in touched:
            if video_id in pending and pending[video_id].complete():
                self._commit(video_id, pending.pop(video_id))
                progress.update(videos=1)

    def _commit(self, video_id: str, p: _Pending) -> None:
        """Write a finished video's tables, then its record; a failed segment fails the video whole."""
        errors = [s["error"] for _, s in sorted(p.segments.items()) if s["error"]]
        if errors:
            self._record(video_id, p.file, "failed", errors[0], p.info, started_at=p.started_at)
            return
        frames = frames_table(list(p.segments.values()), self.run_id)
        lost = sum(s["frames_lost"] or 0 for s in p.segments.values())
        if not len(frames):
            self._record(video_id, p.file, "failed", f"none of the {lost} sampled frames could be decoded",
                         p.info, started_at=p.started_at)
            return
        # a damaged stretch costs only its frames; the video is ok and says what was lost
        note = f"{lost} of {lost + len(frames)} sampled frames could not be decoded and were skipped" if lost else None
        labels = list(self.spec.labels)
        rows = _unique_faces(pa.concat_tables(p.faces)) if p.faces else scored_schema(labels).empty_table()
        faces = faces_table(rows, labels, self.run_id, self.config.tracking)
        try:
            self.store.write_video(video_id, self.run_id, faces, frames)
        except (OSError, FervidError) as e:
            self._record(video_id, p.file, "failed", f"cannot write results: {_io_reason(e)}", p.info,
                         started_at=p.started_at)
            return
        self._record(video_id, p.file, "ok", note, p.info, sampled=len(frames), faces=len(faces),
                     started_at=p.started_at)
        self.summary.small_faces += pc.sum(frames["small_faces"]).as_py() or 0
        for segment in p.segments.values():
            self.frames_by_node[segment[graph.EXTRACT_NODE]] += len(segment["frames_index"])
        if len(rows):
            self.faces_by_node.update(rows.column(graph.CLASSIFY_NODE).to_pylist())
        self.store.write_records(self.run_id, self.records)
        self.store.drop_superseded(video_id, self.run_id)

    def _record(self, video_id: str, file: VideoFile, status: str, error: str | None, info: VideoInfo | None = None,
                sampled: int = 0, faces: int = 0, started_at: datetime | None = None) -> None:
        now = _now()
        record = {**self.base, "video_id": video_id, "path": str(file.path), "size_bytes": file.size_bytes,
                  "status": status, "error": error, "sampled_frames": sampled, "faces": faces,
                  "started_at": started_at or now, "finished_at": now}
        if info is not None:
            record.update(duration_s=info.duration_s, fps=info.fps, width=info.width, height=info.height,
                          rotation=info.rotation, frame_count=info.frame_count, decoder=info.decoder)
        self.records.append(record)
        self.summary.counts[status] += 1
        self.summary.frames += sampled
        self.summary.faces += faces

    def _run_record(self, started_at: datetime) -> dict:
        return {
            "run_id": self.run_id, "videos_dir": storage.locate(self.videos_dir).uri, "force": self.force,
            "started_at": started_at, "finished_at": _now(), "wall_s": round(self.summary.wall_s, 3),
            "config": self.config.to_dict(), "config_fingerprint": self.fingerprint,
            "labels": list(self.spec.labels), "counts": self.summary.counts,
            "sampled_frames": self.summary.frames, "faces": self.summary.faces,
            "faces_under_min_face_px": self.summary.small_faces,
            "nodes": {"decode_detect_frames": dict(self.frames_by_node), "classify_faces": dict(self.faces_by_node)},
            "versions": {"fervid": _version("fervid"), "python": platform.python_version(),
                         **{name: _version(name) for name in PACKAGES}},
        }


def _unique_faces(rows: pa.Table) -> pa.Table:
    """Drop rows delivered twice (a retried task): one row per (frame_index, face_index)."""
    keys = pc.add(pc.multiply(rows["frame_index"].cast(pa.int64()), 1 << 16), rows["face_index"].cast(pa.int64()))
    _, first = np.unique(keys.to_numpy(), return_index=True)
    return rows.take(pa.array(sorted(first))) if len(first) != len(rows) else rows


def _content_id(file: VideoFile) -> str | Exception:
    """The video's content id, or why it cannot be read (reported per video, never raised)."""
    try:
        return file_digest(file.path)
    except (OSError, FervidError) as e:
        return e


def _io_reason(e: Exception) -> str:
    """A local OSError in its own words ("Permission denied"); a remote one's line already names the URI."""
    return e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)


def _describe(e: BaseException) -> str:
    """Our own errors read as they are; anything else is prefixed with its type."""
    return first_line(e, with_type=not isinstance(e, FervidError))


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _now() -> datetime:
    return datetime.now(timezone.utc)
