"""Face crops for the classifier, and what the five keypoints and the crop say about the face.

An aligned crop (crop.align, the default) is turned so the face is upright: a similarity (turn, scale,
shift) fitted to the keypoints maps them onto a mean face, so a face tilted by 20 degrees or lying on
its side gives the same crop as an upright one. The square crop is the box with a margin, as cut before
alignment existed. From the same fit come the face's roll and a rough yaw and pitch; the sharpness of
the aligned face says whether it is blurred.
"""

from __future__ import annotations

import cv2
import numpy as np

# An upright, frontal face's keypoints (eyes, nose tip, mouth corners) in a unit square: InsightFace's
# 112-pixel ArcFace template over 112. Points are complex numbers x + iy (y down) throughout.
TEMPLATE = np.array([38.2946 + 51.6963j, 73.5318 + 51.5014j, 56.0252 + 71.7366j, 41.5493 + 92.3655j,
                     70.7299 + 92.2041j]) / 112
# Where SCRFD's box sits on that template: its centre, and its longer side, in template units (medians
# over the 126 faces SCRFD-500M finds in ../shared's clips and photos; the middle half within 3%).
# An aligned crop is this square with the margin added, so upright faces are cut as the square crop cuts them.
BOX_CENTRE, BOX_SIDE = 0.50 + 0.58j, 1.01
# How far a mean face's nose tip stands in front of its eyes and mouth, in half eye distances: the one
# depth that yaw and pitch are read against (the 3D face models of head-pose tutorials give about 0.6).
NOSE_DEPTH = 0.6
SHARPNESS_PX = 64  # the aligned face (no margin) is measured at this size, whatever its size in the frame


def fit_to_template(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a, t) per face, complex, such that pixel ≈ a * template point + t (least squares over the five points).

    landmarks: (N, 5, 2) pixels. abs(a) is the face's size in pixels per template unit, angle(a) its roll.
    """
    points = np.asarray(landmarks, np.float64).reshape(-1, 5, 2)
    pixels = points[..., 0] + 1j * points[..., 1]
    z = TEMPLATE - TEMPLATE.mean()
    centred = pixels - pixels.mean(axis=1, keepdims=True)
    a = (np.conj(z) * centred).sum(axis=1) / (np.abs(z) ** 2).sum()
    return a, pixels.mean(axis=1) - a * TEMPLATE.mean()


def roll_degrees(landmarks: np.ndarray) -> np.ndarray:
    """The face's turn in the picture, in degrees: 0 upright, positive clockwise, ±180 upside down."""
    a, _ = fit_to_template(landmarks)
    return np.degrees(np.angle(a))


def yaw_pitch_degrees(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rough head yaw and pitch, in degrees, from where the nose tip sits between the eyes and the mouth.

    Seen upright, a nose tip NOSE_DEPTH in front of an otherwise flat mean face moves sideways by
    depth x tan(yaw) as the head turns, and up by depth x tan(pitch) as it tilts back. Positive yaw: the
    face turns towards the picture's right; positive pitch: it looks up. Rough (a mean face, no camera
    model): about 10-15 degrees; keypoints of faces turned past about 60 degrees are themselves guesses.
    """
    nose_across, nose_down = _nose_position(np.asarray(landmarks, np.float64).reshape(-1, 5, 2))
    yaw = np.arctan((nose_across - _FRONTAL_ACROSS) * 2 / NOSE_DEPTH)
    pitch = np.arctan((_FRONTAL_DOWN - nose_down) * 2 / (NOSE_DEPTH * _EYES_OVER_HEIGHT))
    return np.degrees(yaw), np.degrees(pitch)


def _nose_position(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """With the face turned upright: the nose tip's offset from the eye centre across, in eye distances, and
    down, as a share of the way from the eye line to the mouth line."""
    a, t = fit_to_template(landmarks)
    points = (landmarks[..., 0] + 1j * landmarks[..., 1] - t[:, None]) / a[:, None]
    eye = points[:, :2].mean(axis=1)
    nose = points[:, 2] - eye
    return nose.real / np.abs(points[:, 1] - points[:, 0]), nose.imag / (points[:, 3:].mean(axis=1) - eye).imag


_FRONTAL_ACROSS, _FRONTAL_DOWN = (float(v[0]) for v in _nose_position(
    np.stack([TEMPLATE.real, TEMPLATE.imag], axis=-1)[None]))
_EYES_OVER_HEIGHT = abs(TEMPLATE[1] - TEMPLATE[0]) / (TEMPLATE[3:].mean() - TEMPLATE[:2].mean()).imag


def aligned_crops(frame: np.ndarray, landmarks: np.ndarray, margin: float, size: int) -> np.ndarray:
    """(N, size, size, 3) uint8 crops, each face turned upright and centred as its box would be; parts
    outside the frame are black."""
    a, t = fit_to_template(landmarks)
    return _warp_all(frame, a, t, BOX_CENTRE, BOX_SIDE * (1.0 + margin), size)


def sharpness(frame: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(N,) how much fine detail the aligned face holds: the spread of its Laplacian over the spread of its
    grey levels, at SHARPNESS_PX, so lighting and the face's size in pixels cancel out. Blur lowers it."""
    a, t = fit_to_template(landmarks)
    faces = _warp_all(frame, a, t, TEMPLATE.mean(), 1.0, SHARPNESS_PX)
    values = np.zeros(len(faces), np.float32)
    for i, face in enumerate(faces):
        grey = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY).astype(np.float32)
        spread = grey.std()
        values[i] = cv2.Laplacian(grey, cv2.CV_32F).std() / spread if spread > 1.0 else 0.0
    return values


