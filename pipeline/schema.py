"""The data contract: every table's columns and types, the segment work unit, and the score column names.

Every other module takes its column names and schemas from here, so a new column or table is added
in one place. Rows flow like this:

    Segment (driver) -> extract rows (decode+detect+crop: FACE rows with a crop, one SEGMENT row closing
    each segment) -> scored rows (the crop replaced by one p_<label> column per model label)
    -> per video: the `faces` and `frames` tables; per run: `videos` records.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import pyarrow as pa

FACE, SEGMENT = "face", "segment"  # the `kind` of an extract or scored row
EXTRACT_NODE, CLASSIFY_NODE = "extract_node", "classify_node"  # scored-row columns: the node each stage ran on
SCORE_PREFIX = "p_"


@dataclass(frozen=True)
class Segment:
    """One work unit: about sampling.segment_s seconds of one video's sampled frames."""

    video_id: str
    path: str  # a local path or a URI; workers read a node-local copy of a remote video
    decoder: str  # "decord" or "pyav", as the probe found
    rotation: int  # display rotation in degrees, applied while decoding
    decode_size: tuple[int, int] | None  # (width, height) to decode at; None: as stored
    source_scale: float  # source pixels per decoded pixel, so boxes are kept in source pixels
    segment_index: int
    frame_index: tuple[int, ...]  # the sampled frames, in order
    pts_s: tuple[float, ...]  # their decoder timestamps

    def to_row(self) -> dict:
        """As a Ray Data item (plain lists)."""
        row = asdict(self)
        row.update(frame_index=list(self.frame_index), pts_s=list(self.pts_s),
                   decode_size=list(self.decode_size) if self.decode_size else None)
        return row

    @classmethod
    def from_row(cls, row: dict) -> Segment:
        size = row["decode_size"]
        return cls(**{**row, "decode_size": tuple(size) if size else None, "frame_index": tuple(row["frame_index"]),
                      "pts_s": tuple(row["pts_s"])})


def score_column(label: str) -> str:
    """The column holding a label's probability: `p_<label>`."""
    return SCORE_PREFIX + label


def score_columns(labels: list[str] | tuple[str, ...]) -> list[str]:
    """The `p_<label>` column names, in the model's label order."""
    return [score_column(label) for label in labels]


def labels_of(columns: list[str]) -> list[str]:
    """The labels whose `p_<label>` columns a faces table holds, in column (= model) order.

    Results written before 2026-12 also hold `p_<label>_smooth` companions; they are not labels.
    """
    scores = [name.removeprefix(SCORE_PREFIX) for name in columns if name.startswith(SCORE_PREFIX)]
    return [s for s in scores if not (s.endswith("_smooth") and s.removesuffix("_smooth") in scores)]


def unnamable_labels(labels: list[str]) -> list[str]:
    """Labels that cannot name SQL columns (anything but letters, digits and _)."""
    return [label for label in labels if not re.fullmatch(r"\w+", label)]


FACE_BOX = ["x1", "y1", "x2", "y2"]
# What the keypoints and the aligned crop say about each face (pipeline.crop), decided into `usable` at finalize
FACE_QUALITY = [
    ("roll_deg", pa.float32()),  # the face's turn in the displayed frame: 0 upright, positive clockwise
    ("yaw_deg", pa.float32()),  # rough head turn from the keypoints: positive towards the picture's right
    ("pitch_deg", pa.float32()),  # rough head tilt: positive looking up
    ("face_px", pa.float32()),  # the face box's longer side, source pixels
    ("sharpness", pa.float32()),  # detail in the aligned face (Laplacian spread over grey spread); blur lowers it
]

EXTRACT_SCHEMA = pa.schema([
    ("kind", pa.string()),
    ("video_id", pa.string()),
    ("segment_index", pa.int32()),
    ("frame_index", pa.int32()),
    ("pts_s", pa.float64()),
    ("face_index", pa.int16()),
    *[(name, pa.float32()) for name in FACE_BOX],
    ("det_score", pa.float32()),
    ("landmarks", pa.list_(pa.float32(), 10)),
    *FACE_QUALITY,
    ("embedding", pa.list_(pa.float32())),  # unit vector from identity.model; null where not embedded
    ("crop", pa.binary()),
    # SEGMENT rows only: the sampled frames and what was found in them
    ("frames_index", pa.list_(pa.int32())),
    ("frames_pts_s", pa.list_(pa.float64())),
    ("frames_face_count", pa.list_(pa.int16())),
    ("frames_small_faces", pa.list_(pa.int16())),  # faces under detector.min_face_px, not classified
    ("frames_det_size", pa.list_(pa.int16())),  # the detector input's longer side each frame's faces came from
    ("face_rows", pa.int32()),  # FACE rows this segment sent
    ("frames_lost", pa.int32()),  # sampled frames that could not be decoded
    ("error", pa.string()),
])


