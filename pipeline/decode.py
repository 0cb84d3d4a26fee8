"""Decoding: probe a video, pick sampled frames by time, read them (decord, with PyAV as fallback).

Frame indices and timestamps come from the decoder that will read the frames, so a
sampled frame's index and pts_s always describe the pixels that were analysed.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import FervidError, first_line

if TYPE_CHECKING:
    import av

READ_CHUNK = 16  # frames decord decodes in one call: a damaged chunk is retried frame by frame
HELD_BYTES = 512 * 2**20  # decoded frames held before they are handed on (a 10 s segment of 1080p at 5 fps: 311 MiB)


@dataclass
class VideoInfo:
    """What probing a video tells: enough to plan its segments."""

    decoder: str  # "decord" or "pyav"
    frame_count: int
    fps: float
    duration_s: float
    width: int  # as displayed, after rotation
    height: int
    rotation: int  # clockwise degrees applied to decoded frames to show them upright
    pts_s: np.ndarray  # float64 presentation time of every frame, in index order


def probe(path: str) -> VideoInfo:
    """Open with decord; fall back to PyAV when decord can't. Raises FervidError for non-videos."""
    try:
        rotation, size = _display_geometry(path)
    except Exception as e:
        raise FervidError(f"not a readable video: {first_line(e, 200)}") from None
    try:
        decoder, pts = "decord", _decord_timestamps(path)
    except Exception:
        try:
            decoder, pts = "pyav", _pyav_timestamps(path)
        except Exception as e:
            raise FervidError(f"no decoder could read the video: {first_line(e, 200)}") from None
    if len(pts) == 0:
        raise FervidError("the file has no video frames")
    span = float(pts[-1] - pts[0])
    fps = (len(pts) - 1) / span if span > 0 else 0.0
    duration = span + (1.0 / fps if fps else 0.0)
    width, height = size if rotation % 180 == 0 else size[::-1]
    return VideoInfo(decoder, len(pts), fps, duration, width, height, rotation, pts)


def sample_indices(pts_s: np.ndarray, fps: float | None = None, every_n_frames: int | None = None) -> np.ndarray:
    """Indices of the frames to analyse: the first frame at or after each 1/fps tick, or every Nth."""
    if every_n_frames:
        return np.arange(0, len(pts_s), every_n_frames, dtype=np.int64)
    if len(pts_s) == 0:
        return np.zeros(0, dtype=np.int64)
    ticks = np.floor((pts_s - pts_s[0]) * fps + 1e-3)
    ticks = np.maximum.accumulate(ticks)
    keep = np.concatenate([[True], np.diff(ticks) > 0])
    return np.flatnonzero(keep).astype(np.int64)


