"""The SCRFD detector without Ray: the aspect-fitted input against insightface's square letterbox, and
det_size auto against full size."""

from __future__ import annotations

from pathlib import Path

import cv2
import decord
import numpy as np
import onnxruntime
import pytest

from pipeline.detect import (
    AUTO_SIZES,
    FULL_SIZE,
    MIN_INPUT_FACE_PX,
    RECHECK_S,
    Detections,
    FaceDetector,
    SizeChooser,
    any_size_model,
    auto_size,
    fitted_input,
)
from tests.media import read_photo

SCRFD = "models/scrfd_500m_bnkps.onnx"
# labelled face counts of real photos of other aspects than 16:9 (../shared/README.md)
PHOTOS = {"dlib/2008_001322.jpg": 3, "dlib/2008_007676.jpg": 7, "dlib/Tom_Cruise_avp_2014_4.jpg": 1,
          "pyfeat/multi_face.jpg": 5, "pyfeat/no-face.jpg": 0}


@pytest.mark.parametrize("width, height, expected", [
    (640, 360, (640, 384)), (360, 640, (384, 640)), (1920, 1080, (640, 384)), (500, 375, (640, 480)),
    (640, 640, (640, 640)), (4000, 100, (640, 32)),
])
def test_fitted_input_keeps_the_longer_side_and_pads_the_other_to_32(width, height, expected):
    assert fitted_input(width, height, 640) == expected