def warp_to_template(frame: np.ndarray, a: np.ndarray, t: np.ndarray, size: int) -> np.ndarray:
    """(N, size, size, 3) crops of exactly the template square: the alignment face-recognition models expect."""
    return _warp_all(frame, a, t, 0.5 + 0.5j, 1.0, size)


def upright_patches(frame: np.ndarray, landmarks: np.ndarray, margin: float, size: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Aligned crops with the geometry to map their pixels back: frame pixel = origin + step * (u + iv)."""
    a, t = fit_to_template(landmarks)
    step, origin = _geometry(a, t, BOX_CENTRE, BOX_SIDE * (1.0 + margin), size)
    return np.stack([_warp(frame, s, o, size) for s, o in zip(step, origin)]), step, origin


def _warp_all(frame: np.ndarray, a: np.ndarray, t: np.ndarray, centre: complex, side: float, size: int) -> np.ndarray:
    step, origin = _geometry(a, t, centre, side, size)
    crops = np.zeros((len(a), size, size, 3), dtype=np.uint8)
    for i in range(len(a)):
        crops[i] = _warp(frame, step[i], origin[i], size)
    return crops


def _geometry(a: np.ndarray, t: np.ndarray, centre: complex, side: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per face, where crop pixel (u, v) lies in the frame: origin + step * (u + iv). The crop shows the square
    of side `side` around `centre`, in template units; pixel centres sit at half-pixel offsets."""
    step = a * side / size
    return step, a * (centre - side * (0.5 + 0.5j)) + t + step * (0.5 + 0.5j) - (0.5 + 0.5j)


def _warp(frame: np.ndarray, step: complex, origin: complex, size: int) -> np.ndarray:
    """The size x size crop whose pixel (u, v) lies at frame pixel origin + step * (u + iv).

    Where a crop pixel spans two or more frame pixels, the region is first shrunk by that whole factor with
    area averaging (OpenCV's fast path), so a large face is not aliased into a small crop.
    """
    factor = int(abs(step))
    if factor >= 2:
        corners = origin + step * np.array([0, size, size * 1j, size * (1 + 1j)])
        height, width = frame.shape[:2]
        x0, y0 = max(int(np.floor(corners.real.min())), 0), max(int(np.floor(corners.imag.min())), 0)
        x1, y1 = min(int(np.ceil(corners.real.max())) + 1, width), min(int(np.ceil(corners.imag.max())) + 1, height)
        x1, y1 = x1 - (x1 - x0) % factor, y1 - (y1 - y0) % factor  # whole blocks of factor x factor pixels
        if x1 <= x0 or y1 <= y0:
            return np.zeros((size, size, 3), np.uint8)
        frame = cv2.resize(frame[y0:y1, x0:x1], ((x1 - x0) // factor, (y1 - y0) // factor),
                           interpolation=cv2.INTER_AREA)
        step, origin = step / factor, complex(origin.real - x0 + 0.5, origin.imag - y0 + 0.5) / factor - (0.5 + 0.5j)
    matrix = np.array([[step.real, -step.imag, origin.real], [step.imag, step.real, origin.imag]])
    return cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def square_crops(frame: np.ndarray, xyxy: np.ndarray, margin: float, size: int) -> np.ndarray:
    """(N, size, size, 3) uint8 crops of the box with margin, as the frame shows it; parts of the square
    outside the frame are black."""
    height, width = frame.shape[:2]
    crops = np.zeros((len(xyxy), size, size, 3), dtype=np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(xyxy):
        side = max(1, int(round(max(x2 - x1, y2 - y1) * (1.0 + margin))))
        left = int(round((x1 + x2 - side) / 2.0))
        top = int(round((y1 + y2 - side) / 2.0))
        inside = frame[max(top, 0):min(top + side, height), max(left, 0):min(left + side, width)]
        if inside.size == 0:
            continue
        square = cv2.copyMakeBorder(
            inside, max(0, -top), max(0, top + side - height), max(0, -left), max(0, left + side - width),
            cv2.BORDER_CONSTANT, value=(0, 0, 0))
        interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        crops[i] = cv2.resize(square, (size, size), interpolation=interpolation)
    return crops
