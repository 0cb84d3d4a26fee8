"""Test videos made from ../shared material with PyAV (real H.264 files)."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np


def write_video(path: Path, frames: Iterable[np.ndarray], fps: float = 10.0, rotation: int = 0,
                times_s: list[float] | None = None) -> Path:
    """Encode RGB frames (even width and height) as H.264 MP4; rotation is display metadata only.

    With times_s each frame gets that presentation time (variable frame rate) in milliseconds.
    """
    frames = iter(frames)
    first = next(frames)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.height, stream.width = first.shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast"}
        if times_s is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for k, frame in enumerate((first, *frames)):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            if times_s is not None:
                video_frame.pts, video_frame.time_base = round(times_s[k] * 1000), Fraction(1, 1000)
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))
    return path


def read_photo(path: Path, max_side: int = 0) -> np.ndarray:
    """An RGB photo cut to even sides (H.264 needs them), optionally shrunk to max_side."""
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    if max_side and max(image.shape[:2]) > max_side:
        scale = max_side / max(image.shape[:2])
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    h, w = image.shape[:2]
    return np.ascontiguousarray(image[: h - h % 2, : w - w % 2])


def photo_video(photo: Path, path: Path, seconds: float = 1.0, fps: float = 10.0) -> Path:
    """A still video of one photo."""
    image = read_photo(photo)
    return write_video(path, (image for _ in range(int(seconds * fps))), fps)
