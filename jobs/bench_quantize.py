"""`python -m jobs.bench_quantize`: what `classifier.quantize: int8` costs in agreement and gains in speed on a CPU.

- agreement: top-1 of the int8 classifier against the fp32 one on labelled face images (default
  ../shared/fer2013/test), with each one's accuracy;
- speed: faces/s of both, through fervid's EmotionClassifier, for that model and for a ViT-base/16
  224 with random weights (the default model's shape; nothing is downloaded).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from jobs.bench import SHARED
from jobs.gpu_check import FULL, save_random_vit
from pipeline.classify import EmotionClassifier
from pipeline.imagefolder import labelled_files, load_image, match_labels, scan


def agreement(model: str, images: Path, pattern: str | None, threads: int, batch_size: int) -> dict:
    """fp32 and int8 predictions on every matching image: agreement, accuracies, faces/s."""
    fp32 = EmotionClassifier(model, device="cpu", batch_size=batch_size, threads=threads)
    int8 = EmotionClassifier(model, device="cpu", batch_size=batch_size, threads=threads, quantize="int8")
    folders = scan(images, pattern)
    match = match_labels(list(folders), fp32.labels)
    paths, truth = labelled_files(folders, match.index)
    crops = np.stack([load_image(p, fp32.input_size) for p in paths])
    a, a_rate = timed(fp32, crops)
    b, b_rate = timed(int8, crops)
    return {"images": len(crops), "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
            "accuracy_fp32": float((a.argmax(1) == truth).mean()), "accuracy_int8": float((b.argmax(1) == truth).mean()),
            "fp32_faces_per_s": a_rate, "int8_faces_per_s": b_rate}


def vit_base_speed(threads: int, batch_size: int, faces: int) -> dict:
    """faces/s of a random-weight ViT-base/16 224 in fp32 and int8."""
    with tempfile.TemporaryDirectory() as tmp:
        model = str(save_random_vit(Path(tmp), FULL))
        crops = np.random.default_rng(0).integers(0, 256, (faces, 224, 224, 3), dtype=np.uint8)
        rates = {}
        for quantize in (None, "int8"):
            classifier = EmotionClassifier(model, device="cpu", batch_size=batch_size, threads=threads,
                                           quantize=quantize)
            classifier.predict(crops[:batch_size])  # warm-up
            rates[f"{quantize or 'fp32'}_faces_per_s"] = timed(classifier, crops)[1]
    return rates


def timed(classifier: EmotionClassifier, crops: np.ndarray) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    probs = classifier.predict(crops)
    return probs, len(crops) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.bench_quantize", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SHARED / "models" / "vit-fer-tiny"))
    parser.add_argument("--images", default=str(SHARED / "fer2013" / "test"))
    parser.add_argument("--filter", help="file name glob, e.g. PublicTest_*")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one actor's share)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--vit-base-faces", type=int, default=64, help="faces timed on ViT-base (0 skips it)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    result = {"model": args.model, "threads": args.threads, "batch_size": args.batch_size,
              **agreement(args.model, Path(args.images), args.filter, args.threads, args.batch_size)}
    if args.vit_base_faces:
        result["vit_base"] = vit_base_speed(args.threads, min(args.batch_size, 16), args.vit_base_faces)
    print(f"images {result['images']}: int8 agrees with fp32 on {result['top1_agreement']:.2%} (top-1); "
          f"accuracy fp32 {result['accuracy_fp32']:.2%}, int8 {result['accuracy_int8']:.2%}")
    print(f"this model: fp32 {result['fp32_faces_per_s']:.0f} faces/s, int8 {result['int8_faces_per_s']:.0f} faces/s "
          f"({result['int8_faces_per_s'] / result['fp32_faces_per_s']:.2f}x), {args.threads} thread(s)")
    if "vit_base" in result:
        v = result["vit_base"]
        print(f"ViT-B/16 224: fp32 {v['fp32_faces_per_s']:.1f} faces/s, int8 {v['int8_faces_per_s']:.1f} faces/s "
              f"({v['int8_faces_per_s'] / v['fp32_faces_per_s']:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
