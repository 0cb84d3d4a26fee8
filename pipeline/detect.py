"""Face detection with InsightFace's SCRFD, one frame at a time, boxes in source pixels.

By default the detector input fits the frame's aspect (640x384 for a 16:9 frame, det_size on the
longer side) instead of letterboxing it into a det_size square, so the network does not spend 40%
of its work on padding. SCRFD graphs exported with a fixed input size get a size-agnostic copy.

With det_size auto (the default), a video's faces are found at the smallest input that keeps them
large enough for SCRFD (SizeChooser): SCRFD's cost follows its input pixels, and interview faces a
third of the frame high are found at 160-256 px as at 640.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from pipeline import crop
from pipeline.errors import FervidError

if TYPE_CHECKING:
    from pipeline.config import DetectorConfig

STRIDE = 32  # SCRFD's coarsest feature stride: input sides must be multiples of it
QUARTER_TURNS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}
TURN_CHECK_PX = 96  # side of the patch around a face that upright_turn scores (as reliable as 128 on ../shared)
REFINE_PX = 128  # side of the upright patch a tilted face's keypoints are found again in
TURN_MARGIN = 0.05  # how much a turned patch must outscore the upright one to be chosen
REFINE_ROLL_DEG = 20.0  # faces tilted more than this from a quarter turn get their keypoints found again upright
AUTO, FULL_SIZE = "auto", 640  # det_size auto: full size is 640, the size SCRFD is trained and exported at
AUTO_SIZES = (160, 192, 256, 320, 384, 480)  # what auto may choose below full size, smallest first
# The smallest face's shorter side, in detector-input pixels, that auto keeps. On ../shared's clips and photos
# every face of 24 px or more at a smaller input was found as at 640, but keypoints lie further from 640's as
# faces get smaller, and the crops cut by them with them: the small ViT gave the same top emotion as on 640's
# crops for 83% of faces at 32-48 px, 86% at 48-64, 93% at 64-96 and 93-95% above (93% between 608 and 640:
# the model's own sensitivity to a few pixels). At 32 px a face tilted 25 degrees read 5 degrees off.
MIN_INPUT_FACE_PX = 64
RECHECK_S = 1.0  # with auto, a frame at full size at least this often (seconds of video): new small faces are found


@dataclass
class Detections:
    """Faces found in one frame, as columns: one row per face, largest face first."""

    xyxy: np.ndarray  # (N, 4) float32, x1 y1 x2 y2 in frame pixels
    confidence: np.ndarray  # (N,) float32 detector score
    landmarks: np.ndarray  # (N, 5, 2) float32: eyes, nose, mouth corners
    too_small: int = 0  # faces found but left out for being under min_face_px: counted, never classified

    def __len__(self) -> int:
        return len(self.confidence)


def onnx_providers(device: str) -> list[str]:
    """ONNX Runtime's CUDA provider where asked for (an error if missing) or, for auto, where available; else CPU."""
    import onnxruntime

    cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    if device == "cuda" and not cuda:
        raise FervidError("detector.device is cuda but this onnxruntime has no CUDA provider: "
                          "install onnxruntime-gpu (pip install 'fervid[gpu]') in place of onnxruntime")
    if device != "cpu" and cuda:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def fitted_input(width: int, height: int, det_size: int) -> tuple[int, int]:
    """The (width, height) detector input for a frame: det_size on the longer side, the shorter
    side scaled alike and rounded up to a multiple of STRIDE (insightface pads the rest)."""
    scale = det_size / max(width, height)
    return tuple(max(STRIDE, math.ceil(side * scale / STRIDE) * STRIDE) for side in (width, height))


