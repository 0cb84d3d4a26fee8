"""Finalising one complete video: its segments' rows become the `faces` and `frames` tables.

Tracking needs the whole video's rows in frame order, which is why it runs here, once all segments are
in, and not in the stages. Plain Python over Arrow: no executor, no storage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.assemble import CompletedVideo
from pipeline.config import IdentityConfig, QualityConfig, TrackingConfig
from pipeline.identity import split_tracks, track_table
from pipeline.schema import FACE_BOX, FRAMES_SCHEMA, faces_schema, score_columns, scored_schema
from pipeline.track import NO_TRACK, track_faces

FRAME_ORDER = [("frame_index", "ascending"), ("face_index", "ascending")]


@dataclass
class FinishedVideo:
    """A video ready to commit (error None) or to record as failed (error set, no tables)."""

    video_id: str
    faces: pa.Table | None = None
    frames: pa.Table | None = None
    tracks: pa.Table | None = None  # identity on: each track's mean embedding
    error: str | None = None  # why the video failed
    note: str | None = None  # what an ok video lost on the way (undecodable frames)
    small_faces: int = 0  # faces under detector.min_face_px, counted but not classified
    det_size: int | None = None  # the detector size most of its frames were found at


def finalize(video: CompletedVideo, labels: list[str], run_id: str, tracking: TrackingConfig,
             quality: QualityConfig, identity: IdentityConfig | None = None) -> FinishedVideo:
    """The video's tables, or why it failed: a segment that failed fails the video whole."""
    segments = list(video.segments.values())
    errors = [s["error"] for s in segments if s["error"]]
    if errors:
        return FinishedVideo(video.video_id, error=errors[0])
    frames = frames_table(segments, run_id)
    lost = sum(s["frames_lost"] or 0 for s in segments)
    if not len(frames):
        return FinishedVideo(video.video_id, error=f"none of the {lost} sampled frames could be decoded")
    # a damaged stretch costs only its frames; the video is ok and says what was lost
    note = f"{lost} of {lost + len(frames)} sampled frames could not be decoded and were skipped" if lost else None
    rows = pa.concat_tables(video.faces) if video.faces else scored_schema(labels).empty_table()
    rows = rows.sort_by(FRAME_ORDER)
    faces = faces_table(rows, labels, run_id, tracking, quality, identity)
    tracks = None
    if identity is not None and identity.enabled:
        tracks = track_table(faces["track_id"].fill_null(NO_TRACK).to_numpy(), embeddings(rows), run_id)
    sizes, counts = np.unique(frames["det_size"].to_numpy(), return_counts=True)
    return FinishedVideo(video.video_id, faces, frames, tracks, note=note,
                         small_faces=int(np.sum(frames["small_faces"].to_numpy())),
                         det_size=int(sizes[counts.argmax()]))


def faces_table(rows: pa.Table, labels: list[str], run_id: str, tracking: TrackingConfig,
                quality: QualityConfig, identity: IdentityConfig | None = None) -> pa.Table:
    """One video's scored face rows -> the `faces` table: in frame order, with tracks (cut where the person
    changes, with identity on), argmax label, confidence and whether each face is usable."""
    rows = rows.sort_by(FRAME_ORDER)
    scores = score_columns(labels)
    probs = np.column_stack([rows[c].to_numpy() for c in scores]) if len(rows) else np.zeros((0, len(labels)))
    best = probs.argmax(axis=1)
    good = usable(rows, quality)
    if tracking.enabled:
        xyxy = np.column_stack([rows[c].to_numpy() for c in FACE_BOX]).reshape(-1, 4)
        ids = track_faces(rows["frame_index"].to_numpy(), rows["pts_s"].to_numpy(), xyxy,
                          rows["det_score"].to_numpy(), tracking)
        if identity is not None and identity.enabled:
            ids = split_tracks(ids, xyxy, embeddings(rows), identity.split_similarity)
        track_id = pa.array(ids, pa.int32(), mask=ids == NO_TRACK)
    else:
        track_id = pa.nulls(len(rows), pa.int32())
    schema = faces_schema(labels)
    columns = {
        **{name: rows[name] for name in schema.names if name in rows.column_names},
        "track_id": track_id,
        "usable": pa.array(good, pa.bool_()),
        "emotion": pa.array(np.asarray(labels, dtype=object)[best] if len(rows) else [], pa.string()),
        "confidence": pa.array(probs[np.arange(len(rows)), best], pa.float32()),
        "run_id": pa.array([run_id] * len(rows), pa.string()),
    }
    return pa.table({name: columns[name] for name in schema.names}).cast(schema)


def embeddings(rows: pa.Table) -> list[np.ndarray | None]:
    """Per row, its embedding where the stage made one (faces of at least identity.min_face_px), else None.

    Unusable faces count too: a face turned 50 degrees is a doubtful reading of emotion, but still of a person.
    """
    vectors = rows["embedding"].to_pylist() if "embedding" in rows.column_names else [None] * len(rows)
    return [np.asarray(v, np.float32) if v is not None else None for v in vectors]


def usable(rows: pa.Table, quality: QualityConfig) -> np.ndarray:
    """Which faces pass every quality threshold: big enough, turned and tilted little enough, sharp enough
    and detected confidently enough."""
    def column(name: str) -> np.ndarray:
        return rows[name].to_numpy(zero_copy_only=False).astype(np.float32)

    return ((column("face_px") >= quality.min_face_px) & (np.abs(column("yaw_deg")) <= quality.max_yaw_deg)
            & (np.abs(column("pitch_deg")) <= quality.max_pitch_deg)
            & (column("sharpness") >= quality.min_sharpness) & (column("det_score") >= quality.min_det_score))


def frames_table(segments: list[dict], run_id: str) -> pa.Table:
    """One video's closing segment rows (in segment order) -> the `frames` table, one row per sampled frame."""
    def joined(column: str) -> list:
        return [value for s in segments for value in s[column]]

    index = joined("frames_index")
    return pa.table({
        "frame_index": pa.array(index, pa.int32()),
        "pts_s": pa.array(joined("frames_pts_s"), pa.float64()),
        "face_count": pa.array(joined("frames_face_count"), pa.int16()),
        "small_faces": pa.array(joined("frames_small_faces"), pa.int16()),
        "det_size": pa.array(joined("frames_det_size"), pa.int16()),
        "run_id": pa.array([run_id] * len(index), pa.string()),
    }, schema=FRAMES_SCHEMA)
