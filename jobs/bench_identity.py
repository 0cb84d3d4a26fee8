"""Benchmark: what a face embedding costs, and how similar the shared material's faces are, same person or not
(the figures identity.split_similarity, identity.same_person and identity.gallery_similarity are chosen from).

    python -m jobs.bench_identity [--shared ../shared] [--every 3]

Who is who (../shared/README.md): single_face.mp4, face_noface.mov and noface_face.mov show one man,
WolfgangLanger_Pexels.mp4 a woman (a hand over her face at times), and the dlib photo 2007_007763.jpg seven
different people. Faces are embedded from every `--every`th frame with fervid's alignment and model.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import cv2
import numpy as np

from pipeline.decode import probe, read_frames
from pipeline.detect import FaceDetector
from pipeline.embed import FaceEmbedder

SHARED = Path(__file__).resolve().parents[2] / "shared"
PEOPLE = {"man": ["single_face.mp4", "face_noface.mov", "noface_face.mov"], "woman": ["WolfgangLanger_Pexels.mp4"]}


def clip_faces(path: Path, detector: FaceDetector, embedder: FaceEmbedder, every: int) -> tuple[np.ndarray, float]:
    """Embeddings of the largest face in every `every`th frame, and the seconds the model took for them."""
    info = probe(str(path))
    crops = [embedder.crops(frame, found.landmarks[:1])[0]
             for _, frame in read_frames(str(path), info.decoder, range(0, info.frame_count, every), info.rotation)
             if len(found := detector.detect(frame))]
    start = time.perf_counter()
    vectors = embedder.embed(np.stack(crops))
    return vectors, time.perf_counter() - start


def spread(values: list[float]) -> str:
    p = np.percentile(values, [0, 5, 50, 95, 100])
    return f"n={len(values):5d}  min {p[0]:.2f}  5% {p[1]:.2f}  median {p[2]:.2f}  95% {p[3]:.2f}  max {p[4]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--every", type=int, default=3)
    args = parser.parse_args()
    detector = FaceDetector(str(args.shared / "models" / "scrfd_500m_bnkps.onnx"))
    embedder = FaceEmbedder(args.shared / "models" / "mobilefacenet" / "mobilefacenet.onnx")
    faces: dict[str, list[np.ndarray]] = {}
    seconds, count = 0.0, 0
    for person, clips in PEOPLE.items():
        for clip in clips:
            vectors, took = clip_faces(args.shared / "videos" / clip, detector, embedder, args.every)
            faces.setdefault(person, []).append(vectors)
            seconds, count = seconds + took, count + len(vectors)
    photo = cv2.cvtColor(cv2.imread(str(args.shared / "images" / "faces" / "dlib" / "2007_007763.jpg")),
                         cv2.COLOR_BGR2RGB)
    group = embedder.embed(embedder.crops(photo, detector.detect(photo).landmarks))

    same = [float(a @ b) for vectors in faces.values() for a, b in itertools.combinations(np.concatenate(vectors), 2)]
    other = [float(a @ b) for a in np.concatenate(faces["man"]) for b in np.concatenate(faces["woman"])]
    other += [float(a @ b) for a, b in itertools.combinations(group, 2)]
    means = {f"{person} {i}": v.sum(0) / np.linalg.norm(v.sum(0)) for person, clips in faces.items()
             for i, v in enumerate(clips)}
    halves = np.array_split(faces["woman"][0], 2)
    means.update({f"woman half {i}": h.sum(0) / np.linalg.norm(h.sum(0)) for i, h in enumerate(halves)})
    print(f"embedding: {1000 * seconds / count:.1f} ms per face ({count} faces, one batch per clip, one thread)")
    print(f"faces, same person:       {spread(same)}")
    print(f"faces, different people:  {spread(other)} (man vs woman, and the 7 people of 2007_007763.jpg)")
    print("track means (a clip each; the woman's clip also in halves):")
    for (a, u), (b, v) in itertools.combinations(means.items(), 2):
        print(f"  {a:<13} {b:<13} {float(u @ v):.2f}")


if __name__ == "__main__":
    main()
