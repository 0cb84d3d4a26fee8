"""Who felt what: tracks cut where the person changes, person ids across videos, gallery names, forgetting.

The splitting and assignment rules on synthetic embeddings first; then real runs over shared clips with the
shared MobileFaceNet (../shared/README.md: single_face.mp4, face_noface.mov and noface_face.mov show one man,
WolfgangLanger_Pexels.mp4 a woman).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.decode import read_frames
from pipeline.identity import TrackEmbedding, assign_people, name_people, split_tracks, track_embeddings, unit
from pipeline.query import connect
from pipeline.results import ResultsStore
from pipeline.runner import Runner
from tests.conftest import TEST_CONFIG
from tests.media import write_video

MAN, WOMAN = "single_face.mp4", "WolfgangLanger_Pexels.mp4"


def person(rng: np.random.Generator, centre: np.ndarray, n: int, spread: float = 0.3) -> list[np.ndarray]:
    """n unit embeddings scattered around one person's direction."""
    return [unit(centre + spread * rng.normal(size=centre.shape) / np.sqrt(len(centre))) for _ in range(n)]


def test_a_track_is_cut_where_the_person_changes_at_the_box_jump():
    rng = np.random.default_rng(0)
    a, b = unit(rng.normal(size=64)), unit(rng.normal(size=64))
    # ten frames of one box track: A in frames 0-5, B from 6 (the cut moves the box), frames 5-7 not embedded
    embeddings = [*person(rng, a, 5), None, None, None, *person(rng, b, 2)]
    xyxy = np.array([[100, 100, 200, 200]] * 6 + [[130, 110, 240, 230]] * 4, np.float32)
    ids = split_tracks(np.zeros(10, np.int64), xyxy, embeddings, 0.2)
    assert ids.tolist() == [0] * 6 + [1] * 4
    # one face unlike the track (a hand over the face) does not cut it
    lone = [*person(rng, a, 4), person(rng, b, 1)[0], *person(rng, a, 5)]
    assert split_tracks(np.zeros(10, np.int64), xyxy, lone, 0.2).tolist() == [0] * 10


def tracks_of(rng: np.random.Generator, people: dict[str, np.ndarray], plan: list[tuple[str, str]]) -> list:
    return [TrackEmbedding(video, "r1", k, person(rng, people[who], 1, 0.2)[0]) for k, (video, who) in enumerate(plan)]


def test_person_ids_follow_the_folder_not_the_order_and_stay_when_videos_arrive():
    rng = np.random.default_rng(1)
    people = {name: unit(rng.normal(size=64)) for name in "abc"}
    tracks = tracks_of(rng, people, [("v1", "a"), ("v1", "b"), ("v2", "a"), ("v3", "b"), ("v3", "a")])
    first = assign_people(tracks, {}, 0.5)
    assert first == assign_people(tracks[::-1], {}, 0.5) == assign_people(tracks[2:] + tracks[:2], {}, 0.5)
    by_person = {pid: sorted(key[2] for key in first if first[key] == pid) for pid in set(first.values())}
    assert sorted(by_person.values()) == [[0, 2, 4], [1, 3]]
    # earlier ids are kept, whatever they were; a new person takes the next free number
    kept = {key: ("p0007" if pid == first[("v1", "r1", 0)] else "p0002") for key, pid in first.items()}
    later = tracks + tracks_of(rng, people, [("v0", "a")] * 6 + [("v0", "c")])[5:]
    grown = assign_people(later, kept, 0.5)
    assert {key: grown[key] for key in kept} == kept
    assert grown[("v0", "r1", 5)] == "p0007" and grown[("v0", "r1", 6)] == "p0008"
    names = name_people(grown, later, {"Ann": people["a"], "Cy": people["c"]}, 0.5)
    assert names == {"p0007": "Ann", "p0008": "Cy"}


def people_by_clip(results: Path) -> dict[str, set[str]]:
    rows = connect(results).sql("SELECT DISTINCT regexp_extract(path, '[^/]+$') AS clip, person_id FROM faces "
                                "JOIN videos USING (video_id) WHERE person_id IS NOT NULL").fetchall()
    found: dict[str, set[str]] = {}
    for clip, pid in rows:
        found.setdefault(clip, set()).add(pid)
    return found


def test_the_man_of_three_clips_is_one_person_and_the_woman_another(analysed):
    found = people_by_clip(analysed)
    man = found[MAN] | found["face_noface.mov"] | found["noface_face.mov"]
    assert len(man) == 1 and len(found[WOMAN]) == 1 and man != found[WOMAN]
    people = connect(analysed).sql("SELECT person_id, videos, tracks FROM people ORDER BY person_id").fetchall()
    assert sorted((videos, tracks) for _, videos, tracks in people) == [(1, 1), (3, 3)]