def scored_schema(labels: list[str]) -> pa.Schema:
    """The rows the classifier emits: the extract rows without crops, plus the score columns."""
    schema = EXTRACT_SCHEMA.remove(EXTRACT_SCHEMA.get_field_index("crop"))
    for name in score_columns(labels):
        schema = schema.append(pa.field(name, pa.float32()))
    return schema


def faces_schema(labels: list[str]) -> pa.Schema:
    """`faces/video_id=<id>/<run>.parquet`: one row per detected face per sampled frame (video_id is the folder;
    in a compacted part, a column)."""
    return pa.schema([
        ("frame_index", pa.int32()), ("pts_s", pa.float64()), ("face_index", pa.int16()),
        ("track_id", pa.int32()),  # null where the face is in no track, or tracking is off
        *[(name, pa.float32()) for name in FACE_BOX],  # source pixels
        ("det_score", pa.float32()),
        ("landmarks", pa.list_(pa.float32())),  # 5 (x, y) keypoints: eyes, nose, mouth corners
        *FACE_QUALITY,
        ("usable", pa.bool_()),  # passes every quality.* threshold: the views summarise these faces only
        *[(name, pa.float32()) for name in score_columns(labels)],
        ("emotion", pa.string()),  # the label with the highest probability
        ("confidence", pa.float32()),  # its probability
        ("run_id", pa.string()),
    ])


FRAMES_SCHEMA = pa.schema([
    ("frame_index", pa.int32()), ("pts_s", pa.float64()), ("face_count", pa.int16()),
    ("small_faces", pa.int16()),  # found but under detector.min_face_px: not in `faces`
    ("det_size", pa.int16()),  # the detector input's longer side its faces were found at (detector.det_size)
    ("run_id", pa.string()),
])

VIDEOS_SCHEMA = pa.schema([
    ("video_id", pa.string()), ("path", pa.string()), ("size_bytes", pa.int64()),
    ("duration_s", pa.float64()), ("fps", pa.float64()), ("width", pa.int32()), ("height", pa.int32()),
    ("rotation", pa.int16()), ("frame_count", pa.int64()), ("sampled_frames", pa.int64()),
    ("faces", pa.int64()), ("status", pa.string()), ("error", pa.string()), ("decoder", pa.string()),
    ("config_fingerprint", pa.string()), ("detector", pa.string()), ("detector_revision", pa.string()),
    ("classifier", pa.string()), ("classifier_revision", pa.string()),
    ("started_at", pa.timestamp("ms", tz="UTC")), ("finished_at", pa.timestamp("ms", tz="UTC")),
    ("run_id", pa.string()),
    ("folder", pa.string()),  # its folder relative to the VIDEOS argument ('.': that folder): the default group
    ("det_size", pa.int16()),  # the detector size most of its frames were found at (detector.det_size auto chooses)
])
OK, FAILED, SKIPPED = "ok", "failed", "skipped"  # videos.status

# `tracks/video_id=<id>/<run>.parquet` (identity on): per face track, the least identity needs. Biometric data.
TRACKS_SCHEMA = pa.schema([
    ("track_id", pa.int32()),
    ("embedding", pa.list_(pa.float32())),  # mean of its embedded faces' embeddings, unit length
    ("embedded_faces", pa.int32()),  # faces that went into it
    ("consistency", pa.float32()),  # their mean cosine similarity to it
    ("run_id", pa.string()),
])

# `people/people.parquet`: which person each track is, over the whole folder; rewritten whole after every run
PEOPLE_SCHEMA = pa.schema([
    ("video_id", pa.string()), ("run_id", pa.string()), ("track_id", pa.int32()),
    ("person_id", pa.string()),  # p0001, p0002, ...: stable as videos are added
    ("person_name", pa.string()),  # from identity.gallery, where a name matched
])

TABLES = ("faces", "frames", "tracks", "videos", "people")
PER_VIDEO_TABLES = ("faces", "frames", "tracks")  # one folder per video_id, one file per run
