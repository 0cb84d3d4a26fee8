"""Face crops for the classifier: a square around each box, with margin, padded at frame edges."""

from __future__ import annotations

import cv2
import numpy as np


def square_crops(frame: np.ndarray, xyxy: np.ndarray, margin: float, size: int) -> np.ndarray:
    """(N, size, size, 3) uint8 crops; parts of the square outside the frame are black."""
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
