"""Progress on long runs: one updating line on a terminal, periodic log lines otherwise, nothing when quiet.

A run shows its steps in turn: reading content ids, probing, then the analysis itself.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO, TypeVar

T = TypeVar("T")
RATE_AFTER_S = 2.0  # seconds of results before a rate (and an ETA) is shown


class Console:
    """The user's terminal, for fervid's own lines, once everything else this process prints goes to a log.

    Ray's C++ core, FFmpeg inside the decoders and the worker output Ray forwards write to the process's
    stdout and stderr, not through Python, so `capture` points those two file descriptors at the log file
    for the rest of the process, and keeps copies of the originals here. Used as a stream it writes to the
    terminal's stderr; `out` is its stdout.
    """

    def __init__(self) -> None:
        self.out: TextIO = sys.stdout
        self.err: TextIO = sys.stderr
        self.log: Path | None = None

    def capture(self, log: Path) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.out = os.fdopen(os.dup(1), "w", buffering=1)
        self.err = os.fdopen(os.dup(2), "w", buffering=1)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        self.log = log

    def write(self, text: str) -> int:
        return self.err.write(text)

    def flush(self) -> None:
        self.err.flush()

    def isatty(self) -> bool:
        return self.err.isatty()


class StatusLine:
    """Where progress is written: redrawn in place on a terminal; elsewhere (a log) at most one line
    every every_s seconds, plus the lines said to be final; nothing at all when not enabled."""

    def __init__(self, stream: TextIO = sys.stderr, every_s: float = 10.0, enabled: bool = True) -> None:
        self.stream, self.every_s, self.enabled = stream, every_s, enabled
        self.live = enabled and stream.isatty()
        self.last = time.monotonic()
        self.drawn = False  # a live line is on screen, to end with a newline

    def show(self, text: str, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or not (self.live or final or now - self.last >= self.every_s):
            return
        self.last = now
        if self.live:
            self.stream.write(f"\r{text}\033[K")
            self.drawn = True
        else:
            self.stream.write(f"{text}\n")
        self.stream.flush()

    def close(self) -> None:
        """End a live line, so what is printed next starts on a line of its own."""
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


class Steps:
    """A preparatory step counted in items, e.g. "probing videos 37/120"."""

    def __init__(self, line: StatusLine, what: str, total: int) -> None:
        self.line, self.what, self.total, self.done = line, what, total, 0

    def track(self, items: Iterable[T]) -> Iterator[T]:
        """The items as they come, counting each."""
        for item in items:
            self.done += 1
            self.line.show(f"{self.what} {self.done}/{self.total}", final=self.done == self.total)
            yield item


class Progress:
    """Videos done of total, sampled frames per second, and an ETA from the frames still to do.

    The rate is counted from the first frames done, so the workers' start-up does not stretch the ETA.
    """

    def __init__(self, line: StatusLine, videos: int, frames: int) -> None:
        self.line = line
        self.videos_total, self.frames_total = videos, frames
        self.videos_done = self.frames_done = self.faces = 0
        self.first: tuple[float, int] | None = None  # when the first frames came, and how many

    def update(self, videos: int = 0, frames: int = 0, faces: int = 0) -> None:
        self.videos_done += videos
        self.frames_done += frames
        self.faces += faces
        now = time.monotonic()
        if self.first is None and self.frames_done:
            self.first = (now, self.frames_done)
        since, counted = self.first or (now, 0)
        # results arrive in bursts (a batch closes several segments at once): no rate from a moment
        rate = (self.frames_done - counted) / (now - since) if now - since >= RATE_AFTER_S else 0.0
        left = self.frames_total - self.frames_done
        speed = f"{rate:.1f} frames/s" if rate > 0 else "- frames/s"
        eta = "done" if left <= 0 else f"ETA {left / rate:.0f}s" if rate > 0 else "ETA ?"
        self.line.show(f"videos {self.videos_done}/{self.videos_total}  frames {self.frames_done}/{self.frames_total}  "
                       f"faces {self.faces}  {speed}  {eta}",
                       final=bool(videos) and self.videos_done == self.videos_total)
