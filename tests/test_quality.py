"""Readings you can trust: upright aligned crops, roll, yaw and pitch, size, sharpness and `usable`.

The pose arithmetic is checked on keypoints of a synthetic mean face; the rest on real frames of a shared
clip, turned, blurred or shrunk here, through the real decode+detect+crop stage (no Ray).
"""

from __future__ import annotations

import cv2
import numpy as np
import pyarrow as pa
import pytest

from pipeline import crop
from pipeline.config import CropConfig, DetectorConfig, QualityConfig, SamplingConfig
from pipeline.decode import probe, read_frames
from pipeline.detect import FaceDetector
from pipeline.finalize import usable
from pipeline.plan import plan_segments
from pipeline.schema import FACE
from pipeline.stages import DecodeDetectCrop
from tests.media import write_video


def mean_face(yaw_deg: float = 0.0, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> np.ndarray:
    """(1, 5, 2) pixel keypoints of crop's mean face (the template, nose tip NOSE_DEPTH in front), turned
    and seen head-on by a distant camera (y down, the nose tip towards the camera)."""
    t = crop.TEMPLATE - crop.TEMPLATE[:2].mean()
    depth = np.array([0, 0, crop.NOSE_DEPTH * abs(t[1] - t[0]) / 2, 0, 0])
    points = np.stack([t.real, t.imag, depth], axis=1)
    yaw, pitch = np.radians(yaw_deg), np.radians(pitch_deg)
    turn = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    tilt = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])  # nose up
    seen = points @ turn.T @ tilt.T
    flat = (seen[:, 0] + 1j * seen[:, 1]) * np.exp(1j * np.radians(roll_deg)) * 150 + (320 + 180j)
    return np.stack([flat.real, flat.imag], axis=1)[None]


@pytest.mark.parametrize("yaw, pitch, roll", [(0, 0, 0), (30, 0, 0), (-60, 0, 0), (0, 20, 0), (0, -25, 0),
                                              (0, 0, 90), (0, 0, -135), (40, 0, 25)])
def test_pose_of_a_turned_mean_face(yaw, pitch, roll):
    landmarks = mean_face(yaw, pitch, roll)
    found_yaw, found_pitch = crop.yaw_pitch_degrees(landmarks)
    assert found_yaw[0] == pytest.approx(yaw, abs=1.0)
    assert found_pitch[0] == pytest.approx(pitch, abs=1.0)
    assert (crop.roll_degrees(landmarks)[0] - roll + 180) % 360 - 180 == pytest.approx(0, abs=1.0)


def quality_rows(**values) -> pa.Table:
    base = {"face_px": 120.0, "yaw_deg": 0.0, "pitch_deg": 0.0, "sharpness": 0.45, "det_score": 0.8}
    return pa.Table.from_pylist([{**base, **values}])


def test_a_face_turned_away_too_small_blurred_or_doubtful_is_unusable():
    q = QualityConfig()
    assert usable(quality_rows(), q).tolist() == [True]
    turned_away = float(crop.yaw_pitch_degrees(mean_face(yaw_deg=70))[0][0])
    assert not usable(quality_rows(yaw_deg=turned_away), q)[0]
    assert usable(quality_rows(yaw_deg=float(crop.yaw_pitch_degrees(mean_face(yaw_deg=20))[0][0])), q)[0]
    for bad in ({"face_px": 30.0}, {"pitch_deg": -50.0}, {"sharpness": 0.1}, {"det_score": 0.55}):
        assert not usable(quality_rows(**bad), q)[0], bad


def turned(frame: np.ndarray, degrees: float) -> np.ndarray:
    """The frame turned clockwise on a canvas that holds all of it (even sides, for H.264)."""
    height, width = frame.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), -degrees, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    side_w, side_h = int(width * cos + height * sin) // 2 * 2, int(width * sin + height * cos) // 2 * 2
    matrix[:, 2] += (side_w - width) / 2, (side_h - height) / 2
    return cv2.warpAffine(frame, matrix, (side_w, side_h))


@pytest.fixture(scope="module")
def stage(shared):
    return DecodeDetectCrop(DetectorConfig(), str(shared / "models" / "scrfd_500m_bnkps.onnx"), CropConfig(),
                            crop_size=96)


@pytest.fixture(scope="module")
def frames(shared):
    return [f for _, f in read_frames(str(shared / "videos" / "single_face.mp4"), "decord", range(0, 72, 8))]


def faces_of(stage, path) -> list[dict]:
    segment = plan_segments("v", str(path), probe(str(path)), SamplingConfig(fps=None, every_n_frames=1,
                                                                                 segment_s=100.0))[0]
    rows = [row for row in stage.segment_rows(segment) if row["kind"] == FACE]
    assert [row["face_index"] for row in rows] == [0] * len(segment.frame_index)  # one face in every frame
    return rows


def pixels(row: dict) -> np.ndarray:
    return np.frombuffer(row["crop"], np.uint8).reshape(96, 96, 3).astype(np.float32)


