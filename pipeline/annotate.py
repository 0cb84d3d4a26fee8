"""`fervid annotate`: one analysed video's sampled frames with each face's box, emotion, confidence and
track drawn on, as an H.264 MP4.

Only the sampled frames are written (the others were never analysed), each at its own timestamp, so the
clip plays at real speed at the sampling rate. Boxes take the report's emotion colours; unusable faces
(quality.*) are grey, without an emotion. A video whose faces lie on their side or upside down (pixels
stored turned, without rotation metadata) is written turned upright, as the classifier saw its faces.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from pipeline import query, storage
from pipeline.decode import read_frames
from pipeline.detect import QUARTER_TURNS, turn_boxes
from pipeline.errors import FervidError
from pipeline.presentation import clock, emotion_colours, find_videos, labels_of, source_problem
from pipeline.schema import FACE_BOX

TIME_BASE = Fraction(1, 1000)  # output timestamps in milliseconds
FONT = cv2.FONT_HERSHEY_SIMPLEX
UNUSABLE = (158, 158, 158)  # the box colour of faces not usable


def annotate(results_dir: str | Path, video: str, out: str | Path) -> tuple[int, int]:
    """Write OUT for the video named by id or path; returns (frames written, frames sampled).

    A sampled frame that no longer decodes is left out, as the run left it out of the analysis.
    """
    con = query.connect(results_dir)
    record = find_videos(con, con.sql("SELECT * FROM videos").to_dicts(), [video],
                         "the videos analysed successfully")[0]
    problem = source_problem(record["path"], record["size_bytes"])
    if problem:
        raise FervidError(f"cannot annotate: {problem}")
    source = storage.local_file(record["path"], record["video_id"])  # a remote video: fetched into the cache
    params = {"id": record["video_id"]}
    pts = dict(con.sql("SELECT frame_index, pts_s FROM frames WHERE video_id = $id", params=params).fetchall())
    faces = defaultdict(list)
    for face in con.sql("SELECT * FROM faces WHERE video_id = $id ORDER BY frame_index, face_index",
                        params=params).to_dicts():
        faces[face["frame_index"]].append(face)
    colours = {label: _rgb(hex_colour) for label, hex_colour in emotion_colours(labels_of(con)).items()}
    start = min(pts.values())
    turn = _upright_turn([face["roll_deg"] for frame in faces.values() for face in frame])
    width, height = (record["height"], record["width"]) if turn in (90, 270) else (record["width"], record["height"])
    width, height = width // 2 * 2, height // 2 * 2  # yuv420p wants even sides
    try:
        container = av.open(str(out), "w")
    except (OSError, av.error.FFmpegError) as e:
        raise FervidError(f"cannot write {out}: {e}") from None
    written, last = 0, -1
    with container:
        stream = container.add_stream("libx264", rate=round(len(pts) / max(record["duration_s"], 1e-3)) or 1)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = TIME_BASE
        for index, frame in read_frames(source, record["decoder"], sorted(pts), record["rotation"]):
            shown = [_turned(face, turn, frame.shape[1], frame.shape[0]) for face in faces[index]]
            frame = cv2.rotate(frame, QUARTER_TURNS[turn]) if turn else frame
            image = _draw(np.ascontiguousarray(frame[:height, :width]), shown, colours, pts[index])
            out_frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            out_frame.pts = last = max(round((pts[index] - start) / TIME_BASE), last + 1)
            out_frame.time_base = TIME_BASE
            container.mux(stream.encode(out_frame))
            written += 1
        container.mux(stream.encode())
    if not written:
        Path(out).unlink(missing_ok=True)
        raise FervidError(f"none of the {len(pts)} sampled frames of {record['path']} could be decoded again")
    return written, len(pts)


def _upright_turn(rolls: list[float | None]) -> int:
    """The quarter turn (clockwise) that sets most faces upright: 0 unless they mostly lie on a side or upside down.
    Results from before roll_deg existed have None: they stay as they are."""
    quarters = Counter(round(roll / 90) % 4 for roll in rolls if roll is not None)
    return (-90 * quarters.most_common(1)[0][0]) % 360 if quarters else 0


def _turned(face: dict, turn: int, width: int, height: int) -> dict:
    """The face with its box placed in the frame turned clockwise by turn."""
    if not turn:
        return face
    box, _ = turn_boxes(np.array([[face[c] for c in FACE_BOX]], np.float32), np.zeros((1, 5, 2), np.float32),
                        turn, width, height)
    return {**face, **dict(zip(FACE_BOX, box[0].tolist()))}


def _draw(image: np.ndarray, faces: list[dict], colours: dict[str, tuple[int, int, int]], pts_s: float) -> np.ndarray:
    """Boxes, with a label above each (emotion, confidence, track; "unusable" for faces that are not), and the
    time in the corner, drawn in place."""
    scale = max(0.4, image.shape[0] / 900)
    thickness = max(1, round(image.shape[0] / 360))
    for face in faces:
        colour = colours[face["emotion"]] if face["usable"] else UNUSABLE
        x1, y1, x2, y2 = (round(face[c]) for c in FACE_BOX)
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, thickness + 1)
        track = "" if face["track_id"] is None else f" #{face['track_id']}"
        text = f"{face['emotion']} {face['confidence']:.0%}{track}" if face["usable"] else f"unusable{track}"
        (text_w, text_h), baseline = cv2.getTextSize(text, FONT, scale, thickness)
        top = max(y1 - text_h - baseline - 4, 0)
        cv2.rectangle(image, (x1, top), (x1 + text_w + 4, top + text_h + baseline + 4), colour, cv2.FILLED)
        ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)  # dark text on light colours, light on dark
        cv2.putText(image, text, (x1 + 2, top + text_h + 2), FONT, scale, ink, thickness, cv2.LINE_AA)
    for ink, width in (((0, 0, 0), thickness + 2), ((255, 255, 255), thickness)):  # outlined: legible on any frame
        cv2.putText(image, clock(pts_s), (8, image.shape[0] - 10), FONT, scale, ink, width, cv2.LINE_AA)
    return image


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