def test_the_any_size_copy_computes_what_the_fixed_graph_does(shared):
    """Same outputs at 640x640 (up to float rounding: ONNX Runtime optimises the two graphs a little
    differently), and it runs at other sizes, which the original refuses."""
    fixed = str(shared / SCRFD)
    copy = any_size_model(fixed)
    assert copy != Path(fixed) and any_size_model(fixed) == copy  # made once, then found by content
    blob = np.random.default_rng(0).standard_normal((1, 3, 640, 640), dtype=np.float32)
    original, rewritten = (onnxruntime.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                           for p in (fixed, copy))
    name = original.get_inputs()[0].name
    for a, b in zip(original.run(None, {name: blob}), rewritten.run(None, {name: blob})):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    scores_8 = rewritten.run(None, {name: blob[:, :, :384]})[0]
    assert scores_8.shape == (1, 2 * (384 // 8) * (640 // 8), 1)  # two anchors per stride-8 cell
    with pytest.raises(Exception):
        original.run(None, {name: blob[:, :, :384]})


def test_aspect_fit_finds_the_faces_the_square_input_finds(shared):
    """On a real 16:9 video and on photos of other aspects: the same faces, boxes within a few pixels."""
    fitted, square = FaceDetector(str(shared / SCRFD)), FaceDetector(str(shared / SCRFD), aspect_fit=False)
    assert fitted.input_size(640, 360) == (640, 384) and square.input_size(640, 360) == (640, 640)
    reader = decord.VideoReader(str(shared / "videos" / "WolfgangLanger_Pexels.mp4"))
    frames = list(reader.get_batch(list(range(0, len(reader), 24))).asnumpy())
    offsets = []
    for frame in frames:
        a, b = fitted.detect(frame), square.detect(frame)
        assert len(a) == len(b) == 1
        offsets.append(np.abs(a.xyxy - b.xyxy).max())
        assert np.abs(a.landmarks - b.landmarks).max() < 8
    assert np.median(offsets) < 2 and max(offsets) < 8
    for name, count in PHOTOS.items():
        photo = read_photo(shared / "images" / "faces" / name)
        assert len(fitted.detect(photo)) == len(square.detect(photo)) == count, name


def boxes(*sides: float) -> Detections:
    """Square faces of the given sides in a frame."""
    xyxy = np.array([[10, 10, 10 + side, 10 + side] for side in sides], np.float32).reshape(-1, 4)
    return Detections(xyxy, np.ones(len(sides), np.float32), np.zeros((len(sides), 5, 2), np.float32))


@pytest.mark.parametrize("sides, width, expected", [
    ((120,), 640, 384),  # 120 px of 640: 72 px at 384, 60 at 320
    ((120, 300), 640, 384),  # the smallest face decides
    ((200,), 640, 256), ((260,), 640, 160),  # 160: the smallest size auto takes
    ((40,), 640, FULL_SIZE), ((100,), 640, 480), ((100,), 1920, FULL_SIZE),  # small faces keep 640
    ((), 640, AUTO_SIZES[0]),  # no face needs more
])
def test_auto_size_keeps_the_smallest_face_at_min_input_face_px(sides, width, expected):
    size = auto_size(boxes(*sides), width, width * 9 // 16)
    assert size == expected
    if sides and size < FULL_SIZE:
        assert min(sides) * size / width >= MIN_INPUT_FACE_PX


@pytest.fixture(scope="module")
def clip(shared) -> tuple[list[np.ndarray], list[float]]:
    """WolfgangLanger_Pexels.mp4 at 5 frames per second: one woman, her face a third of the frame high."""
    reader = decord.VideoReader(str(shared / "videos" / "WolfgangLanger_Pexels.mp4"))
    indices = list(range(0, len(reader), 5))
    pts = reader.get_frame_timestamp(indices)[:, 0].tolist()
    return list(reader.get_batch(indices).asnumpy()), pts


def test_auto_finds_the_faces_full_size_finds_at_a_fraction_of_the_pixels(shared, clip):
    frames, pts = clip
    detector = FaceDetector(str(shared / SCRFD))
    chooser = SizeChooser(detector)
    sizes = []
    for frame, pts_s in zip(frames, pts):
        found, size = chooser.detect(frame, pts_s)
        full = detector.detect(frame)
        assert len(found) == len(full) == 1
        assert np.abs(found.xyxy - full.xyxy).max() < 0.1 * (full.xyxy[0, 2] - full.xyxy[0, 0])
        sizes.append(size)
    assert sizes[0] == FULL_SIZE  # a segment starts at full size
    full_frames = [p for p, size in zip(pts, sizes) if size == FULL_SIZE]
    assert max(np.diff(full_frames)) <= RECHECK_S + 0.25  # checked at full size at least every RECHECK_S
    assert sum(size < FULL_SIZE for size in sizes) > len(sizes) / 2 and min(sizes) <= 256


def test_auto_keeps_small_faces_at_full_size(shared, clip):
    """The same woman a quarter as large on a 1080p frame: every frame at 640, so none of her is lost."""
    frames, pts = clip
    detector = FaceDetector(str(shared / SCRFD))
    chooser = SizeChooser(detector)
    for frame, pts_s in zip(frames[:20], pts):
        canvas = np.full((1080, 1920, 3), 90, np.uint8)
        small = cv2.resize(frame, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
        canvas[600:600 + small.shape[0], 300:300 + small.shape[1]] = small
        found, size = chooser.detect(canvas, pts_s)
        assert size == FULL_SIZE and len(found) == len(detector.detect(canvas))


def test_auto_looks_at_full_size_at_once_when_a_face_is_lost(shared, clip):
    """A frame with fewer faces than the last full-size one is found again at full size; frames without faces
    then keep the size her face needed, and a frame without faces from the start takes the smallest."""
    frames, pts = clip
    detector = FaceDetector(str(shared / SCRFD))
    chooser = SizeChooser(detector)
    assert chooser.detect(frames[0], 0.0)[1] == FULL_SIZE and chooser.size < FULL_SIZE
    needed = chooser.size
    blank = np.full_like(frames[1], 90)
    found, size = chooser.detect(blank, 0.2)
    assert len(found) == 0 and size == FULL_SIZE and chooser.size == needed
    assert chooser.detect(blank, 0.4)[1] == needed
    empty = SizeChooser(detector)
    assert empty.detect(blank, 0.0)[1] == FULL_SIZE and empty.size == AUTO_SIZES[0]
    fixed = SizeChooser(FaceDetector(str(shared / SCRFD), det_size=320))
    assert {fixed.detect(frame, p)[1] for frame, p in zip(frames[:5], pts)} == {320}