def any_size_model(model_path: str | Path) -> Path | None:
    """A copy of a fixed-input SCRFD graph that takes any input size; the path itself if it does
    already; None where the graph is not of the known shape (then only its own size is used).

    Exports at a fixed size (such as the 640x640 SCRFD-500M) carry their two nearest-neighbour
    upsamplings as constant output sizes; as constant 2x scales they compute the same values at
    640x640 and follow any other input size. The copy lies in the temp folder, named by content.
    """
    from pipeline.models import DERIVED_MODELS, derived_model_file, file_digest

    name = f"{file_digest(model_path)}-any-size.onnx"
    if (DERIVED_MODELS / name).is_file():  # made by an earlier actor on this node: no need to read the graph again
        return DERIVED_MODELS / name
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4 or not (dims[2].dim_value and dims[3].dim_value):
        return Path(model_path)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in (n for n in model.graph.node if n.op_type == "Resize"):
        sizes = constants.get(node.input[3]) if len(node.input) == 4 else None
        before = shapes.get(node.input[0])
        if sizes is None or not before or list(sizes[:2]) != before[:2] or any(
                s != 2 * b for s, b in zip(sizes[2:], before[2:])):
            return None
        scales = node.output[0] + "_scales"
        model.graph.initializer.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), scales))
        node.input[2] = scales
        del node.input[3]
    used = {name for node in model.graph.node for name in node.input}
    unused = [t for t in model.graph.initializer if t.name not in used]  # the old constant sizes
    for tensor in unused:
        model.graph.initializer.remove(tensor)
    height, width = dims[2:4]
    height.dim_param, width.dim_param = "height", "width"  # a dim_param replaces the fixed dim_value
    for output in model.graph.output:  # (1, anchors, k) or (anchors, k): all but k follow the input
        for axis, dim in enumerate(output.type.tensor_type.shape.dim[:-1]):
            dim.dim_param = f"{output.name}_{axis}"
    del model.graph.value_info[:]  # the fixed intermediate shapes no longer hold
    onnx.checker.check_model(model)
    return derived_model_file(name, lambda path: onnx.save(model, str(path)))


