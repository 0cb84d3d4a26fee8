"""The SCRFD detector without Ray: the aspect-fitted input against insightface's square letterbox."""

from __future__ import annotations

from pathlib import Path

import decord
import numpy as np
import onnxruntime
import pytest

from pipeline.detect import FaceDetector, any_size_model, fitted_input
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
