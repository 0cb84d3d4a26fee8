"""`detector.det_size: auto` against full size (640) on every clip and photo in ../shared, and on clips with
small faces: faces found, sizes chosen, detector time per frame.

    python -m jobs.bench_det_size [--threads 1]

Each source's frames (clips sampled at 5 per second, as `fervid run` samples them) go through the real
SizeChooser of a segment, and through the detector at 640. A photo is a still clip of 10 frames at 5 per second,
as `fervid run` sees a photo made into a video: its first frame, at full size, chooses the size of the next.
A face found at full size counts as found by auto where auto has a face overlapping it (IoU at least 0.5);
for those found below full size, how far auto's keypoints lie from full size's (median, as a share of the
face's side), and whether the ViT of ../shared gives the same emotion on the upright crops cut by each. The
small-face clips are WolfgangLanger_Pexels.mp4 shrunk onto a 1920x1080 frame, to half and a quarter.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

import cv2
import numpy as np

from pipeline.bench import SHARED
from pipeline.classify import EmotionClassifier
from pipeline.config import ClassifierConfig
from pipeline.crop import aligned_crops
from pipeline.decode import probe, read_frames, sample_indices
from pipeline.detect import FULL_SIZE, FaceDetector, SizeChooser
from pipeline.track import box_iou

PHOTOS = ("images/faces/dlib", "images/faces/pyfeat")
STILL_FRAMES = 10


def sources() -> dict[str, tuple[list[np.ndarray], list[float]]]:
    """Every clip (frames at 5 per second, their times) and photo of ../shared, and the small-face clips."""
    found = {}
    for video in sorted((SHARED / "videos").iterdir()):
        info = probe(str(video))
        indices = sample_indices(info.pts_s, 5.0, None)
        frames = [f for _, f in read_frames(str(video), info.decoder, indices, info.rotation, None,
                                            info.pts_s[indices].tolist())]
        found[video.name] = frames, info.pts_s[indices].tolist()
    woman, pts = found["WolfgangLanger_Pexels.mp4"]
    for scale in (0.5, 0.25):
        found[f"small faces: WolfgangLanger at {scale} on 1920x1080"] = [_shrunk(f, scale) for f in woman], pts
    for folder in PHOTOS:
        for photo in sorted((SHARED / folder).glob("*.jpg")):
            still = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
            found[photo.name] = [still] * STILL_FRAMES, [k / 5 for k in range(STILL_FRAMES)]
    return found


def _shrunk(frame: np.ndarray, scale: float) -> np.ndarray:
    canvas = np.full((1080, 1920, 3), 90, np.uint8)
    small = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    canvas[500:500 + small.shape[0], 300:300 + small.shape[1]] = small
    return canvas


def compare(detector: FaceDetector, classifier: EmotionClassifier, frames: list[np.ndarray], pts: list[float]) -> dict:
    chooser = SizeChooser(detector)
    full_s = auto_s = 0.0
    faces = found = extra = 0
    sizes: Counter = Counter()
    moved: list[float] = []  # keypoint offsets of matched faces, as a share of the face's side
    same_emotion = []  # per matched face below full size: the same top emotion on both crops
    for frame, pts_s in zip(frames, pts):
        start = time.perf_counter()
        reference = detector.detect(frame)
        full_s += time.perf_counter() - start
        start = time.perf_counter()
        auto, size = chooser.detect(frame, pts_s)
        auto_s += time.perf_counter() - start
        sizes[size] += 1
        matched = box_iou(reference.xyxy, auto.xyxy) >= 0.5 if len(reference) and len(auto) else np.zeros((0, 0), bool)
        faces += len(reference)
        found += int(matched.any(axis=1).sum()) if matched.size else 0
        pairs = list(zip(*np.nonzero(matched))) if size < FULL_SIZE else []
        for i, j in pairs:
            side = min(reference.xyxy[i, 2:] - reference.xyxy[i, :2])
            moved.append(float(np.linalg.norm(reference.landmarks[i] - auto.landmarks[j], axis=1).mean() / side))
        if pairs:
            i, j = (np.array(k) for k in zip(*pairs))
            cut = [aligned_crops(frame, points, 0.2, classifier.input_size) for points in
                   (reference.landmarks[i], auto.landmarks[j])]
            full_scores, auto_scores = (classifier.predict(c) for c in cut)
            same_emotion += list(full_scores.argmax(axis=1) == auto_scores.argmax(axis=1))
        extra += len(auto) - (int(matched.any(axis=0).sum()) if matched.size else 0)
    return {"frames": len(frames), "faces": faces, "found": found, "extra": extra, "sizes": sizes, "moved": moved,
            "same_emotion": same_emotion,
            "full_ms": 1000 * full_s / len(frames), "auto_ms": 1000 * auto_s / len(frames)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1, as an actor)")
    args = parser.parse_args(argv)
    detector = FaceDetector(str(SHARED / "models" / "scrfd_500m_bnkps.onnx"), threads=args.threads)
    classifier = EmotionClassifier.from_config(ClassifierConfig(model=str(SHARED / "models" / "vit-fer-tiny"),
                                                                device="cpu", actors=0))
    print(f"{'source':<48} {'frames':>6} {'faces at 640':>12} {'found by auto':>13} {'extra':>5} {'keypoints':>9}  "
          f"{'ms/frame 640':>12} {'auto':>6}  sizes chosen (frames)")
    totals = Counter()
    moved, same_emotion = [], []
    for name, (frames, pts) in sources().items():
        r = compare(detector, classifier, frames, pts)
        sizes = ", ".join(f"{size}: {n}" for size, n in sorted(r["sizes"].items()))
        offset = f"{100 * np.median(r['moved']):.1f}%" if r["moved"] else "-"
        print(f"{name:<48} {r['frames']:>6} {r['faces']:>12} {r['found']:>13} {r['extra']:>5} {offset:>9}  "
              f"{r['full_ms']:>12.1f} {r['auto_ms']:>6.1f}  {sizes}")
        moved += r["moved"]
        same_emotion += r["same_emotion"]
        totals.update({key: r[key] for key in ("frames", "faces", "found", "extra")})
        totals.update({"full_s": r["full_ms"] * r["frames"], "auto_s": r["auto_ms"] * r["frames"]})
    print(f"all: {totals['found']} of {totals['faces']} faces found at 640 found by auto "
          f"({100 * totals['found'] / max(totals['faces'], 1):.1f}%), {totals['extra']} extra, keypoints within "
          f"{100 * np.median(moved):.1f}% of the face side (median; 90th percentile "
          f"{100 * np.percentile(moved, 90):.1f}%), the same top emotion on {100 * np.mean(same_emotion):.1f}% of "
          f"{len(same_emotion)} faces found below 640; detector "
          f"{totals['full_s'] / totals['frames']:.1f} ms per frame at 640, {totals['auto_s'] / totals['frames']:.1f} "
          f"with auto (full size {FULL_SIZE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
