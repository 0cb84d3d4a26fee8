"""`fervid forget`: remove a person, or every face embedding, from a results folder.

Face embeddings are biometric data. A person's tracks lose their embeddings (the `tracks` rows), their faces
(the `faces` rows, and the counts in `frames`) and their place in the people table; superseded runs' files
of the videos concerned are deleted too. `--all` deletes every embedding and the people table, keeping the
emotions. Each file is rewritten whole, under the results lock; forgetting again finishes what a killed
call left. What is gone from the files is gone from the views and from every report written afterwards.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import query, storage
from pipeline.compact import delete_replaced, write_part
from pipeline.errors import FervidError
from pipeline.results import ResultsStore, parquet_bytes
from pipeline.schema import PEOPLE_SCHEMA


@dataclass
class Forgotten:
    faces: int = 0
    tracks: int = 0
    videos: int = 0


def forget_person(results_dir: str | Path, person_id: str) -> Forgotten:
    """Remove the person's faces, track embeddings and people rows everywhere in RESULTS."""
    store = ResultsStore(results_dir)
    with store.lock():
        people = store.read_people()
        mine = people.filter(pc.equal(people["person_id"], person_id))
        if not len(mine):
            known = sorted(set(people["person_id"].to_pylist()))
            raise FervidError(f"no person {person_id} in {store.root.uri} "
                              f"({'people: ' + ', '.join(known[:10]) if known else 'it has no people'})")
        runs = dict(zip(mine["video_id"].to_pylist(), mine["run_id"].to_pylist()))  # a video counts one run
        forgetting = _Forgetting(set(_keys(mine, "video_id", "run_id", "track_id").to_pylist()), runs)
        for table in FORGET_ORDER:
            for location in query.table_files(store.root, table):
                forgetting.rewrite(store, table, location)
            delete_replaced(store.root, table, keep_replaced_s=0)  # earlier copies of rewritten parts
        for video_id, run_id in runs.items():
            store.drop_superseded(video_id, run_id)
        store.write_people(people.filter(pc.invert(pc.equal(people["person_id"], person_id))))
    return Forgotten(forgetting.faces, len(mine), len(runs))


def forget_all(results_dir: str | Path) -> int:
    """Delete every track embedding and the people table; returns the embedding files deleted."""
    store = ResultsStore(results_dir)
    with store.lock():
        files = [loc for loc, _ in storage.list_files(store.root.child("tracks"))]
        for location in files:
            storage.delete(location, prune_folder=True)
        store.write_people(PEOPLE_SCHEMA.empty_table())
    return len(files)


FORGET_ORDER = ("faces", "tracks", "frames")  # frames' face counts follow the faces removed


class _Forgetting:
    """Rewrites the files that hold a person's rows: a video's own file in place, a part as a new part that
    replaces it. Rows of other runs of the person's videos go too (a re-run's old faces are unlinked to any
    person, but they are the same person's face)."""

    def __init__(self, tracks: set[str], runs: dict[str, str]) -> None:
        self.tracks, self.runs = tracks, runs  # "video/run/track" keys; each video's run that counts
        self.removed: Counter[str] = Counter()  # "video/run/frame" -> faces removed there
        self.faces = 0

    def rewrite(self, store: ResultsStore, table: str, location: storage.Location) -> None:
        if query.is_part(location):  # its video_id column alone says whether it holds any of the videos
            if not pc.any(pc.is_in(storage.read_table(location, columns=["video_id"])["video_id"],
                                   pa.array(list(self.runs)))).as_py():
                return
            rows = storage.read_table(location)
        else:
            video_id = location.path.split("/")[-2].removeprefix("video_id=")
            if self.runs.get(video_id) != location.name.removesuffix(".parquet"):
                return
            rows = storage.read_table(location)
            rows = rows.append_column("video_id", pa.array([video_id] * len(rows), pa.string()))
        kept = self._without_person(table, rows)
        if query.is_part(location):
            write_part(store.root, table, [location], kept)
        else:
            storage.write_bytes(location, parquet_bytes(kept.drop_columns(["video_id"])))

    def _without_person(self, table: str, rows: pa.Table) -> pa.Table:
        stale = pc.and_(pc.is_in(rows["video_id"], pa.array(list(self.runs))),
                        pc.invert(pc.is_in(_keys(rows, "video_id", "run_id"),
                                           pa.array([f"{v}/{r}" for v, r in self.runs.items()]))))
        if table == "frames":
            return self._fewer_faces(rows.filter(pc.invert(stale)))
        theirs = pc.fill_null(pc.is_in(_keys(rows, "video_id", "run_id", "track_id"), pa.array(list(self.tracks))),
                              False)
        if table == "faces":
            self.removed.update(_keys(rows.filter(theirs), "video_id", "run_id", "frame_index").to_pylist())
            self.faces += pc.sum(theirs.cast(pa.int64())).as_py() or 0
        return rows.filter(pc.invert(pc.or_(theirs, stale)))

    def _fewer_faces(self, frames: pa.Table) -> pa.Table:
        """frames with face_count lowered by the faces removed from each frame."""
        if not self.removed:
            return frames
        where = pc.index_in(_keys(frames, "video_id", "run_id", "frame_index"), pa.array(list(self.removed)))
        fewer = np.asarray(list(self.removed.values()))
        counts = frames["face_count"].to_numpy().copy()
        hit = ~pc.is_null(where).to_numpy(zero_copy_only=False)
        counts[hit] -= fewer[pc.drop_null(where).to_numpy()].astype(counts.dtype)
        return frames.set_column(frames.schema.get_field_index("face_count"), "face_count",
                                 pa.array(counts, frames.schema.field("face_count").type))


def _keys(table: pa.Table, *columns: str) -> pa.Array:
    """The columns' values joined with "/" row by row (null where one is null): a key for is_in."""
    return pc.binary_join_element_wise(*(pc.cast(table[c], pa.string()) for c in columns), "/")
