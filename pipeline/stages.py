"""The batch stages, as plain callables over Arrow tables; the executor (pipeline.executor) runs them.

DecodeDetectCrop turns segments into small rows: one per face (with its crop as bytes, and what the
keypoints and crop say of its pose and sharpness) and one closing row per segment (its sampled frames,
face counts, any error). Full frames never leave it.
Classify scores the face rows and passes the segment rows through; DecodeDetectClassify runs both
in one actor where there is no GPU to feed. read_image_crops gives labelled images the same crop
column, so `fervid eval` scores them with the same Classify. Row layouts: pipeline.schema.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline import crop as crops
from pipeline.classify import EmotionClassifier, Placement
from pipeline.config import ClassifierConfig, CropConfig, DetectorConfig, IdentityConfig
from pipeline.decode import read_frames
from pipeline.detect import Detections, FaceDetector, SizeChooser
from pipeline.imagefolder import load_image
from pipeline.models import ClassifierSpec
from pipeline.schema import EXTRACT_SCHEMA, FACE, SEGMENT, Segment, score_columns
from pipeline.storage import local_file


def segment_error_row(segment: Segment, error: str) -> dict:
    return {"kind": SEGMENT, "video_id": segment.video_id, "segment_index": segment.segment_index,
            "face_rows": 0, "error": error}


class DecodeDetectCrop:
    """Decode a segment's sampled frames, find faces, cut crops at the classifier's input size.

    The first frame of a segment with faces settles which quarter turn makes them upright (a phone video
    stored sideways without rotation metadata); the segment's faces are then found in frames turned so.
    With identity on, faces large enough in frames at most identity.fps per second of video are embedded,
    the segment's crops in one batch.
    """

    def __init__(self, detector: DetectorConfig, detector_path: str, crop: CropConfig, crop_size: int,
                 identity: IdentityConfig | None = None, recognizer_path: str | None = None) -> None:
        self.detector = FaceDetector.from_config(detector, detector_path)
        self.margin = crop.margin
        self.align = crop.align
        self.crop_size = crop_size
        self.identity = identity if identity is not None and identity.enabled else None
        if self.identity is not None:
            from pipeline.embed import FaceEmbedder

            self.embedder = FaceEmbedder(recognizer_path, detector.threads, self.detector.device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows: list[dict] = []
        for segment in map(Segment.from_row, batch.to_pylist()):
            try:
                rows.extend(self.segment_rows(segment))
            except Exception as e:  # a bad file fails its video, never the batch
                rows.append(segment_error_row(segment, f"{type(e).__name__}: {str(e)[:300]}"))
        return pa.Table.from_pylist(rows, schema=EXTRACT_SCHEMA)

    def segment_rows(self, segment: Segment) -> list[dict]:
        pts_of = dict(zip(segment.frame_index, segment.pts_s))
        faces: list[dict] = []
        decoded: list[int] = []
        counts: list[int] = []
        small: list[int] = []
        det_sizes: list[int] = []
        path = local_file(segment.path, segment.video_id)  # a remote video: this node's cached copy
        frames = read_frames(path, segment.decoder, segment.frame_index, segment.rotation, segment.decode_size,
                             segment.pts_s)
        turn = None  # settled on the first frame with faces
        sizes = SizeChooser(self.detector)
        to_embed: list[tuple[dict, np.ndarray]] = []  # face rows and their aligned recognition crops
        embedded_at = None  # the identity.fps time slot of the last frame whose faces were embedded
        for index, frame in frames:
            found, size = sizes.detect(frame, pts_of[index], turn or 0)
            if turn is None and len(found):
                turn = self.detector.upright_turn(frame, found)
                if turn:
                    found, size = sizes.detect(frame, pts_of[index], turn)
            self.detector.upright_keypoints(frame, found)
            rows = self.face_rows(segment, index, pts_of[index], frame, found)
            faces.extend(rows)
            slot = int(pts_of[index] * self.identity.fps) if self.identity else None
            if self.identity and slot != embedded_at and len(found):
                embedded_at = slot
                big = [k for k, row in enumerate(rows) if row["face_px"] >= self.identity.min_face_px]
                to_embed += zip([rows[k] for k in big], self.embedder.crops(frame, found.landmarks[big]))
            decoded.append(index)
            counts.append(len(found))
            small.append(found.too_small)
            det_sizes.append(size)
        if to_embed:
            vectors = self.embedder.embed(np.stack([c for _, c in to_embed]))
            for (row, _), vector in zip(to_embed, vectors):
                row["embedding"] = vector.tolist()
        closing = {"kind": SEGMENT, "video_id": segment.video_id, "segment_index": segment.segment_index,
                   "frames_index": decoded, "frames_pts_s": [pts_of[i] for i in decoded],
                   "frames_face_count": counts, "frames_small_faces": small, "frames_det_size": det_sizes,
                   "face_rows": len(faces), "frames_lost": len(segment.frame_index) - len(decoded)}
        return faces + [closing]

    def face_rows(self, segment: Segment, index: int, pts_s: float, frame: np.ndarray, found: Detections) -> list[dict]:
        """One row per face: box and keypoints in source pixels, pose, size, sharpness and the crop."""
        if self.align:
            cut = crops.aligned_crops(frame, found.landmarks, self.margin, self.crop_size)
        else:
            cut = crops.square_crops(frame, found.xyxy, self.margin, self.crop_size)
        quality = {
            "roll_deg": crops.roll_degrees(found.landmarks),
            **dict(zip(("yaw_deg", "pitch_deg"), crops.yaw_pitch_degrees(found.landmarks))),
            "sharpness": crops.sharpness(frame, found.landmarks),
        }
        xyxy = found.xyxy * segment.source_scale  # boxes are kept in source pixels
        landmarks = found.landmarks * segment.source_scale
        rows = []
        for k in range(len(found)):
            x1, y1, x2, y2 = xyxy[k].tolist()
            rows.append({
                "kind": FACE, "video_id": segment.video_id, "segment_index": segment.segment_index,
                "frame_index": index, "pts_s": pts_s, "face_index": k, "x1": x1, "y1": y1, "x2": x2, "y2": y2,
                "det_score": float(found.confidence[k]), "landmarks": landmarks[k].reshape(-1).tolist(),
                **{name: float(values[k]) for name, values in quality.items()},
                "face_px": max(x2 - x1, y2 - y1), "crop": cut[k].tobytes(),
            })
        return rows


def read_image_crops(batch: pa.Table, side: int) -> pa.Table:
    """Add the `crop` column to rows naming image files; files that cannot be read are dropped."""
    keep, crops = [], []
    for i, path in enumerate(batch.column("path").to_pylist()):
        try:
            crops.append(load_image(path, side).tobytes())
        except OSError:  # PIL's error for unreadable and non-image files; the driver reports them
            continue
        keep.append(i)
    return batch.take(pa.array(keep, type=pa.int64())).append_column("crop", pa.array(crops, type=pa.binary()))


class Classify:
    """Score every face row's crop; add a `p_<label>` column per model label; drop the crops.

    Rows without a `kind` column (labelled images for `fervid eval`) are all scored.
    """

    def __init__(self, classifier: ClassifierConfig, spec: ClassifierSpec, placement: Placement) -> None:
        self.model = EmotionClassifier.from_config(classifier, spec, placement)
        self.columns = score_columns(self.model.labels)

    def __call__(self, batch: pa.Table) -> pa.Table:
        if "kind" in batch.column_names:
            is_face = batch.column("kind").to_numpy(zero_copy_only=False) == FACE
        else:
            is_face = np.ones(len(batch), dtype=bool)
        probs = np.full((len(batch), len(self.columns)), np.nan, dtype=np.float32)
        if is_face.any():
            side = self.model.input_size
            crops = batch.filter(pa.array(is_face)).column("crop").to_pylist()
            pixels = np.frombuffer(bytearray(b"".join(crops)), dtype=np.uint8).reshape(-1, side, side, 3)
            probs[is_face] = self.model.predict(pixels)
        out = batch.drop_columns(["crop"])
        for i, name in enumerate(self.columns):
            out = out.append_column(pa.field(name, pa.float32()), pa.array(probs[:, i], mask=~is_face))
        return out


class DecodeDetectClassify:
    """Both stages in one actor, for CPU-only machines: each core runs whole segments, so no split of
    cores between stages has to be guessed, and scored rows stream out from the first segment."""

    def __init__(self, detector: DetectorConfig, detector_path: str | Path, crop: CropConfig, crop_size: int,
                 classifier: ClassifierConfig, spec: ClassifierSpec, placement: Placement,
                 identity: IdentityConfig | None = None, recognizer_path: str | None = None) -> None:
        self.extract = DecodeDetectCrop(detector, str(detector_path), crop, crop_size, identity, recognizer_path)
        self.classify = Classify(classifier, spec, placement)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.classify(self.extract(batch))
