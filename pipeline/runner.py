"""`fervid run`: check everything, then plan on the driver, stream the executor's graph, commit each video whole.

    checks (videos found, models resolved; nothing written yet) -> results store, locked
    -> content ids, skip what is done -> probe (executor) -> segments -> stream scored rows (executor)
    -> Assembler (complete videos) -> finalize (tables) -> store.write_video, then the video's record
"""

from __future__ import annotations

import hashlib
import platform
import secrets
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline import storage
from pipeline.assemble import Assembler, CompletedVideo
from pipeline.compact import COMPACT_AT, END_COMPACT_AT, compact
from pipeline.config import Config
from pipeline.decode import VideoInfo
from pipeline.embed import gallery_embeddings
from pipeline.errors import FervidError, first_line
from pipeline.executor import connect, graph
from pipeline.finalize import finalize
from pipeline.identity import assign_people, name_people, people_table, track_embeddings
from pipeline.models import ClassifierSpec, file_digest, resolve_models, resolve_recognizer
from pipeline.plan import VideoFile, discover, plan_segments
from pipeline.progress import Console, Progress, StatusLine, Steps
from pipeline.query import latest_records, read_rows
from pipeline.results import ResultsStore
from pipeline.schema import CLASSIFY_NODE, EXTRACT_NODE, FAILED, OK, SKIPPED, Segment

DUPLICATES_NAMED = 3  # skipped duplicates named in the summary line
ID_READERS = 8  # content ids read at once: ranged reads of remote videos wait on the network, not the CPU
PACKAGES = ("ray", "torch", "transformers", "insightface", "onnxruntime", "decord", "av", "pyarrow", "numpy")


@dataclass
class RunSummary:
    run_id: str
    counts: dict[str, int] = field(default_factory=lambda: {OK: 0, FAILED: 0, SKIPPED: 0})
    frames: int = 0
    faces: int = 0
    wall_s: float = 0.0
    # where the start's seconds go, each from the start of the run: Ray up, every video probed, the first
    # scored rows (the actors are up and have done a segment), the first video committed
    ray_up_s: float | None = None
    probed_s: float | None = None
    first_result_s: float | None = None
    first_commit_s: float | None = None
    first_result_frames: int = 0  # sampled frames whose segments came with the first scored rows
    small_faces: int = 0  # found but under detector.min_face_px, so not classified
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (skipped path, path analysed instead)
    log: str | None = None  # where this process's own output went (Ray's, FFmpeg's), when it was captured
    people: int | None = None  # identity on: people in the whole results folder after this run

    def line(self) -> str:
        c = self.counts
        rate = self.frames / self.wall_s if self.wall_s else 0.0
        return (f"run {self.run_id}: {c[OK]} ok, {c[FAILED]} failed, {c[SKIPPED]} skipped{self._duplicates()}; "
                f"{self.frames} frames, {self.faces} faces in {self.wall_s:.1f}s ({rate:.1f} frames/s)"
                + (f"; {self.people} people in the results" if self.people is not None else ""))

    def _duplicates(self) -> str:
        """ (2 duplicates: b.mp4 = a.mp4, c.mp4 = a.mp4), the first few named."""
        if not self.duplicates:
            return ""
        named = [f"{storage.file_name(copy)} = {storage.file_name(original)}" for copy, original in self.duplicates]
        more = f", and {len(named) - DUPLICATES_NAMED} more" if len(named) > DUPLICATES_NAMED else ""
        return f" ({len(named)} duplicate{'s' * (len(named) > 1)}: {', '.join(named[:DUPLICATES_NAMED])}{more})"


@dataclass
class _Video:
    """What the runner keeps of a video in flight, as the Assembler's context."""

    file: VideoFile
    info: VideoInfo
    started_at: datetime