@pytest.mark.parametrize("degrees", [90, 180, 25, -25])
def test_a_turned_copy_gives_its_roll_and_the_upright_crops(shared, stage, frames, tmp_path, degrees):
    upright = faces_of(stage, write_video(tmp_path / "upright.mp4", frames, fps=5))
    copy = faces_of(stage, write_video(tmp_path / "turned.mp4", (turned(f, degrees) for f in frames), fps=5))
    for mine, theirs in zip(copy, upright):
        assert (mine["roll_deg"] - theirs["roll_deg"] - degrees + 180) % 360 - 180 == pytest.approx(0, abs=4)
        assert mine["yaw_deg"] == pytest.approx(theirs["yaw_deg"], abs=10)  # rough, as documented
        assert mine["pitch_deg"] == pytest.approx(theirs["pitch_deg"], abs=12)
        difference = np.abs(pixels(mine) - pixels(theirs)).mean()
        assert difference < 12, difference  # of 255: resampling and encoding, not a turned face
    # the square crop of the turned copy shows the face turned: far from the upright crop
    if abs(degrees) >= 90:
        square = DecodeDetectCrop(DetectorConfig(), str(shared / "models" / "scrfd_500m_bnkps.onnx"),
                                  CropConfig(align=False), crop_size=96)
        turned_square = faces_of(square, tmp_path / "turned.mp4")
        assert np.abs(pixels(turned_square[0]) - pixels(upright[0])).mean() > 30


def test_blur_lowers_sharpness_until_the_face_is_unusable(stage, frames, tmp_path):
    sharpness = []
    for sigma in (0, 2, 6):
        blurred = [cv2.GaussianBlur(f, (0, 0), sigma) if sigma else f for f in frames]
        rows = faces_of(stage, write_video(tmp_path / f"blur{sigma}.mp4", blurred, fps=5))
        sharpness.append(np.median([r["sharpness"] for r in rows]))
        if sigma == 0:
            assert usable(pa.Table.from_pylist(rows), QualityConfig()).all()
    assert sharpness[0] > sharpness[1] > sharpness[2]
    assert sharpness[0] >= 0.3 and sharpness[2] < QualityConfig().min_sharpness
    assert not usable(pa.Table.from_pylist(rows), QualityConfig()).any()  # the strongest blur


def test_a_face_shrunk_below_the_minimum_is_unusable(stage, frames, tmp_path):
    small = []
    for f in frames:  # an eighth of the size, in the middle of a black frame of the old size
        canvas = np.zeros_like(f)
        canvas[158:203, 280:360] = cv2.resize(f, (80, 45), interpolation=cv2.INTER_AREA)
        small.append(canvas)
    rows = faces_of(stage, write_video(tmp_path / "small.mp4", small, fps=5))
    assert all(r["face_px"] < QualityConfig().min_face_px for r in rows)
    assert not usable(pa.Table.from_pylist(rows), QualityConfig()).any()


@pytest.fixture(scope="module")
def sideways(shared, frames, test_config, tmp_path_factory):
    """RESULTS of one real run over an upright copy of a shared clip and a copy stored turned 90 degrees
    clockwise without rotation metadata, and the folder of the two copies."""
    from pipeline.runner import Runner

    videos = tmp_path_factory.mktemp("sideways")
    write_video(videos / "upright.mp4", frames, fps=5)
    write_video(videos / "turned.mp4", (np.ascontiguousarray(np.rot90(f, -1)) for f in frames), fps=5)
    out = tmp_path_factory.mktemp("results")
    assert Runner(videos, out, test_config, show_progress=False).run().counts["ok"] == 2
    return out, videos


def upright_roll(detector: FaceDetector, image_rgb: np.ndarray) -> float:
    """The roll of the one face in the image (padded: SCRFD misses a face that fills its whole input)."""
    side = max(image_rgb.shape[:2]) // 2
    found = detector.detect(cv2.copyMakeBorder(image_rgb, side, side, side, side, cv2.BORDER_CONSTANT))
    assert len(found) == 1
    return float(crop.roll_degrees(found.landmarks)[0])


def test_a_video_stored_sideways_is_read_reported_and_annotated_upright(shared, sideways, tmp_path):
    from pipeline.cli import main
    from pipeline.query import connect

    results, videos = sideways
    con = connect(results)
    roll = dict(con.sql("SELECT regexp_extract(path, '[^/]+$'), median(roll_deg) FROM faces JOIN videos "
                        "USING (video_id) GROUP BY ALL").fetchall())
    assert roll["turned.mp4"] - roll["upright.mp4"] == pytest.approx(90, abs=4)
    detector = FaceDetector(str(shared / "models" / "scrfd_500m_bnkps.onnx"))

    assert main(["report", str(results), "--out", str(tmp_path / "report")]) == 0
    [(turned_id,)] = con.sql("SELECT video_id FROM videos WHERE path LIKE '%turned.mp4'").fetchall()
    thumbs = sorted((tmp_path / "report" / "thumbs").glob(f"{turned_id}-*.jpg"))
    assert thumbs
    for thumb in thumbs:  # each key moment's face shown upright, as the classifier saw it
        assert abs(upright_roll(detector, cv2.cvtColor(cv2.imread(str(thumb)), cv2.COLOR_BGR2RGB))) < 15

    assert main(["annotate", str(results), "--video", str(videos / "turned.mp4"),
                 "--out", str(tmp_path / "annotated.mp4")]) == 0
    [first] = read_frames(str(tmp_path / "annotated.mp4"), "pyav", [0])
    assert first[1].shape == (360, 640, 3)  # written upright: the stored video is 360 wide, 640 high
    assert abs(upright_roll(detector, first[1])) < 15
