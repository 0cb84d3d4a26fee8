"""Face detection with InsightFace's SCRFD, one frame at a time, boxes in source pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import FervidError


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


class FaceDetector:
    """SCRFD from an .onnx file; `detect` takes an RGB frame and returns its faces."""

    def __init__(self, model_path: str, det_size: int = 640, threshold: float = 0.5, min_face_px: int = 0,
                 max_faces: int = 0, threads: int = 1, device: str = "auto") -> None:
        import insightface
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:  # 0 keeps ONNX Runtime's default: all cores
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers = onnx_providers(device)
        self.model = insightface.model_zoo.get_model(str(model_path), providers=providers, sess_options=options)
        # a negative ctx_id makes insightface fall back to the CPU provider
        on_gpu = providers[0] == "CUDAExecutionProvider"
        self.model.prepare(ctx_id=0 if on_gpu else -1, input_size=(det_size, det_size), det_thresh=threshold)
        self.providers: list[str] = self.model.session.get_providers()  # what ONNX Runtime actually uses
        self.det_size = det_size
        self.min_face_px = min_face_px
        self.max_faces = max_faces

    def detect(self, frame_rgb: np.ndarray) -> Detections:
        boxes, keypoints = self.model.detect(np.ascontiguousarray(frame_rgb[..., ::-1]),  # SCRFD expects BGR
                                             input_size=(self.det_size, self.det_size))
        xyxy = boxes[:, :4].astype(np.float32)
        score = boxes[:, 4].astype(np.float32)
        landmarks = (keypoints if keypoints is not None else np.zeros((len(boxes), 5, 2))).astype(np.float32)
        side = np.minimum(xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1])
        order = np.argsort(-(xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1]), kind="stable")
        big_enough = order[side[order] >= self.min_face_px]
        order = big_enough[:self.max_faces] if self.max_faces else big_enough
        return Detections(xyxy[order], score[order], landmarks[order], too_small=len(boxes) - len(big_enough))
