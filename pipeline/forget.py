"""`fervid forget`: remove a person, or every face embedding, from a results folder.

Face embeddings are biometric data. A person's tracks lose their embeddings (the `tracks` rows), their faces
(the `faces` rows, and the counts in `frames`) and their place in the people table; superseded runs' files
of the videos concerned are deleted too. `--all` deletes every embedding and the people table, keeping the
emotions. Each file is rewritten whole, under the results lock; forgetting again finishes what a killed
call left. What is gone from the files is gone from the views and from every report written afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import storage
from pipeline.errors import FervidError
from pipeline.results import ResultsStore
from pipeline.schema import PEOPLE_SCHEMA


@dataclass
class Forgotten:
    faces: int = 0
    tracks: int = 0
    videos: int = 0


def forget_person(results_dir: str | Path, person_id: str) -> Forgotten:
    """Remove the person's faces, track embeddings and people rows everywhere in RESULTS."""
    store = ResultsStore(results_dir)
    done = Forgotten()
    with store.lock():
        people = store.read_people()
        mine = people.filter(pc.equal(people["person_id"], person_id))
        if not len(mine):
            known = sorted(set(people["person_id"].to_pylist()))
            raise FervidError(f"no person {person_id} in {store.root.uri} "
                              f"({'people: ' + ', '.join(known[:10]) if known else 'it has no people'})")
        tracks: dict[tuple[str, str], list[int]] = {}
        for row in mine.to_pylist():
            tracks.setdefault((row["video_id"], row["run_id"]), []).append(row["track_id"])
        for (video_id, run_id), ids in sorted(tracks.items()):
            faces, removed = _without_tracks(store.read_video_table("faces", video_id, run_id), ids)
            frames = _fewer_faces(store.read_video_table("frames", video_id, run_id), removed)
            embeddings, _ = _without_tracks(store.read_video_table("tracks", video_id, run_id), ids)
            store.write_video(video_id, run_id, faces, frames, embeddings)
            store.drop_superseded(video_id, run_id)
            done.faces += len(removed)
            done.tracks += len(ids)
            done.videos += 1
        store.write_people(people.filter(pc.invert(pc.equal(people["person_id"], person_id))))
    return done


def forget_all(results_dir: str | Path) -> int:
    """Delete every track embedding and the people table; returns the embedding files deleted."""
    store = ResultsStore(results_dir)
    with store.lock():
        files = [loc for loc, _ in storage.list_files(store.root.child("tracks")) if loc.name.endswith(".parquet")]
        for location in files:
            storage.delete(location)
        store.write_people(PEOPLE_SCHEMA.empty_table())
    return len(files)


def _without_tracks(table: pa.Table | None, ids: list[int]) -> tuple[pa.Table | None, np.ndarray]:
    """The table without the rows of those tracks, and the frame indices of the rows removed (faces only)."""
    if table is None:
        return None, np.zeros(0, np.int64)
    gone = pc.fill_null(pc.is_in(table["track_id"], pa.array(ids, pa.int32())), False)
    frames = table.filter(gone)["frame_index"].to_numpy() if "frame_index" in table.column_names else np.zeros(0)
    return table.filter(pc.invert(gone)), frames


def _fewer_faces(frames: pa.Table, removed: np.ndarray) -> pa.Table:
    """frames with face_count lowered by the faces removed from each frame."""
    index = frames["frame_index"].to_numpy()
    counts = frames["face_count"].to_numpy().copy()
    for frame_index, n in zip(*np.unique(removed, return_counts=True)):
        counts[index == frame_index] -= n
    return frames.set_column(frames.schema.get_field_index("face_count"), "face_count",
                             pa.array(counts, frames.schema.field("face_count").type))