@dataclass(frozen=True)
class _Models:
    """The run's models, resolved once before anything is written."""

    detector_path: Path
    detector_revision: str  # a content hash of the detector's file
    spec: ClassifierSpec
    fingerprint: str
    recognizer_path: Path | None  # identity on: the face-recognition model
    gallery: dict[str, np.ndarray] | None  # identity.gallery: a unit embedding per person name


class Runner:
    """One run over one folder into one results folder."""

    def __init__(self, videos_dir: str | Path, out: str | Path, config: Config, address: str | None = None,
                 force: bool = False, show_progress: bool = True, console: Console | None = None) -> None:
        """console: the CLI's terminal; given, everything else the process prints goes to RESULTS/logs/<run>.log
        once the checks have passed, and only fervid's own lines reach the terminal."""
        self.videos_dir, self.out, self.config, self.address, self.force = videos_dir, out, config, address, force
        self.console = console
        self.line = StatusLine(console or sys.stderr, enabled=show_progress)
        self.run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
        self.records: list[dict] = []
        self.commits = 0
        self.summary = RunSummary(self.run_id)
        # committed work per Ray node id: which machines of a cluster did what
        self.frames_by_node: Counter[str] = Counter()
        self.faces_by_node: Counter[str] = Counter()

    def run(self) -> RunSummary:
        self.started = time.monotonic()
        started_at = _now()
        self.found = discover(self.videos_dir, self.config.inputs)  # checks first: a run that cannot start
        self.models = self._resolve_models()                             # writes nothing
        self.store = ResultsStore(self.out)
        self._capture_output()
        if self.found.untaken_line():
            self.line.show(self.found.untaken_line(), final=True)
        try:
            with self.store.lock():
                self._run(started_at)
        finally:
            self._keep_log()
        return self.summary

    def _run(self, started_at: datetime) -> None:
        for entry, why in self.found.bad_entries:
            self._record(_path_id(entry), VideoFile(entry, 0), FAILED, f"listed in {self.videos_dir}: {why}")
        todo = self._identify(self.found.videos)
        if todo:
            self._analyse(todo)
        self.store.write_records(self.run_id, self.records)
        compact(self.store.root, min_files=END_COMPACT_AT)
        if self.config.identity.enabled:
            self._assign_people()
        self.summary.wall_s = time.monotonic() - self.started
        self.store.write_run(self.run_id, self._run_record(started_at))

    def _assign_people(self) -> None:
        """Person ids for every analysed track in the folder, earlier ones kept; names from the gallery (this
        run's, else the last assignment's). The people table is replaced whole."""
        counted = {(r["video_id"], r["run_id"]) for r in latest_records(self.store.root).to_pylist() if r["status"] == OK}
        tracks = track_embeddings(read_rows(self.store.root, "tracks"), counted)
        before = self.store.read_people().to_pylist()
        previous = {(r["video_id"], r["run_id"], r["track_id"]): r["person_id"] for r in before}
        assigned = assign_people(tracks, previous, self.config.identity.same_person)
        if self.models.gallery is not None:
            names = name_people(assigned, tracks, self.models.gallery, self.config.identity.gallery_similarity)
        else:
            names = {r["person_id"]: r["person_name"] for r in before if r["person_name"]}
        self.store.write_people(people_table(assigned, names))
        self.summary.people = len(set(assigned.values()))

    def _capture_output(self) -> None:
        """From here on, what Ray, FFmpeg and the workers print goes to the run's log, not to the terminal:
        RESULTS/logs/<run>.log (for results at a URI, a local file copied there at the end)."""
        if self.console is None:
            return
        root = self.store.root
        folder = Path(tempfile.mkdtemp(prefix="fervid-log-")) if root.remote else Path(root.path, "logs")
        folder.mkdir(exist_ok=True)
        self.console.capture(folder / f"{self.run_id}.log")
        self.summary.log = root.child("logs", f"{self.run_id}.log").uri

    def _keep_log(self) -> None:
        if self.console is not None and self.store.root.remote:
            sys.stdout.flush()
            sys.stderr.flush()
            storage.write_bytes(self.store.root.child("logs", f"{self.run_id}.log"), self.console.log.read_bytes())

    def _resolve_models(self) -> _Models:
        c, i = self.config.classifier, self.config.identity
        detector, spec = resolve_models(self.config.detector.model, c.model, c.revision)
        recognizer = resolve_recognizer(i.model, self.config.detector.model) if i.enabled else None
        gallery = gallery_embeddings(i.gallery, detector, recognizer) if i.enabled and i.gallery else None
        return _Models(detector, file_digest(detector), spec, self.config.fingerprint(), recognizer, gallery)

    def _identify(self, files: list[VideoFile]) -> dict[str, VideoFile]:
        """Content ids; duplicates and videos already done with this config are skipped."""
        done = set() if self.force else self.store.done(self.models.fingerprint)
        todo: dict[str, VideoFile] = {}
        with ThreadPoolExecutor(ID_READERS) as pool:  # map keeps the files' order
            ids = list(Steps(self.line, "reading content ids", len(files)).track(pool.map(_content_id, files)))
        self.line.close()
        for file, video_id in zip(files, ids):
            if isinstance(video_id, Exception):
                self._record(_path_id(file.path), file, FAILED, f"cannot read the file: {_io_reason(video_id)}")
            elif video_id in todo:
                self._record(video_id, file, SKIPPED, f"same content as {todo[video_id].path}")
                self.summary.duplicates.append((str(file.path), str(todo[video_id].path)))
            elif video_id in done:
                self._record(video_id, file, SKIPPED, "already analysed with this configuration")
            else:
                todo[video_id] = file
        return todo

    def _analyse(self, todo: dict[str, VideoFile]) -> None:
        connect.connect(self.address)
        self.summary.ray_up_s = time.monotonic() - self.started
        with graph.Analysis(self.config, self.models.detector_path, self.models.spec,
                            self.models.recognizer_path) as analysis:
            self._stream(todo, analysis)

    def _stream(self, todo: dict[str, VideoFile], analysis: graph.Analysis) -> None:
        assembler = Assembler()
        segments = self._plan(todo, assembler, analysis)
        self.summary.probed_s = time.monotonic() - self.started
        self.store.write_records(self.run_id, self.records)
        progress = Progress(self.line, len(assembler.open_videos()), sum(len(s.frame_index) for s in segments))
        self.line.show("starting workers", final=True)
        try:
            if segments:
                for batch in analysis.scores(segments):
                    self._take(batch, assembler, progress)
        except Exception as e:
            if connect.cancelled(e):  # the run itself was cancelled (Ctrl-C over ray://): stopped, not failed
                raise KeyboardInterrupt from e
            for video_id, video in assembler.open_videos().items():
                self._record(video_id, video.file, FAILED, f"run aborted: {_describe(e)}", video.info)
            raise FervidError(f"the analysis stopped: {_describe(e)}") from e
        finally:
            self.line.close()
            self.store.write_records(self.run_id, self.records)
        for video_id, video in assembler.open_videos().items():  # only reachable if rows went missing
            self._record(video_id, video.file, FAILED, "some segments returned no results", video.info)

    def _plan(self, todo: dict[str, VideoFile], assembler: Assembler, analysis: graph.Analysis) -> list[Segment]:
        """Probe every video (a failed probe fails that video) and cut the rest into segments."""
        by_path = {str(f.path): (video_id, f) for video_id, f in todo.items()}
        segments: list[Segment] = []
        probes = analysis.probe({path: video_id for path, (video_id, _) in by_path.items()})
        for path, result in Steps(self.line, "probing videos", len(by_path)).track(probes):
            video_id, file = by_path[path]
            if isinstance(result, Exception):
                self._record(video_id, file, FAILED, _describe(result))
                continue
            planned = plan_segments(video_id, path, result, self.config.sampling)
            assembler.expect(video_id, len(planned), _Video(file, result, _now()))
            segments += planned
        self.line.close()
        return sorted(segments, key=lambda s: (s.path, s.segment_index))

    def _take(self, batch: pa.Table, assembler: Assembler, progress: Progress) -> None:
        arrivals = assembler.add(batch)
        if self.summary.first_result_s is None:
            self.summary.first_result_s = time.monotonic() - self.started
            self.summary.first_result_frames = arrivals.frames
        for video in arrivals.completed:
            self._commit(video)
        progress.update(videos=len(arrivals.completed), frames=arrivals.frames, faces=arrivals.faces)

    def _commit(self, completed: CompletedVideo) -> None:
        """Write a complete video's tables, then its record (the commit); a failed segment fails it whole."""
        video: _Video = completed.context
        finished = finalize(completed, list(self.models.spec.labels), self.run_id, self.config.tracking,
                            self.config.quality, self.config.identity)
        if finished.error is None:
            try:
                self.store.write_video(completed.video_id, self.run_id, finished.faces, finished.frames, finished.tracks)
            except (OSError, FervidError) as e:
                finished.error = f"cannot write results: {_io_reason(e)}"
        if finished.error is not None:
            self._record(completed.video_id, video.file, FAILED, finished.error, video.info, started_at=video.started_at)
            return
        self._record(completed.video_id, video.file, OK, finished.note, video.info, sampled=len(finished.frames),
                     faces=len(finished.faces), started_at=video.started_at, det_size=finished.det_size)
        self.summary.small_faces += finished.small_faces
        for segment in completed.segments.values():
            self.frames_by_node[segment[EXTRACT_NODE]] += len(segment["frames_index"])
        for rows in completed.faces:
            self.faces_by_node.update(rows[CLASSIFY_NODE].to_pylist())
        self.store.write_records(self.run_id, self.records)
        self.store.drop_superseded(completed.video_id, self.run_id)
        self.commits += 1
        if self.summary.first_commit_s is None:
            self.summary.first_commit_s = time.monotonic() - self.started
        if self.commits % COMPACT_AT == 0:  # a long run keeps the file count, and so reading, in bounds
            compact(self.store.root)

    def _record(self, video_id: str, file: VideoFile, status: str, error: str | None, info: VideoInfo | None = None,
                sampled: int = 0, faces: int = 0, started_at: datetime | None = None,
                det_size: int | None = None) -> None:
        now = _now()
        m, d, c = self.models, self.config.detector, self.config.classifier
        record = {"video_id": video_id, "path": str(file.path), "folder": file.folder, "size_bytes": file.size_bytes,
                  "status": status,
                  "error": error, "sampled_frames": sampled, "faces": faces, "started_at": started_at or now,
                  "finished_at": now, "config_fingerprint": m.fingerprint, "detector": d.model,
                  "detector_revision": m.detector_revision, "classifier": c.model,
                  "classifier_revision": m.spec.revision, "run_id": self.run_id, "det_size": det_size}
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
            "start_s": {name: None if value is None else round(value, 3) for name, value in (
                ("ray_up", self.summary.ray_up_s), ("probed", self.summary.probed_s),
                ("first_result", self.summary.first_result_s), ("first_commit", self.summary.first_commit_s))},
            "config": self.config.to_dict(), "config_fingerprint": self.models.fingerprint,
            "labels": list(self.models.spec.labels), "counts": self.summary.counts,
            "sampled_frames": self.summary.frames, "faces": self.summary.faces,
            "faces_under_min_face_px": self.summary.small_faces,
            "not_taken": dict(self.found.not_taken), "excluded": self.found.excluded,
            "nodes": {"decode_detect_frames": dict(self.frames_by_node), "classify_faces": dict(self.faces_by_node)},
            "versions": {"fervid": _version("fervid"), "python": platform.python_version(),
                         **{name: _version(name) for name in PACKAGES}},
        }


def _path_id(path: str | Path) -> str:
    """The id of a video whose content cannot be read: a hash of its path."""
    return hashlib.blake2b(str(path).encode(), digest_size=8).hexdigest()


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
