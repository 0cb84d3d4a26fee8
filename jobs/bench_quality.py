"""Benchmark: what face alignment and quality cost per face, and which faces of each clip are unusable, why.

    python -m jobs.bench_quality [--videos ../shared/videos] [--detector ../shared/models/scrfd_500m_bnkps.onnx]

Per clip, the real decode+detect+crop stage (pipeline.stages.DecodeDetectCrop, no Ray) runs on frames
sampled at 5 fps; its detection is timed apart from the work alignment and quality add (the quarter-turn
check on a segment's first faces, keypoints found again for tilted faces, the aligned crop in place of the
square one, roll, yaw and pitch, sharpness). Then the default quality thresholds decide `usable`.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline import crop
from pipeline.config import CropConfig, DetectorConfig, QualityConfig, SamplingConfig
from pipeline.decode import probe, read_frames
from pipeline.detect import FaceDetector
from pipeline.finalize import usable
from pipeline.plan import plan_segments
from pipeline.schema import FACE
from pipeline.stages import DecodeDetectCrop

SHARED = Path(__file__).resolve().parents[2] / "shared"
CROP_PX = 224  # the default classifier's input side


def reasons(row: dict, q: QualityConfig) -> list[str]:
    """Why a face is unusable: each threshold it fails."""
    failed = {"small": row["face_px"] < q.min_face_px, "turned": abs(row["yaw_deg"]) > q.max_yaw_deg,
              "tilted": abs(row["pitch_deg"]) > q.max_pitch_deg, "blurred": row["sharpness"] < q.min_sharpness,
              "weak detection": row["det_score"] < q.min_det_score}
    return [name for name, bad in failed.items() if bad]


def timed_parts(detector: FaceDetector, frames: list[np.ndarray]) -> tuple[float, float, float, int]:
    """Seconds of detection, of the work alignment and quality add, of the square crop they replace; faces."""
    detect = added = square = 0.0
    faces = 0
    for k, frame in enumerate(frames):
        start = time.perf_counter()
        found = detector.detect(frame)
        detect += time.perf_counter() - start
        start = time.perf_counter()
        if k == 0 and len(found):
            detector.upright_turn(frame, found)
        detector.upright_keypoints(frame, found)
        crop.aligned_crops(frame, found.landmarks, 0.2, CROP_PX)
        crop.roll_degrees(found.landmarks)
        crop.yaw_pitch_degrees(found.landmarks)
        crop.sharpness(frame, found.landmarks)
        added += time.perf_counter() - start
        start = time.perf_counter()
        crop.square_crops(frame, found.xyxy, 0.2, CROP_PX)
        square += time.perf_counter() - start
        faces += len(found)
    return detect, added, square, faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=Path, default=SHARED / "videos")
    parser.add_argument("--detector", type=Path, default=SHARED / "models" / "scrfd_500m_bnkps.onnx")
    args = parser.parse_args()
    quality = QualityConfig()
    stage = DecodeDetectCrop(DetectorConfig(), str(args.detector), CropConfig(), crop_size=CROP_PX)
    detector = FaceDetector.from_config(DetectorConfig(), args.detector)
    totals = np.zeros(3)
    total_faces = 0
    print(f"{'clip':<28} {'faces':>5} {'usable':>7}  why not (faces)")
    for path in sorted(args.videos.iterdir()):
        info = probe(str(path))
        segments = plan_segments(path.stem, str(path), info, SamplingConfig(segment_s=1e9))
        rows = [r for s in segments for r in stage.segment_rows(s) if r["kind"] == FACE]
        wanted = [i for s in segments for i in s.frame_index]
        frames = [f for _, f in read_frames(str(path), info.decoder, wanted, info.rotation)]
        *seconds, faces = timed_parts(detector, frames)
        totals += seconds
        total_faces += faces
        if not rows:
            print(f"{path.name:<28} {0:>5} {'-':>7}")
            continue
        ok = usable(pa.Table.from_pylist(rows), quality)
        why = Counter(name for row, good in zip(rows, ok) if not good for name in reasons(row, quality))
        print(f"{path.name:<28} {len(rows):>5} {ok.mean():>7.1%}  {dict(why) or ''}")
    detect, added, square = totals
    print(f"\n{total_faces} faces: detection {1000 * detect / total_faces:.2f} ms per face; alignment and quality "
          f"add {1000 * (added - square) / total_faces:.2f} ms per face over the square crop "
          f"({(added - square) / detect:.1%} of detection)")


if __name__ == "__main__":
    main()