def frames_of(shared: Path, clip: str, seconds: float, start: int = 0) -> list[np.ndarray]:
    """seconds of a shared clip at 10 frames/s (every 3rd frame of 30 fps) from frame `start`."""
    wanted = range(start, start + int(seconds * 30), 3)
    return [np.ascontiguousarray(f) for _, f in read_frames(str(shared / "videos" / clip), "decord", wanted)]


@pytest.fixture(scope="module")
def cut_clip(shared, tmp_path_factory) -> Path:
    """A folder with one clip: the man for 2.4 s, a cut to the woman for 4 s, a cut back to the man for 2.4 s."""
    folder = tmp_path_factory.mktemp("cuts")
    frames = frames_of(shared, MAN, 2.4) + frames_of(shared, WOMAN, 4.0, 240) + frames_of(shared, MAN, 2.4)
    write_video(folder / "cuts.mp4", frames, fps=10)
    return folder


def test_a_cut_to_someone_else_and_back_gives_three_tracks_and_two_people(cut_clip, test_config, tmp_path):
    out = tmp_path / "results"
    assert Runner(cut_clip, out, test_config, show_progress=False).run().counts["ok"] == 1
    tracks = connect(out).sql("SELECT track_id, person_id, first_s, last_s FROM tracks ORDER BY first_s").fetchall()
    assert len(tracks) == 3
    (_, man, _, end1), (_, woman, start2, end2), (_, again, start3, _) = tracks
    assert man == again != woman
    assert end1 < 2.4 <= start2 and end2 < 6.4 <= start3  # each cut where the video cuts (frames every 0.2 s)


def list_file(folder: Path, names: list[str], path: Path) -> Path:
    path.write_text("".join(f"{folder / name}\n" for name in names))
    return path


def assignments(out: Path) -> dict[tuple[str, int], str]:
    return {(r["video_id"], r["track_id"]): r["person_id"] for r in ResultsStore(out).read_people().to_pylist()}


