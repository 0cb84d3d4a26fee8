"""`python -m jobs.bench_quantize`: what `classifier.quantize: int8` costs in agreement and gains in speed on a CPU.

- agreement: top-1 of the int8 classifier against the fp32 one on labelled face images (default
  ../shared/fer2013/test), with each one's accuracy;
- speed: faces/s of fp32 on torch (what int8 quantizes), fp32 on ONNX Runtime (the CPU default) and
  int8, through fervid's EmotionClassifier, for that model and for a ViT-base/16 224 with random
  weights (the default model's shape; nothing is downloaded).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from jobs.gpu_check import FULL, save_random_vit
from pipeline.bench import SHARED
from pipeline.classify import EmotionClassifier
from pipeline.config import ClassifierConfig
from pipeline.imagefolder import labelled_files, load_image, match_labels, scan

VARIANTS = {"fp32_torch": {"runtime": "torch"}, "fp32_onnxruntime": {"runtime": "onnxruntime"},
            "int8": {"quantize": "int8"}}


def classifiers(model: str, threads: int, batch_size: int) -> dict[str, EmotionClassifier]:
    return {name: EmotionClassifier.from_config(ClassifierConfig(model=model, device="cpu", batch_size=batch_size,
                                                                 threads=threads, **options))
            for name, options in VARIANTS.items()}


def agreement(model: str, images: Path, pattern: str | None, threads: int, batch_size: int) -> dict:
    """Each variant's predictions on every matching image: agreement with fp32 torch, accuracy, faces/s."""
    variants = classifiers(model, threads, batch_size)
    reference = variants["fp32_torch"]
    folders = scan(images, pattern)
    match = match_labels(list(folders), reference.labels)
    paths, truth = labelled_files(folders, match.index)
    crops = np.stack([load_image(p, reference.input_size) for p in paths])
    result = {"images": len(crops)}
    predictions = {}
    for name, classifier in variants.items():
        predictions[name], result[f"{name}_faces_per_s"] = timed(classifier, crops)
        result[f"accuracy_{name}"] = float((predictions[name].argmax(1) == truth).mean())
    for name in ("fp32_onnxruntime", "int8"):
        result[f"top1_agreement_{name}"] = float((predictions[name].argmax(1) == predictions["fp32_torch"].argmax(1)).mean())
    return result


def vit_base_speed(threads: int, batch_size: int, faces: int) -> dict:
    """faces/s of a random-weight ViT-base/16 224 in each variant."""
    with tempfile.TemporaryDirectory() as tmp:
        model = str(save_random_vit(Path(tmp), FULL))
        crops = np.random.default_rng(0).integers(0, 256, (faces, 224, 224, 3), dtype=np.uint8)
        rates = {}
        for name, classifier in classifiers(model, threads, batch_size).items():
            classifier.predict(crops[:batch_size])  # warm-up
            rates[f"{name}_faces_per_s"] = timed(classifier, crops)[1]
    return rates


def speeds(rates: dict) -> str:
    base = rates["fp32_torch_faces_per_s"]
    return ", ".join(f"{name} {rates[f'{name}_faces_per_s']:.1f} faces/s ({rates[f'{name}_faces_per_s'] / base:.2f}x)"
                     for name in VARIANTS)


def timed(classifier: EmotionClassifier, crops: np.ndarray) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    probs = classifier.predict(crops)
    return probs, len(crops) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.bench_quantize", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SHARED / "models" / "vit-fer-tiny"))
    parser.add_argument("--images", default=str(SHARED / "fer2013" / "test"))
    parser.add_argument("--filter", help="file name glob, e.g. PublicTest_*")
    parser.add_argument("--threads", type=int, default=1, help="torch / ONNX Runtime threads (default 1: one actor's share)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--vit-base-faces", type=int, default=64, help="faces timed on ViT-base (0 skips it)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    result = {"model": args.model, "threads": args.threads, "batch_size": args.batch_size,
              **agreement(args.model, Path(args.images), args.filter, args.threads, args.batch_size)}
    if args.vit_base_faces:
        result["vit_base"] = vit_base_speed(args.threads, min(args.batch_size, 16), args.vit_base_faces)
    print(f"images {result['images']}: top-1 agreement with fp32 on torch: int8 {result['top1_agreement_int8']:.2%}, "
          f"fp32 on ONNX Runtime {result['top1_agreement_fp32_onnxruntime']:.2%}; accuracy "
          + ", ".join(f"{name} {result[f'accuracy_{name}']:.2%}" for name in VARIANTS))
    print(f"this model, {args.threads} thread(s): {speeds(result)}")
    if "vit_base" in result:
        print(f"ViT-B/16 224: {speeds(result['vit_base'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
