"""Planning on the driver: find the videos, identify them by content, cut them into segments."""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

import numpy as np
from pyarrow.fs import FileType

from pipeline import storage
from pipeline.config import InputsConfig, SamplingConfig
from pipeline.decode import VideoInfo, sample_indices
from pipeline.errors import FervidError
from pipeline.schema import Segment

LIST_SUFFIXES = (".txt", ".csv")  # VIDEOS given as a file of these: a list of videos, folders or URIs


@dataclass
class VideoFile:
    path: Path | str  # a local path, or the URI of a remote object
    size_bytes: int
    folder: str = "."  # its folder relative to the folder it was found under ('.': that folder itself)


@dataclass
class Discovery:
    """What a VIDEOS argument named: the videos taken, and what was not taken and why."""

    videos: list[VideoFile] = field(default_factory=list)
    not_taken: Counter[str] = field(default_factory=Counter)  # file ending -> files under a folder not taken
    excluded: int = 0  # files left out by inputs.include / inputs.exclude
    bad_entries: list[tuple[str, str]] = field(default_factory=list)  # (line of a list file, why it was not used)

    def untaken_line(self) -> str | None:
        """One line on what was found and not taken, or None."""
        parts = []
        if self.not_taken:
            counts = ", ".join(f"{ext} {n}" for ext, n in sorted(self.not_taken.items(), key=lambda kv: (-kv[1], kv[0])))
            parts.append(f"{sum(self.not_taken.values())} files not taken ({counts}; inputs.extensions lists "
                         "what is)")
        if self.excluded:
            parts.append(f"{self.excluded} videos left out by --include/--exclude")
        return "; ".join(parts) or None


def discover(source: str | Path, inputs: InputsConfig) -> Discovery:
    """The videos a VIDEOS argument names: a folder or URI prefix searched recursively (in path order), one
    file, or a list file (.txt: a path or URI per line; .csv: a `path` column) whose lines are each of those."""
    info = storage.stat(source)
    if info.type == FileType.NotFound:
        raise FervidError(f"input folder not found: {source}")
    found = Discovery()
    if info.type == FileType.File and PurePosixPath(str(source)).suffix.lower() in LIST_SUFFIXES:
        for entry, where in _list_entries(source):
            try:
                if where is None:
                    raise FervidError("a relative path in a list at a URI (name absolute paths or URIs there)")
                taken = len(found.videos)
                _take(where, inputs, found, explicit=True)
                if len(found.videos) == taken:
                    raise FervidError(f"no videos found under {where}")
            except FervidError as e:
                found.bad_entries.append((entry, str(e)))
        if not found.videos and not found.bad_entries:
            raise FervidError(f"{source} lists no videos")
        return found
    _take(source, inputs, found, explicit=False)
    if not found.videos:
        seen = f" ({found.untaken_line()})" if found.not_taken or found.excluded else ""
        raise FervidError(f"no videos ({' '.join(inputs.extensions)}) found under {source}{seen}")
    return found


def _take(source: str | Path, inputs: InputsConfig, found: Discovery, explicit: bool) -> None:
    """Add the videos under source to found; a file named on its own (explicit) is taken whatever its ending."""
    root = storage.locate(source)
    if storage.stat(root).type == FileType.NotFound:
        raise FervidError(f"not found: {source}")
    listed = storage.list_files(root)
    extensions = {e.lower() for e in inputs.extensions}
    for loc, size in listed:
        under = loc.name if loc.path == root.path else loc.path[len(root.path.rstrip("/")) + 1:]
        ending = PurePosixPath(loc.path).suffix.lower()
        if not (explicit and loc.path == root.path) and ending not in extensions:
            found.not_taken[ending or "(no ending)"] += 1
        elif (inputs.include and not any(fnmatch(under, glob) for glob in inputs.include)) or any(
                fnmatch(under, glob) for glob in inputs.exclude):
            found.excluded += 1
        else:
            folder = str(PurePosixPath(under).parent)
            found.videos.append(VideoFile(loc.uri if loc.remote else Path(loc.path), size, folder))


def _list_entries(source: str | Path) -> list[tuple[str, str | None]]:
    """(entry as written, path or URI) for each line of a list file; relative paths are relative to the list's
    folder. Blank lines and # comments are skipped."""
    text = storage.read_bytes(source).decode("utf-8-sig", errors="replace")
    if PurePosixPath(str(source)).suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        if rows and "path" not in rows[0]:
            raise FervidError(f"{source} has no `path` column (columns: {', '.join(rows[0])})")
        entries = [(row.get("path") or "").strip() for row in rows]
    else:
        entries = [line.strip() for line in text.splitlines()]
    folder = None if storage.is_uri(source) else Path(source).resolve().parent
    listed = []
    for entry in entries:
        if not entry or entry.startswith("#"):
            continue
        if storage.is_uri(entry) or Path(entry).expanduser().is_absolute():
            listed.append((entry, entry if storage.is_uri(entry) else str(Path(entry).expanduser())))
        else:  # a list at a URI names absolute paths or URIs: a relative one is reported as not found
            listed.append((entry, str(folder / entry) if folder else None))
    return listed


def plan_segments(video_id: str, path: str, info: VideoInfo, sampling: SamplingConfig) -> list[Segment]:
    """Split a video's sampled frames into segments of about sampling.segment_s seconds each."""
    indices = sample_indices(info.pts_s, sampling.fps, sampling.every_n_frames)
    size = decode_size(info.width, info.height, sampling.decode_max_side)
    pts = info.pts_s[indices]
    bucket = np.floor((pts - info.pts_s[0]) / sampling.segment_s).astype(np.int64)
    return [Segment(video_id, path, info.decoder, info.rotation, size, info.width / size[0] if size else 1.0, k,
                    tuple(indices[bucket == b].tolist()), tuple(pts[bucket == b].tolist()))
            for k, b in enumerate(np.unique(bucket))]


def decode_size(width: int, height: int, max_side: int | None) -> tuple[int, int] | None:
    """The (even) displayed width and height to decode at, when the frame's longer side exceeds max_side."""
    if not max_side or max(width, height) <= max_side:
        return None
    scale = max_side / max(width, height)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)
