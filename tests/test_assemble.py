"""The Ray-free core: reassembly of scored rows into whole videos, and finalising a video into its tables.

No Ray, no models, no ../shared: batches are built from the data contract as an executor would deliver them.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.assemble import Assembler
from pipeline.config import QualityConfig, TrackingConfig
from pipeline.finalize import finalize
from pipeline.schema import FACE, SEGMENT, faces_schema, scored_schema

LABELS = ["happy", "sad"]


def face(video_id: str, segment: int, frame: int, index: int = 0, happy: float = 0.9) -> dict:
    return {"kind": FACE, "video_id": video_id, "segment_index": segment, "frame_index": frame,
            "pts_s": frame / 5, "face_index": index, "x1": 10.0 + 40 * index, "y1": 10.0,
            "x2": 40.0 + 40 * index, "y2": 40.0, "det_score": 0.9, "landmarks": [0.0] * 10,
            "roll_deg": 0.0, "yaw_deg": 0.0, "pitch_deg": 0.0, "face_px": 30.0, "sharpness": 0.5,
            "p_happy": happy, "p_sad": 1 - happy}


def closing(video_id: str, segment: int, frames: list[int], faces: int, lost: int = 0,
            error: str | None = None) -> dict:
    return {"kind": SEGMENT, "video_id": video_id, "segment_index": segment, "frames_index": frames,
            "frames_pts_s": [f / 5 for f in frames], "frames_face_count": [1] * len(frames),
            "frames_small_faces": [0] * len(frames), "frames_det_size": [640] * len(frames), "face_rows": faces,
            "frames_lost": lost, "error": error}


def batch(*rows: dict) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=scored_schema(LABELS))


def test_a_video_completes_when_every_segment_and_every_face_it_announced_are_in():
    assembler = Assembler()
    assembler.expect("v", 2, context="ctx")
    # segment 1 closes before segment 0, and segment 0's faces come in two batches, one after its closing row
    assert assembler.add(batch(face("v", 1, 5), closing("v", 1, [5], 1))).completed == []
    assert assembler.add(batch(face("v", 0, 0), closing("v", 0, [0, 1], 2))).completed == []
    arrivals = assembler.add(batch(face("v", 0, 1)))
    [video] = arrivals.completed
    assert video.video_id == "v" and video.context == "ctx" and list(video.segments) == [0, 1]
    assert sum(len(t) for t in video.faces) == 3
    assert assembler.open_videos() == {}


def test_duplicates_are_dropped_before_and_after_the_commit():
    assembler = Assembler()
    assembler.expect("v", 2)
    first = assembler.add(batch(face("v", 0, 0), face("v", 0, 0), closing("v", 0, [0], 1)))
    assert (first.faces, first.frames) == (1, 1)  # a retried task's rows, delivered twice in one batch
    again = assembler.add(batch(face("v", 0, 0), closing("v", 0, [0], 1)))  # and again later
    assert (again.faces, again.frames, again.completed) == (0, 0, [])
    # a duplicate must not stand in for a face still missing: segment 1 announced 2 faces, 1 arrived (twice)
    early = assembler.add(batch(face("v", 1, 5), face("v", 1, 5), closing("v", 1, [5], 2)))
    assert early.completed == [] and "v" in assembler.open_videos()
    [video] = assembler.add(batch(face("v", 1, 5, index=1))).completed
    assert sorted((r["frame_index"], r["face_index"]) for t in video.faces for r in t.to_pylist()) == [
        (0, 0), (5, 0), (5, 1)]
    late = assembler.add(batch(face("v", 1, 5, index=1), closing("v", 1, [5], 2)))  # after the commit
    assert (late.faces, late.frames, late.completed) == (0, 0, [])


def test_videos_interleave_and_a_video_without_faces_completes():
    assembler = Assembler()
    assembler.expect("a", 1)
    assembler.expect("b", 1)
    arrivals = assembler.add(batch(face("a", 0, 0), closing("b", 0, [0, 1, 2], 0)))
    assert [v.video_id for v in arrivals.completed] == ["b"] and arrivals.completed[0].faces == []
    assert [v.video_id for v in assembler.add(batch(closing("a", 0, [0], 1))).completed] == ["a"]


def test_rows_of_a_video_never_expected_are_a_bug_not_a_silent_loss():
    assembler = Assembler()
    with pytest.raises(ValueError, match="never expected"):
        assembler.add(batch(closing("x", 0, [0], 0)))


def finished(*rows: dict, segments: int = 1):
    assembler = Assembler()
    assembler.expect("v", segments)
    [video] = assembler.add(batch(*rows)).completed
    return finalize(video, LABELS, "run1", TrackingConfig(), QualityConfig(min_face_px=20))


def test_finalize_gives_the_tables_in_frame_order_with_tracks_and_labels():
    done = finished(closing("v", 1, [5, 6], 2), face("v", 1, 6, happy=0.2), face("v", 1, 5),
                    closing("v", 0, [0], 1), face("v", 0, 0), segments=2)
    assert done.error is None and done.note is None
    assert done.faces.schema == faces_schema(LABELS)
    assert done.faces["frame_index"].to_pylist() == [0, 5, 6]
    assert done.faces["emotion"].to_pylist() == ["happy", "happy", "sad"]
    assert done.faces["track_id"].to_pylist() == [0, 0, 0]
    assert done.frames["frame_index"].to_pylist() == [0, 5, 6] and set(done.frames["run_id"].to_pylist()) == {"run1"}


def test_finalize_fails_a_video_whole_for_one_failed_segment_and_notes_lost_frames():
    failed = finished(closing("v", 0, [0], 1), face("v", 0, 0), closing("v", 1, [], 0, error="OSError: bad"),
                      segments=2)
    assert failed.error == "OSError: bad" and failed.faces is None
    nothing = finished(closing("v", 0, [], 0, lost=4))
    assert nothing.error == "none of the 4 sampled frames could be decoded"
    partial = finished(closing("v", 0, [0, 1], 0, lost=2))
    assert partial.error is None and partial.note == "2 of 4 sampled frames could not be decoded and were skipped"
    assert len(partial.faces) == 0 and partial.faces.schema == faces_schema(LABELS)
