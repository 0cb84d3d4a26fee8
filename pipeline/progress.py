"""Progress on long runs: one updating line on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Videos done of total, sampled frames per second, and an ETA from the frames still to do."""

    def __init__(self, videos: int, frames: int, stream: TextIO = sys.stderr, every_s: float = 10.0) -> None:
        self.videos_total, self.frames_total = videos, frames
        self.videos_done = self.frames_done = self.faces = 0
        self.stream = stream
        self.live = stream.isatty()
        self.every_s = every_s
        self.started = self.last = time.monotonic()

    def update(self, videos: int = 0, frames: int = 0, faces: int = 0) -> None:
        self.videos_done += videos
        self.frames_done += frames
        self.faces += faces
        now = time.monotonic()
        if self.live or now - self.last >= self.every_s or self.videos_done == self.videos_total and videos:
            self.last = now
            self._show(now)

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()

    def _show(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.frames_done / elapsed
        left = self.frames_total - self.frames_done
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        line = (f"videos {self.videos_done}/{self.videos_total}  frames {self.frames_done}/{self.frames_total}  "
                f"faces {self.faces}  {rate:.1f} frames/s  ETA {eta}")
        self.stream.write(f"\r{line}\033[K" if self.live else f"{line}\n")
        self.stream.flush()
