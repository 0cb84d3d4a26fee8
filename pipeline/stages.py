"""The batch stages, as plain callables over Arrow tables (the wiring module runs them on Ray).

DecodeDetectCrop turns segments into small rows: one per face (with its crop as bytes) and one
closing row per segment (its sampled frames, face counts, any error). Full frames never leave it.
Classify scores the face rows and passes the segment rows through; DecodeDetectClassify runs both
in one actor where there is no GPU to feed. read_image_crops gives labelled images the same crop
column, so `fervid eval` scores them with the same Classify.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.crop import square_crops
from pipeline.decode import read_frames
from pipeline.imagefolder import load_image
from pipeline.storage import local_file

FACE, SEGMENT = "face", "segment"

EXTRACT_SCHEMA = pa.schema([
    ("kind", pa.string()),
    ("video_id", pa.string()),
    ("segment_index", pa.int32()),
    ("frame_index", pa.int32()),
    ("pts_s", pa.float64()),
    ("face_index", pa.int16()),
    ("x1", pa.float32()), ("y1", pa.float32()), ("x2", pa.float32()), ("y2", pa.float32()),
    ("det_score", pa.float32()),
    ("landmarks", pa.list_(pa.float32(), 10)),
    ("crop", pa.binary()),
    # segment rows only: the sampled frames and what was found in them
    ("frames_index", pa.list_(pa.int32())),
    ("frames_pts_s", pa.list_(pa.float64())),
    ("frames_face_count", pa.list_(pa.int16())),
    ("frames_small_faces", pa.list_(pa.int16())),  # faces under detector.min_face_px, not classified
    ("face_rows", pa.int32()),
    ("frames_lost", pa.int32()),  # sampled frames that could not be decoded
    ("error", pa.string()),
])


def segment_error_row(segment: dict, error: str) -> dict:
    return {"kind": SEGMENT, "video_id": segment["video_id"], "segment_index": segment["segment_index"],
            "face_rows": 0, "error": error}


class DecodeDetectCrop:
    """Decode a segment's sampled frames, find faces, cut crops at the classifier's input size."""

    def __init__(self, detector: dict, margin: float, crop_size: int) -> None:
        from pipeline.detect import FaceDetector

        self.detector = FaceDetector(**detector)
        self.margin = margin
        self.crop_size = crop_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows: list[dict] = []
        for segment in batch.to_pylist():
            try:
                rows.extend(self.segment_rows(segment))
            except Exception as e:  # a bad file fails its video, never the batch
                rows.append(segment_error_row(segment, f"{type(e).__name__}: {str(e)[:300]}"))
        return pa.Table.from_pylist(rows, schema=EXTRACT_SCHEMA)

    def segment_rows(self, segment: dict) -> list[dict]:
        video_id, seg = segment["video_id"], segment["segment_index"]
        pts_of = dict(zip(segment["frame_index"], segment["pts_s"]))
        faces: list[dict] = []
        decoded: list[int] = []
        counts: list[int] = []
        small: list[int] = []
        path = local_file(segment["path"], video_id)  # a remote video: this node's cached copy
        frames = read_frames(path, segment["decoder"], segment["frame_index"], segment["rotation"],
                             segment["decode_size"], segment["pts_s"])
        scale = segment["source_scale"]  # boxes are kept in source pixels
        for index, frame in frames:
            found = self.detector.detect(frame)
            crops = square_crops(frame, found.xyxy, self.margin, self.crop_size)
            found.xyxy *= scale
            found.landmarks *= scale
            decoded.append(index)
            counts.append(len(found))
            small.append(found.too_small)
            for k in range(len(found)):
                x1, y1, x2, y2 = found.xyxy[k].tolist()
                faces.append({
                    "kind": FACE, "video_id": video_id, "segment_index": seg, "frame_index": index,
                    "pts_s": pts_of[index], "face_index": k, "x1": x1, "y1": y1, "x2": x2, "y2": y2,
                    "det_score": float(found.confidence[k]), "landmarks": found.landmarks[k].reshape(-1).tolist(),
                    "crop": crops[k].tobytes(),
                })
        closing = {"kind": SEGMENT, "video_id": video_id, "segment_index": seg,
                   "frames_index": decoded, "frames_pts_s": [pts_of[i] for i in decoded],
                   "frames_face_count": counts, "frames_small_faces": small, "face_rows": len(faces),
                   "frames_lost": len(segment["frame_index"]) - len(decoded)}
        return faces + [closing]


def score_columns(labels: list[str]) -> list[str]:
    """The `p_<label>` column names, in the model's label order."""
    return [f"p_{label}" for label in labels]


def scored_schema(labels: list[str]) -> pa.Schema:
    """The rows Classify emits: the extract rows without crops, plus the score columns."""
    schema = EXTRACT_SCHEMA.remove(EXTRACT_SCHEMA.get_field_index("crop"))
    for name in score_columns(labels):
        schema = schema.append(pa.field(name, pa.float32()))
    return schema


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

    def __init__(self, classifier: dict) -> None:
        from pipeline.classify import EmotionClassifier

        self.model = EmotionClassifier(**classifier)
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

    def __init__(self, detector: dict, margin: float, crop_size: int, classifier: dict) -> None:
        self.extract = DecodeDetectCrop(detector, margin, crop_size)
        self.classify = Classify(classifier)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.classify(self.extract(batch))
