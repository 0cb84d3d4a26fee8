"""`fervid run` end to end: real Ray, decord, InsightFace, transformers and Parquet on ../shared."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipeline.runner import Runner
from tests.media import photo_video


def records(results: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in sorted((results / "videos").glob("*.parquet"))])


def table(results: Path, name: str) -> pa.Table:
    return ds.dataset(results / name, format="parquet", partitioning="hive").to_table()


def video_rows(results: Path, name: str, file_name: str) -> pa.Table:
    ok = records(results).to_pandas().query("status == 'ok'")
    video_id = ok[ok.path.str.endswith("/" + file_name)].video_id.iloc[-1]
    rows = table(results, name).to_pandas()
    return rows[rows.video_id == video_id]


def assert_same_rows(out: Path, local: Path, videos: int) -> None:
    """The rows of every ok video in out equal those of the local run, but run ids (scores to float32 noise)."""
    ids = [r["video_id"] for r in records(out).to_pylist() if r["status"] == "ok"]
    assert len(ids) == videos
    for name in ("faces", "frames"):
        got, expected = (_rows(table(folder, name), ids) for folder in (out, local))
        assert got.column_names == expected.column_names and len(got) == len(expected), name
        for column in got.column_names:
            if column.startswith("p_") or column == "confidence":
                assert np.allclose(got[column].to_numpy(), expected[column].to_numpy(), atol=1e-5), column
            else:
                assert got[column].equals(expected[column]), column


def _rows(rows: pa.Table, video_ids: list[str]) -> pa.Table:
    rows = rows.filter(pc.is_in(rows["video_id"].cast(pa.string()), pa.array(video_ids))).drop_columns(["run_id"])
    rows = rows.set_column(rows.schema.get_field_index("video_id"), "video_id", rows["video_id"].cast(pa.string()))
    keys = ["video_id", "frame_index"] + (["face_index"] if "face_index" in rows.column_names else [])
    return rows.sort_by([(k, "ascending") for k in keys])


def test_single_face_has_one_face_in_every_sampled_frame(analysed):
    frames = video_rows(analysed, "frames", "single_face.mp4")
    faces = video_rows(analysed, "faces", "single_face.mp4")
    assert len(frames) == 12 and (frames.face_count == 1).all()
    assert len(faces) == 12 and (faces.face_index == 0).all()
    assert sorted(faces.frame_index) == sorted(frames.frame_index)


def test_long_video_has_a_face_in_nearly_every_frame_and_cartoon_none(analysed):
    frames = video_rows(analysed, "frames", "WolfgangLanger_Pexels.mp4")
    assert (frames.face_count >= 1).mean() >= 0.95
    cartoon = video_rows(analysed, "frames", "no_face.mp4")
    assert len(cartoon) > 0 and (cartoon.face_count == 0).all()
    assert video_rows(analysed, "faces", "no_face.mp4").empty


def test_det_size_auto_finds_a_large_face_at_a_small_size_and_records_it(analysed):
    """Her face is a third of the frame high: most frames are detected at 256 px or less, a frame a second at
    640; the cartoon, without faces, is looked at at 640 once a second and at 160 in between."""
    frames = video_rows(analysed, "frames", "WolfgangLanger_Pexels.mp4")
    assert (frames.det_size <= 256).mean() > 0.6 and (frames.det_size == 640).any()
    cartoon = video_rows(analysed, "frames", "no_face.mp4").sort_values("pts_s")
    full = cartoon.pts_s[cartoon.det_size == 640]
    assert set(cartoon.det_size) == {160, 640} and full.diff().max() <= 1.25
    videos = records(analysed).to_pandas().set_index("path")
    chosen = {Path(path).name: size for path, size in videos.det_size.items()}
    assert chosen["WolfgangLanger_Pexels.mp4"] <= 256 and chosen["no_face.mp4"] == 160


def test_timestamps_increase_and_sampling_follows_fps(analysed, test_config):
    fps = test_config.sampling.fps
    for video in records(analysed).to_pylist():
        frames = video_rows(analysed, "frames", Path(video["path"]).name).sort_values("frame_index")
        pts = frames.pts_s.to_numpy()
        assert np.all(np.diff(pts) > 0), video["path"]
        assert abs(len(frames) - fps * video["duration_s"]) <= 1, video["path"]
        assert pts[-1] - pts[0] >= video["duration_s"] - 1 / fps - 1 / video["fps"] - 1e-6
        assert video["sampled_frames"] == len(frames)


def test_scores_are_probabilities_over_the_models_own_labels(analysed, shared):
    labels = json.loads((shared / "models" / "vit-fer-tiny" / "config.json").read_text())["id2label"]
    expected = [f"p_{labels[str(i)]}" for i in range(len(labels))]
    faces = table(analysed, "faces")
    assert [c for c in faces.column_names if c.startswith("p_")] == expected
    probs = np.column_stack([faces[c].to_numpy() for c in expected])
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert faces["emotion"].to_pylist() == [labels[str(i)] for i in probs.argmax(axis=1)]
    assert np.allclose(faces["confidence"].to_numpy(), probs.max(axis=1))
    assert all(len(lm) == 10 for lm in faces["landmarks"].to_pylist())
    boxes = faces.select(["x1", "y1", "x2", "y2"]).to_pandas()
    assert ((boxes.x2 > boxes.x1) & (boxes.y2 > boxes.y1)).all()


def test_run_record_and_video_records(analysed):
    runs = list((analysed / "runs").glob("*.json"))
    assert len(runs) == 1
    run = json.loads(runs[0].read_text())
    assert run["counts"] == {"ok": 5, "failed": 0, "skipped": 0}
    assert run["faces"] == len(table(analysed, "faces")) and run["sampled_frames"] == len(table(analysed, "frames"))
    assert run["versions"]["ray"] and run["config"]["sampling"]["fps"] == 5.0
    start = run["start_s"]  # where the start's seconds went
    assert 0 < start["ray_up"] <= start["probed"] <= start["first_result"] <= start["first_commit"] <= run["wall_s"]
    videos = records(analysed).to_pandas()
    assert set(videos.status) == {"ok"} and videos.video_id.is_unique
    assert (videos.run_id == run["run_id"]).all() and (videos.decoder == "decord").all()
    assert not list(analysed.rglob("*.tmp"))


def test_rerun_skips_everything_and_force_redoes_identically(results_copy, shared, test_config):
    def content(results):
        return {name: table(results, name).drop_columns(["run_id"]).sort_by(
            [("video_id", "ascending"), ("frame_index", "ascending")] +
            ([("face_index", "ascending")] if name == "faces" else [])) for name in ("faces", "frames")}

    before = content(results_copy)
    files_before = sorted(p.relative_to(results_copy) for p in results_copy.rglob("*.parquet"))
    again = Runner(shared / "videos", results_copy, test_config, show_progress=False).run()
    assert again.counts == {"ok": 0, "failed": 0, "skipped": 5}
    assert content(results_copy) == before
    assert sorted(p.relative_to(results_copy) for p in results_copy.rglob("*.parquet")
                  if p.parent.name != "videos") == [p for p in files_before if p.parts[0] != "videos"]

    forced = Runner(shared / "videos", results_copy, test_config, force=True, show_progress=False).run()
    assert forced.counts == {"ok": 5, "failed": 0, "skipped": 0}
    after = content(results_copy)
    assert after["frames"] == before["frames"]
    assert after["faces"].drop_columns([c for c in after["faces"].column_names if c.startswith("p_") or
                                        c == "confidence"]) == before["faces"].drop_columns(
        [c for c in before["faces"].column_names if c.startswith("p_") or c == "confidence"])
    for c in (c for c in before["faces"].column_names if c.startswith("p_")):
        assert np.allclose(after["faces"][c].to_numpy(), before["faces"][c].to_numpy(), atol=1e-5)
    # superseded files are gone: one faces file per video
    assert all(len(list(d.glob("*.parquet"))) == 1 for d in (results_copy / "faces").iterdir())


def test_renamed_video_is_not_new(results_copy, shared, test_config, tmp_path):
    folder = tmp_path / "renamed"
    folder.mkdir()
    shutil.copy(shared / "videos" / "single_face.mp4", folder / "interview 01 (copy).mp4")
    summary = Runner(folder, results_copy, test_config, show_progress=False).run()
    assert summary.counts == {"ok": 0, "failed": 0, "skipped": 1}


# Face counts labelled in ../shared/images/faces (README there), found exactly by SCRFD-500M at 0.5.
PHOTOS = {"dlib/2008_001322.jpg": 3, "dlib/2009_004587.jpg": 2, "dlib/2008_002506.jpg": 3,
          "pyfeat/multi_face.jpg": 5, "pyfeat/no-face.jpg": 0}


@pytest.fixture(scope="module")
def mixed_run(shared, test_config, tmp_path_factory):
    """One run over photo videos, a good video and broken files side by side."""
    folder = tmp_path_factory.mktemp("mixed")
    for name in PHOTOS:
        photo_video(shared / "images" / "faces" / name, folder / (Path(name).stem + ".mp4"), seconds=1.0)
    (folder / "nested").mkdir()
    shutil.copy(shared / "videos" / "single_face.mp4", folder / "nested" / "good.MP4")
    source = (shared / "videos" / "WolfgangLanger_Pexels.mp4").read_bytes()
    (folder / "cut_off.mp4").write_bytes(source[: len(source) // 2])
    garbled = bytearray((shared / "videos" / "single_face.mp4").read_bytes())
    garbled[:4096] = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    (folder / "garbled.mp4").write_bytes(bytes(garbled))
    (folder / "notes.mp4").write_text("these are meeting notes, not a video\n" * 20)
    (folder / "empty.mov").write_bytes(b"")
    out = tmp_path_factory.mktemp("mixed_results")
    summary = Runner(folder, out, test_config, show_progress=False).run()
    return out, summary


def test_photos_as_videos_give_the_labelled_face_counts(mixed_run):
    results, _ = mixed_run
    for name, count in PHOTOS.items():
        frames = video_rows(results, "frames", Path(name).stem + ".mp4")
        assert len(frames) == 5 and (frames.face_count == count).all(), name


def test_broken_files_fail_with_a_reason_and_the_rest_completes(mixed_run):
    results, summary = mixed_run
    videos = records(results).to_pandas()
    videos = videos.set_index(videos.path.map(lambda p: Path(p).name))
    broken = ["garbled.mp4", "notes.mp4", "empty.mov"]
    assert (videos.loc[broken].status == "failed").all()
    assert videos.loc[broken].error.str.len().min() > 10
    assert (videos.drop(index=broken).status == "ok").all()
    assert summary.counts == {"ok": len(PHOTOS) + 2, "failed": 3, "skipped": 0}
    assert len(video_rows(results, "faces", "good.MP4")) == 12
    failed_ids = set(videos.loc[broken].video_id)
    partitions = {p.name.split("=", 1)[1] for p in (results / "faces").iterdir()}
    assert not failed_ids & partitions  # nothing written for failed videos


def test_a_file_decord_cannot_open_falls_back_to_pyav(mixed_run):
    results, _ = mixed_run
    videos = records(results).to_pandas()
    cut = videos[videos.path.str.endswith("/cut_off.mp4")].iloc[0]
    assert (cut.status, cut.decoder) == ("ok", "pyav")  # the readable first half is analysed
    frames = video_rows(results, "frames", "cut_off.mp4")
    assert 40 <= len(frames) <= 50 and (frames.face_count >= 1).mean() > 0.9


def test_a_classifier_pool_of_its_own_gives_the_rows_of_scoring_inside_the_decode_detect_actors(
        analysed, shared, test_config, tmp_path):
    """Without a GPU the default scores inside the decode+detect actors (one pool does every stage);
    classifier.actors 1, the GPU layout, gives the same rows from two pools."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("WolfgangLanger_Pexels.mp4", "no_face.mp4"):
        shutil.copy(shared / "videos" / name, videos)
    two_pools = replace(test_config, classifier=replace(test_config.classifier, actors=1))
    summary = Runner(videos, tmp_path / "results", two_pools, show_progress=False).run()
    assert summary.counts == {"ok": 2, "failed": 0, "skipped": 0}
    assert_same_rows(tmp_path / "results", analysed, videos=2)
    run = json.loads(next((tmp_path / "results" / "runs").glob("*.json")).read_text())
    assert sum(run["nodes"]["classify_faces"].values()) == summary.faces > 0
