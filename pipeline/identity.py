"""Who is who: tracks cut where the face becomes someone else, one embedding per track, and person ids
shared by every track of one person across the results folder.

Plain functions over numpy and Arrow: `split_tracks` and `track_table` run in finalize, once per video;
`assign_people` after every run, over every analysed video's track embeddings, in a fixed order (by
video_id and track_id), so the ids depend on the folder, not on the order its videos were processed in.
A person keeps their id when new videos arrive: earlier assignments are kept, new tracks join the most
similar person or start a new one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.schema import PEOPLE_SCHEMA, TRACKS_SCHEMA
from pipeline.track import NO_TRACK

CONFIRM = 2  # embedded faces in a row, all unlike the track so far, that cut it


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def split_tracks(track_id: np.ndarray, xyxy: np.ndarray, embeddings: list[np.ndarray | None],
                 split_similarity: float) -> np.ndarray:
    """Track ids with each track cut where its face becomes someone else (rows in frame order).

    Along a track, each embedded face is compared with the mean of the track's embedded faces so far;
    CONFIRM faces in a row below split_similarity start a new track. Between the last face like the track
    and the first unlike it, the cut goes where the box changes most (a cut in the video moves the box).
    The new tracks take ids after the largest one.
    """
    out = track_id.copy()
    next_id = int(track_id.max()) + 1 if len(track_id) and track_id.max() >= 0 else 0
    for track in sorted(set(track_id.tolist()) - {NO_TRACK}):
        rows = np.flatnonzero(track_id == track)
        cuts = _cuts(rows, xyxy, embeddings, split_similarity)
        for start, end in zip(cuts, [*cuts[1:], len(rows)]):
            out[rows[start:end]] = next_id
            next_id += 1
    return out


def _cuts(rows: np.ndarray, xyxy: np.ndarray, embeddings: list[np.ndarray | None], threshold: float) -> list[int]:
    """Positions along the track's rows where a new person starts."""
    cuts: list[int] = []
    total = None  # the sum of the current piece's embeddings
    last_like = 0  # position of its latest face like it
    unlike: list[int] = []
    for position, row in enumerate(rows):
        vector = embeddings[row]
        if vector is None:
            continue
        if total is None:
            total, last_like = vector.copy(), position
        elif float(vector @ unit(total)) >= threshold:
            total, last_like, unlike = total + vector, position, []
        else:
            unlike.append(position)
            if len(unlike) == CONFIRM:
                cuts.append(_box_jump(rows, xyxy, last_like, unlike[0]))
                total = np.sum([embeddings[rows[p]] for p in unlike], axis=0)
                last_like, unlike = unlike[-1], []
    return cuts


def _box_jump(rows: np.ndarray, xyxy: np.ndarray, after: int, until: int) -> int:
    """The position in (after, until] whose box differs most from the one before (least IoU)."""
    def iou(a: np.ndarray, b: np.ndarray) -> float:
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
        return w * h / union if union > 0 else 0.0

    return min(range(after + 1, until + 1), key=lambda p: (iou(xyxy[rows[p - 1]], xyxy[rows[p]]), p))


def track_table(track_id: np.ndarray, embeddings: list[np.ndarray | None], run_id: str) -> pa.Table:
    """One row per track with embedded faces: their mean embedding (unit length), how many, and how alike
    they are (mean similarity to that mean; a hand over the face or a wrong cut lowers it)."""
    rows = []
    for track in sorted(set(track_id.tolist()) - {NO_TRACK}):
        vectors = [embeddings[i] for i in np.flatnonzero(track_id == track) if embeddings[i] is not None]
        if not vectors:
            continue
        mean = unit(np.sum(vectors, axis=0))
        rows.append({"track_id": track, "embedding": mean.astype(np.float32).tolist(), "embedded_faces": len(vectors),
                     "consistency": float(np.mean(np.asarray(vectors) @ mean)), "run_id": run_id})
    return pa.Table.from_pylist(rows, schema=TRACKS_SCHEMA)


@dataclass(frozen=True)
class TrackEmbedding:
    video_id: str
    run_id: str
    track_id: int
    embedding: np.ndarray  # unit length


def track_embeddings(tracks: pa.Table, counted: set[tuple[str, str]]) -> list[TrackEmbedding]:
    """The rows of a tracks table (with video_id) whose (video_id, run_id) counts, each embedding a numpy view
    of the column: a folder of 100,000 videos has hundreds of thousands of tracks, too many for a Python float
    per number."""
    if not len(tracks):
        return []
    column = tracks["embedding"].combine_chunks()
    values, offsets = column.values.to_numpy(), column.offsets.to_numpy()
    keys = zip(tracks["video_id"].to_pylist(), tracks["run_id"].to_pylist(), tracks["track_id"].to_pylist())
    return [TrackEmbedding(video_id, run_id, track_id, values[offsets[i]:offsets[i + 1]])
            for i, (video_id, run_id, track_id) in enumerate(keys) if (video_id, run_id) in counted]


def assign_people(tracks: Iterable[TrackEmbedding], previous: dict[tuple[str, str, int], str],
                  same_person: float) -> dict[tuple[str, str, int], str]:
    """Person ids (p0001, p0002, ...) for every track: kept from `previous` where the track had one, else the
    most similar person (mean of their tracks' embeddings) if at least same_person alike, else a new person.
    New tracks are taken in (video_id, track_id) order; ids are never reused."""
    people: dict[str, np.ndarray] = {}
    assigned: dict[tuple[str, str, int], str] = {}
    new = []
    for track in sorted(tracks, key=lambda t: (t.video_id, t.track_id)):
        key = (track.video_id, track.run_id, track.track_id)
        if key in previous:
            assigned[key] = previous[key]
            people[previous[key]] = people.get(previous[key], 0) + track.embedding
        else:
            new.append((key, track.embedding))
    number = max((int(pid[1:]) for pid in previous.values()), default=0)
    for key, vector in new:
        similarity = {pid: float(vector @ unit(total)) for pid, total in people.items()}
        best = max(sorted(similarity), key=similarity.get, default=None)
        if best is None or similarity[best] < same_person:
            number += 1
            best = f"p{number:04d}"
        assigned[key] = best
        people[best] = people.get(best, 0) + vector
    return assigned


def name_people(assigned: dict[tuple[str, str, int], str], tracks: Iterable[TrackEmbedding],
                gallery: dict[str, np.ndarray], similarity: float) -> dict[str, str]:
    """person_id -> the gallery name most similar to the person's mean embedding, where at least `similarity`."""
    totals: dict[str, np.ndarray] = {}
    for track in tracks:
        pid = assigned[(track.video_id, track.run_id, track.track_id)]
        totals[pid] = totals.get(pid, 0) + track.embedding
    names = {}
    for pid, total in totals.items():
        scores = {name: float(unit(total) @ vector) for name, vector in gallery.items()}
        best = max(sorted(scores), key=scores.get, default=None)
        if best is not None and scores[best] >= similarity:
            names[pid] = best
    return names


def people_table(assigned: dict[tuple[str, str, int], str], names: dict[str, str]) -> pa.Table:
    rows = [{"video_id": v, "run_id": r, "track_id": t, "person_id": pid, "person_name": names.get(pid)}
            for (v, r, t), pid in sorted(assigned.items())]
    return pa.Table.from_pylist(rows, schema=PEOPLE_SCHEMA)