class FaceDetector:
    """SCRFD from an .onnx file; `detect` takes an RGB frame and returns its faces."""

    def __init__(self, model_path: str, det_size: int | str = AUTO, threshold: float = 0.5, min_face_px: int = 0,
                 max_faces: int = 0, threads: int = 1, device: str = "auto", aspect_fit: bool = True) -> None:
        import insightface

        from pipeline.models import onnx_session_options

        options = onnx_session_options(threads)
        providers = onnx_providers(device)
        any_size = any_size_model(model_path) if aspect_fit else None
        self.aspect_fit = any_size is not None
        # auto needs a graph that takes any input size; a fixed-size graph runs at its own size
        self.auto = det_size == AUTO and self.aspect_fit
        self.det_size: int = FULL_SIZE if det_size == AUTO else int(det_size)  # the full size
        self.model = insightface.model_zoo.get_model(str(any_size or model_path), providers=providers,
                                                     sess_options=options)
        # a negative ctx_id makes insightface fall back to the CPU provider
        on_gpu = providers[0] == "CUDAExecutionProvider"
        self.model.prepare(ctx_id=0 if on_gpu else -1, input_size=(self.det_size, self.det_size), det_thresh=threshold)
        self.providers: list[str] = self.model.session.get_providers()  # what ONNX Runtime actually uses
        self.device = "cuda" if on_gpu else "cpu"
        self.min_face_px = min_face_px
        self.max_faces = max_faces

    @classmethod
    def from_config(cls, d: DetectorConfig, model_path: str | Path) -> FaceDetector:
        """The detector of a config section, its model resolved by the driver (models.resolve_detector);
        device auto: CUDA exactly where the actor asks the executor for a GPU share."""
        device = d.device if d.device != "auto" else ("cuda" if d.num_gpus > 0 else "cpu")
        return cls(str(model_path), d.det_size, d.threshold, d.min_face_px, d.max_faces, d.threads, device,
                   d.aspect_fit)

    def input_size(self, width: int, height: int, det_size: int | None = None) -> tuple[int, int]:
        """The detector input a width x height frame is scaled and padded into (det_size: the full size)."""
        size = det_size or self.det_size
        return fitted_input(width, height, size) if self.aspect_fit else (size, size)

    def detect(self, frame_rgb: np.ndarray, turn: int = 0, det_size: int | None = None) -> Detections:
        """The frame's faces at det_size (None: the full size); with a turn (90, 180 or 270), found in the frame
        turned clockwise by it, and mapped back onto the frame, so keypoints of a face lying on its side are
        placed as on an upright one."""
        image = cv2.rotate(frame_rgb, QUARTER_TURNS[turn]) if turn else frame_rgb
        height, width = image.shape[:2]
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # what SCRFD expects; 50x faster than a numpy copy
        boxes, keypoints = self.model.detect(bgr, input_size=self.input_size(width, height, det_size))
        xyxy = boxes[:, :4].astype(np.float32)
        score = boxes[:, 4].astype(np.float32)
        landmarks = (keypoints if keypoints is not None else np.zeros((len(boxes), 5, 2))).astype(np.float32)
        if turn:  # back onto the frame: the turned image turned on by the rest of a full turn
            xyxy, landmarks = turn_boxes(xyxy, landmarks, 360 - turn, width, height)
        side = np.minimum(xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1])
        order = np.argsort(-(xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1]), kind="stable")
        big_enough = order[side[order] >= self.min_face_px]
        order = big_enough[:self.max_faces] if self.max_faces else big_enough
        return Detections(xyxy[order], score[order], landmarks[order], too_small=len(boxes) - len(big_enough))

    def upright_turn(self, frame_rgb: np.ndarray, found: Detections) -> int:
        """The quarter turn (0, 90, 180 or 270 degrees clockwise) that makes the largest face most upright.

        SCRFD finds faces lying on their side or upside down, but places their keypoints as if upright; its
        score is highest for an upright face. So a small patch around the face is scored at each quarter turn
        (four inputs of TURN_CHECK_PX: about 10 ms on one core) and the best turn wins, if it beats upright by
        TURN_MARGIN.
        """
        x1, y1, x2, y2 = (float(v) for v in found.xyxy[0])
        side = max(x2 - x1, y2 - y1) * 1.6
        scale = TURN_CHECK_PX / side
        shift = np.array([[scale, 0, TURN_CHECK_PX / 2 - (x1 + x2) / 2 * scale],
                          [0, scale, TURN_CHECK_PX / 2 - (y1 + y2) / 2 * scale]])
        patch = cv2.cvtColor(cv2.warpAffine(frame_rgb, shift, (TURN_CHECK_PX, TURN_CHECK_PX)), cv2.COLOR_RGB2BGR)
        scores = {}
        for turn in (0, *QUARTER_TURNS):
            boxes, _ = self.model.detect(cv2.rotate(patch, QUARTER_TURNS[turn]) if turn else patch,
                                         input_size=(TURN_CHECK_PX, TURN_CHECK_PX))
            scores[turn] = float(boxes[:, 4].max()) if len(boxes) else 0.0
        best = max(scores, key=scores.get)
        return best if scores[best] > scores[0] + TURN_MARGIN else 0

    def upright_keypoints(self, frame_rgb: np.ndarray, found: Detections) -> None:
        """Keypoints of faces tilted more than REFINE_ROLL_DEG from a quarter turn, found again on the face
        turned upright, where SCRFD places them best (its keypoints lag a tilt by a few degrees); in place.

        Upright faces, the common case, cost nothing.
        """
        roll = crop.roll_degrees(found.landmarks)
        tilted = np.flatnonzero(np.abs((roll + 45) % 90 - 45) > REFINE_ROLL_DEG)
        if not len(tilted):
            return
        patches, step, origin = crop.upright_patches(frame_rgb, found.landmarks[tilted], 0.6, REFINE_PX)
        for k, patch, s, o in zip(tilted, patches, step, origin):
            boxes, keypoints = self.model.detect(cv2.cvtColor(patch, cv2.COLOR_RGB2BGR), input_size=(REFINE_PX, REFINE_PX))
            if not len(boxes) or keypoints is None:
                continue
            centre = (boxes[:, :2] + boxes[:, 2:4]) / 2 - REFINE_PX / 2
            points = keypoints[np.argmin((centre ** 2).sum(axis=1))]  # the face in the middle of the patch
            mapped = o + s * (points[:, 0] + 1j * points[:, 1])
            found.landmarks[k] = np.stack([mapped.real, mapped.imag], axis=1)


