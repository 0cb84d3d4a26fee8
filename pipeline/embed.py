"""Face embeddings with an ArcFace-style recognition model (InsightFace's model zoo loads it), for identity.

Each face is aligned by its five keypoints onto the 112-pixel ArcFace template (pipeline.crop), the crops
of a segment go through the model in one batch, and the embeddings come out L2-normalised, so the
similarity of two faces is their dot product (cosine similarity).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline import crop
from pipeline.detect import onnx_providers

ARCFACE_PX = 112  # the recognition models' input side


class FaceEmbedder:
    """An ArcFace-style .onnx; `embed` takes frames' faces as aligned crops and returns unit vectors."""

    def __init__(self, model_path: str | Path, threads: int = 1, device: str = "cpu") -> None:
        import insightface

        from pipeline.models import onnx_session_options

        self.model = insightface.model_zoo.get_model(str(model_path), providers=onnx_providers(device),
                                                     sess_options=onnx_session_options(threads))
        if getattr(self.model, "taskname", None) != "recognition":
            raise ValueError(f"{model_path} is not a face-recognition model (112x112 input)")

    def crops(self, frame_rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """(N, 112, 112, 3) RGB faces aligned as the recognition model was trained on them."""
        a, t = crop.fit_to_template(landmarks)
        return crop.warp_to_template(frame_rgb, a, t, ARCFACE_PX)

    def embed(self, crops_rgb: np.ndarray) -> np.ndarray:
        """(N, D) float32 unit vectors for (N, 112, 112, 3) aligned RGB crops, in one batch."""
        if not len(crops_rgb):
            return np.zeros((0, self.model.output_shape[1]), np.float32)
        features = self.model.get_feat([cv2.cvtColor(c, cv2.COLOR_RGB2BGR) for c in crops_rgb]).astype(np.float32)
        return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


PHOTO_ENDINGS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def gallery_embeddings(folder: str | Path, detector_path: str | Path, recognizer_path: str | Path
                       ) -> dict[str, np.ndarray]:
    """identity.gallery: one folder per person name holding photos of them -> a unit embedding per name (the
    mean over the largest face of each photo). Read before a run starts: any problem is one line."""
    from pipeline.detect import FaceDetector
    from pipeline.errors import FervidError

    root = Path(folder).expanduser()
    people = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not people:
        raise FervidError(f"identity.gallery {folder}: not a folder holding a folder of photos per person name")
    detector, embedder = FaceDetector(str(detector_path)), FaceEmbedder(recognizer_path)
    gallery = {}
    for person in people:
        crops = []
        for photo in sorted(p for p in person.iterdir() if p.suffix.lower() in PHOTO_ENDINGS):
            image = cv2.imread(str(photo))
            found = detector.detect(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)) if image is not None else None
            if found is None or not len(found):
                raise FervidError(f"identity.gallery: no face found in {photo}")
            crops.append(embedder.crops(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), found.landmarks[:1])[0])
        if not crops:
            raise FervidError(f"identity.gallery: {person} holds no photos ({', '.join(PHOTO_ENDINGS)})")
        total = embedder.embed(np.stack(crops)).sum(axis=0)
        gallery[person.name] = total / np.linalg.norm(total)
    return gallery
