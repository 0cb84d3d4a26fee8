"""Tracking: the tracker on synthetic boxes, and track ids in real runs on ../shared videos and photos."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.config import QualityConfig, TrackingConfig, load_config
from pipeline.errors import FervidError
from pipeline.finalize import faces_table
from pipeline.results import ResultsStore
from pipeline.runner import Runner
from pipeline.schema import faces_schema
from pipeline.track import NO_TRACK, track_faces
from tests.conftest import TEST_CONFIG
from tests.media import read_photo, write_video
from tests.test_run import video_rows

FPS = 5.0  # the sampling rate the synthetic tests imitate


def boxes_over_time(centres: np.ndarray, side: float = 40.0, scores: np.ndarray | None = None):
    """Face rows from (frames, faces, 2) centres: frame_index, pts_s, xyxy, score, in frame order."""
    frames, faces = centres.shape[:2]
    frame_index = np.repeat(np.arange(frames), faces)
    c = centres.reshape(-1, 2)
    xyxy = np.concatenate([c - side / 2, c + side / 2], axis=1)
    score = np.full(len(c), 0.8) if scores is None else np.asarray(scores, dtype=float).reshape(-1)
    return frame_index, frame_index / FPS, xyxy, score


def track(frame_index, pts_s, xyxy, score, **settings) -> np.ndarray:
    return track_faces(frame_index, pts_s, xyxy, score, TrackingConfig(**settings))


def test_fast_neighbours_keep_their_own_tracks():
    # two faces 40 px wide, 50 px apart, moving 30 px (three quarters of a face) per sampled frame,
    # first one way and then, after slowing down, back
    steps = np.concatenate([np.full(8, 30.0), [15, 0, -15], np.full(8, -30.0)])
    x = 100 + np.cumsum(steps)
    centres = np.stack([np.stack([x, np.full_like(x, 200)], 1), np.stack([x + 50, np.full_like(x, 200)], 1)], 1)
    ids = track(*boxes_over_time(centres))
    assert ids.reshape(-1, 2).tolist() == [[0, 1]] * len(x)


def test_weak_detections_extend_tracks_but_never_start_one():
    centre = np.array([[[100.0, 100.0]]] * 6)
    scores = [0.9, 0.55, 0.55, 0.9, 0.55, 0.55]
    assert track(*boxes_over_time(centre, scores=scores)).tolist() == [0] * 6
    # only weak detections, or one strong one alone: a detector's false positives, not a face to follow
    assert track(*boxes_over_time(centre, scores=[0.55] * 6)).tolist() == [NO_TRACK] * 6
    frame_index, pts, xyxy, _ = boxes_over_time(np.array([[[100.0, 100.0], [400.0, 100.0]]] * 3))
    score = np.array([0.9, 0.55, 0.9, 0.55, 0.9, 0.9])  # the second face is strong once only, at the end
    assert track(frame_index, pts, xyxy, score).tolist() == [0, NO_TRACK] * 3


def test_a_gap_longer_than_max_gap_s_starts_a_new_track():
    frame_index = np.array([0, 1, 2, 6, 7, 15, 16])  # seen again after 0.8 s, then after 1.6 s
    xyxy = np.tile([100.0, 100.0, 140.0, 140.0], (7, 1))
    ids = track_faces(frame_index, frame_index / FPS, xyxy, np.full(7, 0.9), TrackingConfig(max_gap_s=1.0))
    assert ids.tolist() == [0, 0, 0, 0, 0, 1, 1]


def test_ids_follow_first_appearance_and_skip_dropped_tracks():
    frame_index = np.array([0, 0, 1, 1, 2, 2, 3])
    x = np.array([500.0, 100, 500, 100, 300, 100, 300])  # face at 500 is seen twice, at 300 twice, at 100 three times
    xyxy = np.stack([x, np.full(7, 100.0), x + 40, np.full(7, 140.0)], 1)
    score = np.array([0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    assert track(frame_index, frame_index / FPS, xyxy, score).tolist() == [0, 1, 0, 1, 2, 1, 2]
    assert track(frame_index, frame_index / FPS, xyxy, score, min_frames=3).tolist() == [
        NO_TRACK, 0, NO_TRACK, 0, NO_TRACK, 0, NO_TRACK]


def test_faces_table_with_tracking_off_has_null_tracks_and_the_same_columns():
    frame_index, pts, xyxy, score = boxes_over_time(np.array([[[100.0, 100.0]]] * 3))
    rows = pa.table({
        "frame_index": pa.array(frame_index, pa.int32()), "pts_s": pts, "face_index": pa.array([0] * 3, pa.int16()),
        **{name: pa.array(xyxy[:, i], pa.float32()) for i, name in enumerate(("x1", "y1", "x2", "y2"))},
        "det_score": pa.array(score, pa.float32()), "landmarks": pa.array([[0.0] * 10] * 3, pa.list_(pa.float32(), 10)),
        **{name: pa.array([0.0] * 3, pa.float32()) for name in ("roll_deg", "yaw_deg", "pitch_deg", "sharpness")},
        "face_px": pa.array([40.0] * 3, pa.float32()),
        "p_happy": pa.array([0.2, 0.4, 0.9], pa.float32()), "p_sad": pa.array([0.8, 0.6, 0.1], pa.float32()),
    })
    on = faces_table(rows, ["happy", "sad"], "run", TrackingConfig(), QualityConfig())
    assert on["track_id"].to_pylist() == [0, 0, 0]
    assert on["emotion"].to_pylist() == ["sad", "sad", "happy"]
    assert np.allclose(on["confidence"].to_numpy(), [0.8, 0.6, 0.9])
    off = faces_table(rows, ["happy", "sad"], "run", TrackingConfig(enabled=False), QualityConfig())
    assert off.schema == on.schema == faces_schema(["happy", "sad"])
    assert off["track_id"].null_count == 3 and off.drop_columns(["track_id"]).equals(on.drop_columns(["track_id"]))


@pytest.mark.parametrize("setting, message", [
    ("tracking.high_score=1.5", "tracking.high_score must be between 0 and 1"),
    ("tracking.match_iou=0", "tracking.match_iou must be between 0 and 1"),
    ("tracking.max_gap_s=-1", "must not be negative"),
    ("tracking.min_frames=0", "tracking.min_frames must be at least 1"),
    ("tracking.enabled=3", "tracking.enabled' must be bool"),
])
def test_bad_tracking_settings_are_clear_errors(setting, message):
    with pytest.raises(FervidError, match=message):
        load_config(None, [setting])


def test_tracking_settings_change_the_fingerprint(shared, test_config):
    base = test_config.fingerprint()
    assert load_config(TEST_CONFIG, ["tracking.enabled=false"]).tracking.enabled is False
    for change in ({"enabled": False}, {"min_frames": 3}, {"match_iou": 0.5}, {"max_gap_s": 0.5}):
        assert replace(test_config, tracking=replace(test_config.tracking, **change)).fingerprint() != base


# Real runs ---------------------------------------------------------------------------------------

PHOTO = "dlib/2007_007763.jpg"  # 7 labelled faces, about 40 px wide
PAN_FPS, PAN_SECONDS = 25, 5.0
PAN_FRAME = (384, 640)  # height, width
PAN_FROM, PAN_TO = np.array([-70.0, -60.0]), np.array([190.0, 80.0])  # the photo's top-left corner in the frame


def pan_offset(frame_index: np.ndarray) -> np.ndarray:
    """Where the photo's corner is in each frame: a pan that speeds up, then slows down (up to 16 px per 0.2 s)."""
    progress = (1 - np.cos(np.pi * np.asarray(frame_index) / (PAN_FPS * PAN_SECONDS - 1))) / 2
    return PAN_FROM + np.outer(progress, PAN_TO - PAN_FROM)