def auto_size(found: Detections, width: int, height: int, full: int = FULL_SIZE) -> int:
    """The smallest detector size (longer side) at which every face found keeps MIN_INPUT_FACE_PX on its
    shorter side (the smallest of all where there is none); full where a face needs it."""
    sides = np.minimum(found.xyxy[:, 2] - found.xyxy[:, 0], found.xyxy[:, 3] - found.xyxy[:, 1])
    if not len(sides):
        return AUTO_SIZES[0]
    smallest = float(sides.min()) / max(width, height)  # as a share of the longer side
    return next((size for size in AUTO_SIZES if size < full and smallest * size >= MIN_INPUT_FACE_PX), full)


class SizeChooser:
    """The detector size for each frame of one segment, in order; det_size auto, else always the full size.

    With auto, a frame at full size (the segment's first, and one at least every RECHECK_S) sets the size for
    the frames after it: the smallest at which its smallest face keeps MIN_INPUT_FACE_PX. A frame without faces
    keeps the size the segment's last faces needed (the smallest of all where it has shown none), so a face
    that flickers at the edge of what SCRFD finds keeps full size. A frame at the chosen size is found again at
    full size, and sets the size anew, when it shows fewer faces than the last full-size frame or a face below
    MIN_INPUT_FACE_PX. So a face that turns small or is lost is looked for at full size at once, and a new
    small face appears at the next full-size frame, at most RECHECK_S later.
    """

    def __init__(self, detector: FaceDetector) -> None:
        self.detector = detector
        self.size = detector.det_size  # the size chosen for the next frames
        self.checked_s = -math.inf  # when the last full-size frame was
        self.expected = 0  # faces the last full-size frame showed
        self.needed = AUTO_SIZES[0]  # the size the last full-size frame with faces chose

    def detect(self, frame_rgb: np.ndarray, pts_s: float, turn: int = 0) -> tuple[Detections, int]:
        """The frame's faces, and the size they were found at."""
        d = self.detector
        height, width = frame_rgb.shape[:2]
        if d.auto and self.size < d.det_size and pts_s - self.checked_s < RECHECK_S:
            found = d.detect(frame_rgb, turn, self.size)
            kept = len(found) + found.too_small >= self.expected
            if kept and auto_size(found, width, height, d.det_size) <= self.size:
                return found, self.size
        found = d.detect(frame_rgb, turn)
        if d.auto:
            if len(found):
                self.needed = auto_size(found, width, height, d.det_size)
            self.size, self.checked_s, self.expected = self.needed, pts_s, len(found) + found.too_small
        return found, d.det_size


def turn_boxes(xyxy: np.ndarray, landmarks: np.ndarray, turn: int, width: int, height: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and keypoints of a width x height image, placed in that image turned clockwise by turn degrees
    (0, 90, 180 or 270), as cv2.rotate turns it."""
    def turned(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if turn == 90:
            return height - y, x
        if turn == 180:
            return width - x, height - y
        if turn == 270:
            return y, width - x
        return x, y

    points = landmarks.copy()
    points[..., 0], points[..., 1] = turned(landmarks[..., 0], landmarks[..., 1])
    ax, ay = turned(xyxy[:, 0], xyxy[:, 1])
    bx, by = turned(xyxy[:, 2], xyxy[:, 3])
    boxes = np.stack([np.minimum(ax, bx), np.minimum(ay, by), np.maximum(ax, bx), np.maximum(ay, by)], axis=1)
    return boxes.astype(np.float32), points