def read_frames(path: str, decoder: str, indices: Sequence[int], rotation: int = 0,
                size: Sequence[int] | None = None,
                pts_s: Sequence[float] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (index, RGB frame upright) for the given sorted indices, a few frames in memory at a time.

    size: (width, height) as displayed to scale frames to while decoding; None keeps them as stored.
    pts_s: the probe's presentation times of those frames, where the caller has them (a segment): PyAV
    then finds them by time instead of demuxing the whole file to number its frames, once per segment.
    Frames that cannot be decoded (a damaged stretch of the file) are left out; the caller counts
    them. decord applies the rotation metadata itself (and takes the displayed size); PyAV frames
    are scaled in their stored orientation and turned here.
    """
    if decoder == "decord":
        yield from _read_decord(path, list(indices), size)
        return
    turns = (-rotation // 90) % 4  # np.rot90 turns counter-clockwise
    stored = None if size is None else (tuple(size) if turns % 2 == 0 else tuple(size)[::-1])
    for index, frame in _read_pyav(path, list(indices), stored, pts_s):
        yield index, np.ascontiguousarray(np.rot90(frame, turns)) if turns else frame


def _decord_timestamps(path: str) -> np.ndarray:
    import decord

    reader = decord.VideoReader(path, num_threads=1)
    n = len(reader)
    if n:
        reader[0]  # decord opens some files it cannot decode (MPEG-TS: .ts, .mts, .m2ts): PyAV takes those
    return reader.get_frame_timestamp(range(n))[:, 0].astype(np.float64) if n else np.zeros(0)


def _pyav_timestamps(path: str) -> np.ndarray:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None and p.size)
        return np.asarray(pts, dtype=np.float64) * float(stream.time_base)


def _display_geometry(path: str) -> tuple[int, tuple[int, int]]:
    """Rotation (clockwise degrees) and coded (width, height) of the first video stream."""
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise FervidError("no video stream (audio only?)")
        stream = container.streams.video[0]
        frame = next(container.decode(stream), None)
        if frame is None:
            raise FervidError("no frame could be decoded")
        return int(round(-(frame.rotation or 0))) % 360, (frame.width, frame.height)


def _read_decord(path: str, indices: list[int], size: Sequence[int] | None) -> Iterator[tuple[int, np.ndarray]]:
    """Frames decoded in chunks; a chunk that fails is retried frame by frame so only damaged frames are lost.

    After each read, decord's reader goes on decoding the frames that follow in a thread of its own,
    asked for or not: past the segment's end that work is thrown away, and in an actor with one core
    it takes CPU from the detector. So frames are handed on only once the reader is closed, or when the
    next chunk would take those held over HELD_BYTES (then the reader stays open while they are used).
    """
    import decord

    def open_reader() -> decord.VideoReader:
        width, height = size or (-1, -1)
        return decord.VideoReader(path, num_threads=1, width=width, height=height)

    reader = open_reader()  # one reader per segment: decord leaks over long use
    held: list[tuple[int, np.ndarray]] = []
    for start in range(0, len(indices), READ_CHUNK):
        chunk = indices[start:start + READ_CHUNK]
        if held and (len(held) + len(chunk)) * held[0][1].nbytes > HELD_BYTES:  # a segment's frames are alike
            yield from held
            held = []
        try:
            held.extend(zip(chunk, reader.get_batch(chunk).asnumpy()))
        except decord.DECORDError:
            for index in chunk:  # a fresh reader each time: a failed decode leaves the old one unusable
                try:
                    held.append((index, open_reader()[index].asnumpy()))
                except decord.DECORDError:
                    continue
            reader = open_reader()
    del reader
    yield from held


def _read_pyav(path: str, indices: list[int], size: tuple[int, int] | None,
               pts_s: Sequence[float] | None) -> Iterator[tuple[int, np.ndarray]]:
    """Frames matched by presentation timestamp; packets that fail to decode are skipped.

    The read starts from a seek to the first wanted frame. Where the seek lands past it (MPEG-TS files
    without an index, seen: every seek but to 0 yields nothing), the frames still wanted are read again
    from the start of the file.
    """
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        if pts_s is None:
            all_pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None and p.size)
            wanted = {all_pts[i]: i for i in indices}
        else:  # the probe's times are stream ticks * time_base (_pyav_timestamps): back to ticks exactly
            wanted = {round(t / float(stream.time_base)): i for i, t in zip(indices, pts_s)}
    first_wanted = min(wanted)
    for seek in (True, False):
        with av.open(path) as container:
            stream = container.streams.video[0]
            if seek:
                container.seek(first_wanted, stream=stream, backward=True, any_frame=False)
            first_decoded = yield from _decode_wanted(container, stream, wanted, size)
        if not wanted or (first_decoded is not None and first_decoded <= first_wanted):
            return  # all found, or the rest lie in damaged packets: reading again would not find them


def _decode_wanted(container: av.container.InputContainer, stream: av.video.stream.VideoStream, wanted: dict[int, int],
                   size: tuple[int, int] | None) -> Generator[tuple[int, np.ndarray], None, int | None]:
    """Yield (index, frame) for the frames in wanted (pts -> index), popping them; returns the first pts decoded."""
    import av

    first = None
    last = max(wanted)
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            continue
        for frame in frames:  # decoders emit frames in presentation order
            if first is None:
                first = frame.pts
            if frame.pts in wanted:
                width, height = size or (frame.width, frame.height)
                yield wanted.pop(frame.pts), frame.to_ndarray(width=width, height=height, format="rgb24")
        if not wanted or any(frame.pts is not None and frame.pts > last for frame in frames):
            break
    return first