def write_pan(photo_path: Path, path: Path) -> Path:
    """A video of a group photo panning across a grey frame; every face stays fully in view."""
    photo = read_photo(photo_path)
    height, width = PAN_FRAME

    def frames():
        for ox, oy in np.round(pan_offset(np.arange(int(PAN_FPS * PAN_SECONDS)))).astype(int):
            frame = np.full((height, width, 3), 128, np.uint8)
            x0, y0, x1, y1 = max(ox, 0), max(oy, 0), min(ox + photo.shape[1], width), min(oy + photo.shape[0], height)
            frame[y0:y1, x0:x1] = photo[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
            yield frame

    return write_video(path, frames(), PAN_FPS)


@pytest.fixture(scope="module")
def pan_runs(shared, tmp_path_factory) -> tuple[Path, Path]:
    """The pan video analysed twice: one detector actor and 2 s segments, then two actors and 1.4 s segments.
    Its faces are 37-57 px: faces from 32 px are embedded."""
    folder = tmp_path_factory.mktemp("pan")
    write_pan(shared / "images" / "faces" / PHOTO, folder / "pan.mp4")
    outs = []
    small = ["identity.min_face_px=32"]
    for settings in (["detector.actors=1", *small], ["detector.actors=2", "sampling.segment_s=1.4", *small]):
        out = tmp_path_factory.mktemp("pan_results")
        summary = Runner(folder, out, load_config(TEST_CONFIG, settings), show_progress=False).run()
        assert summary.counts["ok"] == 1
        outs.append(out)
    return outs[0], outs[1]


def test_panning_group_photo_gives_one_whole_track_per_face(pan_runs, test_config):
    faces = video_rows(pan_runs[0], "faces", "pan.mp4")
    frames = video_rows(pan_runs[0], "frames", "pan.mp4")
    assert frames.pts_s.max() > 2 * test_config.sampling.segment_s  # the clip spans three segments
    assert (frames.face_count == 7).all()
    assert faces.track_id.notna().all() and sorted(faces.track_id.unique()) == list(range(7))
    for _, rows in faces.groupby("track_id"):  # each track: one face in every sampled frame
        assert sorted(rows.frame_index) == sorted(frames.frame_index)
        # and always the same face: its box centre, taken back into photo coordinates, stays put
        centre = np.stack([(rows.x1 + rows.x2) / 2, (rows.y1 + rows.y2) / 2], 1) - pan_offset(rows.frame_index)
        assert np.abs(centre - np.median(centre, axis=0)).max() < 8


def test_track_ids_do_not_depend_on_workers_or_segments(pan_runs):
    first, second = (video_rows(out, "faces", "pan.mp4").sort_values(["frame_index", "face_index"])
                     for out in pan_runs)
    assert len(first) == len(second) > 0
    assert first.track_id.tolist() == second.track_id.tolist()
    scores = [c for c in first.columns if c.startswith("p_")]
    assert np.allclose(first[scores].to_numpy(), second[scores].to_numpy(), atol=1e-5)


def test_seven_faces_panning_are_seven_people_whatever_the_workers_and_segments(pan_runs):
    people = [{(r["track_id"], r["person_id"]) for r in ResultsStore(out).read_people().to_pylist()} for out in pan_runs]
    assert people[0] == people[1]
    assert len(people[0]) == 7 and len({person for _, person in people[0]}) == 7


def test_single_face_is_one_track(analysed):
    faces = video_rows(analysed, "faces", "single_face.mp4")
    assert len(faces) == 12 and (faces.track_id == 0).all()


@pytest.mark.parametrize("name, face_first", [("face_noface.mov", True), ("noface_face.mov", False)])
def test_spliced_clips_track_the_face_part_only(analysed, name, face_first):
    faces = video_rows(analysed, "faces", name)
    frames = video_rows(analysed, "frames", name).sort_values("pts_s")
    with_face = frames[frames.face_count > 0]
    cartoon = frames[frames.face_count == 0]
    assert len(with_face) >= 10 and len(cartoon) >= 10
    # the two parts do not interleave: the face is present up to the cut (or from it), then never
    assert (with_face.pts_s.max() < cartoon.pts_s.min()) if face_first else (cartoon.pts_s.max() < with_face.pts_s.min())
    assert (faces.track_id == 0).all() and len(faces) == len(with_face)
    assert faces.pts_s.min() == with_face.pts_s.min() and faces.pts_s.max() == with_face.pts_s.max()