def test_ids_do_not_depend_on_order_or_workers_and_stay_when_a_video_is_added(shared, cut_clip, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    for clip in (MAN, WOMAN, "noface_face.mov"):
        shutil.copy(shared / "videos" / clip, folder / clip)
    shutil.copy(cut_clip / "cuts.mp4", folder / "cuts.mp4")
    names = [WOMAN, "cuts.mp4", MAN]
    runs = {}
    for order, actors in ((names, 1), (names[::-1], 2)):
        out = tmp_path / f"results-{actors}"
        listed = list_file(folder, order, tmp_path / f"list-{actors}.txt")
        config = load_config(TEST_CONFIG, [f"detector.actors={actors}"])
        assert Runner(listed, out, config, show_progress=False).run().counts["ok"] == 3
        runs[actors] = assignments(out)
    assert runs[1] == runs[2] and len(set(runs[1].values())) == 2
    # a video added later: the earlier ids stay, and its man is the man
    later = Runner(folder, tmp_path / "results-1", load_config(TEST_CONFIG), show_progress=False).run()
    assert later.counts == {"ok": 1, "failed": 0, "skipped": 3}
    grown = assignments(tmp_path / "results-1")
    assert {key: grown[key] for key in runs[1]} == runs[1] and len(set(grown.values())) == 2


def test_a_gallery_names_the_people_it_knows_and_no_one_else(shared, tmp_path, capsys):
    gallery = tmp_path / "gallery"
    for name, clip, start in (("Mark", MAN, 30), ("Wendy", WOMAN, 300)):
        (gallery / name).mkdir(parents=True)
        for k, frame in enumerate(frames_of(shared, clip, 0.2, start)):
            cv2.imwrite(str(gallery / name / f"{k}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(shared / "videos" / MAN, folder / MAN)
    group = cv2.cvtColor(cv2.imread(str(shared / "images" / "faces" / "dlib" / "2007_007763.jpg")), cv2.COLOR_BGR2RGB)
    write_video(folder / "strangers.mp4", [group[: group.shape[0] // 2 * 2, : group.shape[1] // 2 * 2]] * 10, fps=5)
    out = tmp_path / "results"
    assert main(["run", str(folder), "--out", str(out), "--config", str(TEST_CONFIG), "--gallery", str(gallery),
                 "--quiet"]) == 0
    named = dict(connect(out).sql("SELECT person_id, person_name FROM people").fetchall())
    assert sorted(name for name in named.values() if name) == ["Mark"]  # Wendy is in no video
    assert sum(name is None for name in named.values()) >= 2  # strangers of the photo (its large, usable faces)
    # the gallery is checked before anything runs
    (gallery / "Nobody").mkdir()
    (gallery / "Nobody" / "blank.jpg").write_bytes(cv2.imencode(".jpg", np.zeros((64, 64, 3), np.uint8))[1])
    capsys.readouterr()
    assert main(["run", str(folder), "--out", str(tmp_path / "other"), "--config", str(TEST_CONFIG),
                 "--gallery", str(gallery)]) == 1
    assert "no face found in" in capsys.readouterr().err and not (tmp_path / "other").exists()


def test_identity_off_stores_no_embeddings_and_gives_the_same_faces(shared, analysed, tmp_path):
    out = tmp_path / "results"
    config = load_config(TEST_CONFIG, ["identity.enabled=false"])
    assert Runner(shared / "videos", out, config, show_progress=False).run().counts["ok"] == 5
    assert not list(out.glob("tracks/*/*.parquet")) and not list(out.glob("people/*"))
    for faces in analysed.glob("faces/*/*.parquet"):
        mine = next((out / "faces" / faces.parent.name).glob("*.parquet"))
        on, off = (pq.read_table(f) for f in (faces, mine))
        assert on.schema == off.schema
        noise = [c for c in on.column_names if c.startswith("p_")] + ["confidence", "run_id"]  # batches differ
        assert on.drop_columns(noise).equals(off.drop_columns(noise)), faces.parent.name
    assert connect(out).sql("SELECT count(*) FROM faces WHERE person_id IS NOT NULL").fetchall() == [(0,)]


@pytest.mark.parametrize("compacted", [False, True], ids=["per-video files", "compacted"])
def test_forget_leaves_no_trace_of_the_person(analysed, tmp_path, capsys, compacted):
    results = tmp_path / "results"
    shutil.copytree(analysed, results)
    if compacted:  # the person's rows sit in parts, among other people's
        assert main(["compact", str(results), "--keep-replaced", "0"]) == 0
    tracks_before = sum(len(pq.read_table(p)) for p in results.glob("tracks/**/*.parquet"))
    [(woman, faces)] = connect(results).sql(
        "SELECT person_id, count(*) FROM faces JOIN videos USING (video_id) WHERE path LIKE '%Wolfgang%' "
        "GROUP BY person_id").fetchall()
    others = connect(results).sql("SELECT count(*) FROM faces WHERE person_id <> $p", params={"p": woman}).fetchall()
    assert main(["forget", str(results), "--person", woman]) == 0
    assert f"forgot {woman}: {faces} faces and 1 track embedding in 1 video" in capsys.readouterr().out
    con = connect(results)
    assert con.sql("SELECT count(*) FROM faces WHERE person_id = $p", params={"p": woman}).fetchall() == [(0,)]
    assert con.sql("SELECT count(*) FROM faces WHERE person_id <> $p", params={"p": woman}).fetchall() == others
    assert woman not in {r[0] for r in con.sql("SELECT person_id FROM people").fetchall()}
    assert con.sql("SELECT sum(face_count) FROM frames JOIN videos USING (video_id) WHERE path LIKE '%Wolfgang%'"
                   ).fetchall() == [(0,)]
    for table in ("faces", "tracks", "people"):  # nothing in the files either
        for path in results.glob(f"{table}/**/*.parquet"):
            rows = pq.read_table(path)
            assert "person_id" not in rows.column_names or woman not in rows["person_id"].to_pylist()
    tracks = [len(pq.read_table(p)) for p in results.glob("tracks/**/*.parquet")]
    assert sum(tracks) == tracks_before - 1
    if not compacted:
        assert set(tracks) == {0, 1}  # the woman's video keeps an empty embeddings table; the man's keep theirs
    assert main(["report", str(results), "--out", str(tmp_path / "report")]) == 0
    assert woman not in "".join(p.read_text() for p in (tmp_path / "report").glob("*.html"))
    assert main(["forget", str(results), "--person", woman]) == 1  # gone: a second call says so
    assert main(["forget", str(results), "--all"]) == 0
    assert not list(results.glob("tracks/**/*.parquet"))
    assert connect(results).sql("SELECT count(*) FROM people").fetchall() == [(0,)]


def test_track_embeddings_keep_the_counted_runs_and_every_number():
    vectors = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    table = pa.table({"video_id": ["a", "a", "b"], "run_id": ["r1", "r2", "r1"], "track_id": pa.array([0, 0, 4], pa.int32()),
                      "embedding": pa.array(list(vectors), pa.list_(pa.float32()))})
    tracks = track_embeddings(pa.concat_tables([table.slice(0, 1), table.slice(1)]), {("a", "r2"), ("b", "r1")})
    assert [(t.video_id, t.run_id, t.track_id) for t in tracks] == [("a", "r2", 0), ("b", "r1", 4)]
    assert np.array_equal(np.stack([t.embedding for t in tracks]), vectors[1:])
    assert track_embeddings(table.slice(0, 0), {("a", "r2")}) == []
