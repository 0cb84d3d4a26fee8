"""Planning on the driver: find the videos, identify them by content, cut them into segments."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from pyarrow.fs import FileType

from pipeline import storage
from pipeline.config import SamplingConfig
from pipeline.decode import VideoInfo, sample_indices
from pipeline.errors import FervidError
from pipeline.schema import Segment

VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}


@dataclass
class VideoFile:
    path: Path | str  # a local path, or the URI of a remote object
    size_bytes: int


def discover(root: str | Path) -> list[VideoFile]:
    """Every video file under root (a folder, a file, or a URI prefix), recursively, in path order."""
    if storage.stat(root).type == FileType.NotFound:
        raise FervidError(f"input folder not found: {root}")
    videos = [VideoFile(loc.uri if loc.remote else Path(loc.path), size) for loc, size in storage.list_files(root)
              if PurePosixPath(loc.path).suffix.lower() in VIDEO_EXTENSIONS]
    if not videos:
        exts = " ".join(sorted(VIDEO_EXTENSIONS))
        raise FervidError(f"no videos ({exts}) found under {root}")
    return videos


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
