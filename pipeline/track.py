"""Following each face through a video: ByteTrack-style track ids.

The driver runs this over one video's face rows in frame order once all its segments are in, so a
track crosses segment boundaries like any other frame, and the ids do not depend on how many workers
there were or in which order segments finished.

Why the matching looks the way it does: frames are sampled by time (5 per second by default), so a
face moves far between two sampled frames (a head turn or a camera pan easily moves it a third to a
whole face width in 0.2 s) and plain IoU of consecutive boxes often drops to zero. Two things bridge
that, both scaled by the time between samples rather than by frame counts:

- motion: each track predicts its box from its last box and its velocity (box corners in pixels per
  second, measured between its last two matches), so a steadily moving face is looked for where it
  should be now;
- buffered IoU (as in C-BIoU tracking): both boxes are widened by BUFFER of their size on each side
  before the overlap is taken. With BUFFER 0.5 and the default match_iou 0.3 a face may be up to about
  one face width sideways (0.6 of a width both ways at once) from where its track expected it and still
  match; a neighbour's box can be as close, so the matching is one-to-one over the whole frame
  (Hungarian), where the pairing that fits every face best wins.

As in ByteTrack, detections at or above `high_score` are matched first, then the weaker ones (between
detector.threshold and high_score; lower the detector's threshold to let more partly hidden faces
continue their tracks) may only continue tracks left unmatched, never start one. A track unseen for
more than `max_gap_s` ends, and tracks with fewer than `min_frames` detections are dropped, so one
stray false positive does not become a "person".

Written here rather than taken from a library: supervision (0.31) no longer ships ByteTrack, and its
successor package `trackers` would add supervision, matplotlib and rich to every install for about a
hundred lines of numpy and scipy that are easier to fit to time-sampled frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from pipeline.config import TrackingConfig

BUFFER = 0.5  # widen boxes by half their width and height on each side before IoU

NO_TRACK = -1


@dataclass
class _Track:
    number: int  # order of creation
    box: np.ndarray  # (4,) last matched box, x1 y1 x2 y2
    t: float  # its timestamp, seconds
    velocity: np.ndarray  # (4,) box change per second; zero until the second match

    def predict(self, t: float) -> np.ndarray:
        return self.box + self.velocity * (t - self.t)

    def update(self, box: np.ndarray, t: float) -> None:
        if t > self.t:  # a repeated timestamp keeps the old velocity
            self.velocity = (box - self.box) / (t - self.t)
        self.box, self.t = box, t


class _Tracker:
    """The online part: tracks alive so far, updated one sampled frame at a time."""

    def __init__(self, config: TrackingConfig) -> None:
        self.config = config
        self.live: list[_Track] = []
        self.created = 0

    def step(self, t: float, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Track numbers of one frame's boxes (NO_TRACK where none)."""
        c = self.config
        numbers = np.full(len(boxes), NO_TRACK, dtype=np.int64)
        self.live = [track for track in self.live if t - track.t <= c.max_gap_s]
        high = scores >= c.high_score
        free = self.live
        for rows in (np.flatnonzero(high), np.flatnonzero(~high)):
            predicted = np.array([track.predict(t) for track in free]).reshape(-1, 4)
            pairs = _associate(predicted, boxes[rows], c.match_iou)
            for k, r in pairs:
                free[k].update(boxes[rows[r]], t)
                numbers[rows[r]] = free[k].number
            matched = {k for k, _ in pairs}
            free = [track for k, track in enumerate(free) if k not in matched]
        for r in np.flatnonzero(high & (numbers == NO_TRACK)):
            self.live.append(_Track(self.created, boxes[r], t, np.zeros(4)))
            numbers[r] = self.created
            self.created += 1
        return numbers


def track_faces(frame_index: np.ndarray, pts_s: np.ndarray, xyxy: np.ndarray, score: np.ndarray,
                config: TrackingConfig) -> np.ndarray:
    """A track id per face row (int32, NO_TRACK for a face in no track), for one video's rows in frame order.

    Ids are 0, 1, 2, ... in order of each track's first appearance.
    """
    tracker = _Tracker(config)
    boxes = np.asarray(xyxy, dtype=np.float64)
    numbers = np.full(len(frame_index), NO_TRACK, dtype=np.int64)
    starts = np.flatnonzero(np.diff(frame_index, prepend=-1))  # first row of each frame
    for begin, end in zip(starts, [*starts[1:], len(frame_index)]):
        numbers[begin:end] = tracker.step(float(pts_s[begin]), boxes[begin:end], score[begin:end])
    return _renumber(numbers, config.min_frames)


def _associate(tracks: np.ndarray, boxes: np.ndarray, min_iou: float) -> list[tuple[int, int]]:
    """One-to-one (track, box) pairs maximising total buffered IoU, each pair at min_iou or more."""
    if not len(tracks) or not len(boxes):
        return []
    similarity = box_iou(_buffered(tracks), _buffered(boxes))
    similarity[similarity < min_iou] = 0.0  # below the bar a pair gains nothing, so it never displaces one above
    rows, cols = linear_sum_assignment(similarity, maximize=True)
    return [(int(k), int(r)) for k, r in zip(rows, cols) if similarity[k, r] > 0]


def _buffered(boxes: np.ndarray) -> np.ndarray:
    size = boxes[:, 2:] - boxes[:, :2]
    return np.concatenate([boxes[:, :2] - BUFFER * size, boxes[:, 2:] + BUFFER * size], axis=1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) intersection over union of xyxy boxes."""
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _renumber(numbers: np.ndarray, min_frames: int) -> np.ndarray:
    """Drop tracks shorter than min_frames; number the rest 0, 1, 2, ... in order of creation."""
    kept, counts = np.unique(numbers[numbers != NO_TRACK], return_counts=True)
    kept = kept[counts >= min_frames]
    ids = np.full(len(numbers), NO_TRACK, dtype=np.int32)
    inside = np.isin(numbers, kept)
    ids[inside] = np.searchsorted(kept, numbers[inside])
    return ids

