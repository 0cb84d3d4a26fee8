"""Reassembly: scored rows arrive in batches, in any order, possibly twice; whole videos come out.

An executor may deliver a segment's rows split over several batches, interleaved with other videos',
and a retried task delivers rows again. A video is complete when every one of its segments has sent its
closing SEGMENT row and every FACE row those rows announce has arrived; a row seen before, or one for a
video already handed out, is dropped. Plain Python over Arrow: no executor, no storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.schema import FACE, SEGMENT


@dataclass
class CompletedVideo:
    """All of one video's rows: its segments' closing rows by segment index, and its face rows (each once)."""

    video_id: str
    segments: dict[int, dict]
    faces: list[pa.Table]
    context: object = None  # whatever the caller attached when it expected the video


@dataclass
class _Open:
    expected_segments: int
    context: object
    segments: dict[int, dict] = field(default_factory=dict)
    faces: list[pa.Table] = field(default_factory=list)
    face_keys: set[int] = field(default_factory=set)  # frame_index << 16 | face_index of the rows kept

    def complete(self) -> bool:
        return (len(self.segments) == self.expected_segments
                and len(self.face_keys) == sum(s["face_rows"] or 0 for s in self.segments.values()))


@dataclass
class Arrivals:
    """What one batch brought: new frames and faces (duplicates not counted), and the videos it completed."""

    frames: int = 0
    faces: int = 0
    segments: list[dict] = field(default_factory=list)
    completed: list[CompletedVideo] = field(default_factory=list)


class Assembler:
    """Collects scored rows per video until each is complete."""

    def __init__(self) -> None:
        self._open: dict[str, _Open] = {}
        self._closed: set[str] = set()

    def expect(self, video_id: str, segments: int, context: object = None) -> None:
        """Announce a video and how many segments it was cut into; `context` comes back with it."""
        self._open[video_id] = _Open(segments, context)

    def open_videos(self) -> dict[str, object]:
        """Videos not complete yet, with their context."""
        return {video_id: state.context for video_id, state in self._open.items()}

    def add(self, batch: pa.Table) -> Arrivals:
        """Take one batch of scored rows; return what it brought, including the videos it completed."""
        arrivals = Arrivals()
        touched: set[str] = set()
        faces = batch.filter(pc.equal(batch["kind"], FACE))
        for video_id in pc.unique(faces["video_id"]).to_pylist():
            state = self._open.get(video_id)
            if state is None:
                self._check_known(video_id)
                continue
            rows = faces.filter(pc.equal(faces["video_id"], video_id))
            rows = _new_rows(rows, state.face_keys)
            if len(rows):
                state.faces.append(rows)
                arrivals.faces += len(rows)
                touched.add(video_id)
        for segment in batch.filter(pc.equal(batch["kind"], SEGMENT)).to_pylist():
            video_id = segment["video_id"]
            state = self._open.get(video_id)
            if state is None:
                self._check_known(video_id)
                continue
            if segment["segment_index"] in state.segments:
                continue
            state.segments[segment["segment_index"]] = segment
            arrivals.segments.append(segment)
            arrivals.frames += len(segment["frames_index"] or [])
            touched.add(video_id)
        for video_id in sorted(touched):
            if self._open[video_id].complete():
                state = self._open.pop(video_id)
                self._closed.add(video_id)
                arrivals.completed.append(CompletedVideo(video_id, dict(sorted(state.segments.items())),
                                                         state.faces, state.context))
        return arrivals

    def _check_known(self, video_id: str) -> None:
        """Rows of a video handed out already are late duplicates; rows of a video never expected are a bug."""
        if video_id not in self._closed:
            raise ValueError(f"rows of video {video_id}, which was never expected")


def _new_rows(rows: pa.Table, seen: set[int]) -> pa.Table:
    """The rows whose (frame_index, face_index) is not in `seen` (and each once), adding their keys to it."""
    keys = (rows["frame_index"].to_numpy().astype(np.int64) << 16) | rows["face_index"].to_numpy().astype(np.int64)
    keep = np.zeros(len(keys), dtype=bool)
    for i, key in enumerate(keys.tolist()):
        if key not in seen:
            seen.add(key)
            keep[i] = True
    return rows if keep.all() else rows.filter(pa.array(keep))
