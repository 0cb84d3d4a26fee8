"""`python -m jobs.gpu_check`: how fast fervid's models and pipeline run on this machine's GPU, in under 8 minutes.

- classifier: faces/s of a ViT-base/16 at 224 (the default model's shape, random weights from
  transformers' ViTConfig defaults: nothing is downloaded) through fervid's own EmotionClassifier
  (uint8 crops in, normalisation on the device, SDPA), at several batch sizes and dtypes;
- detector: frames/s of SCRFD-500M (../shared/models) on one stream, and the ONNX Runtime provider used;
- end to end: `fervid run` with configs/gpu.yaml on a generated longer video, every frame analysed;
- GPU utilisation (nvidia-smi, sampled) during each measurement.

Without CUDA, or with --tiny, it runs a small ViT and short inputs, so CI checks it on a CPU in well
under a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from pipeline.bench import SHARED, Sampler, end_to_end
from pipeline.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LABELS = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


@dataclass(frozen=True)
class Sizes:
    vit: dict  # ViTConfig arguments on top of its defaults (ViT-base/16, 224)
    name: str
    batch_sizes: tuple[int, ...]
    dtypes: tuple[str, ...]
    seconds: float  # timed per classifier case, after a warm-up batch
    detector_frames: int
    video_s: float  # length of the generated video (30 fps)
    config: Path
    overrides: tuple[str, ...]  # on top of every frame analysed


FULL = Sizes({}, "ViT-B/16 224", (64, 128, 256, 512), ("float32", "float16", "bfloat16"), 3.0, 300, 120.0,
             CONFIGS / "gpu.yaml", ("sampling.segment_s=5",))
TINY = Sizes({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
              "image_size": 64}, "ViT tiny 64 (CPU check)", (4, 16), ("float32", "bfloat16"), 0.5, 8, 2.0,
             CONFIGS / "test.yaml", ("sampling.segment_s=1", "sampling.every_n_frames=3"))


def gpu_utilisation() -> int | None:
    """The first GPU's utilisation now, in percent (nvidia-smi), or None where there is none."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5).stdout.split()
        return int(out[0]) if out else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def save_random_vit(folder: Path, sizes: Sizes) -> Path:
    """A ViT image classifier with random weights and fervid's 7 labels, saved like a hub checkpoint."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    config = ViTConfig(**sizes.vit, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
                       label2id={label: i for i, label in enumerate(LABELS)})
    ViTForImageClassification(config).save_pretrained(folder, safe_serialization=True)
    side = config.image_size
    ViTImageProcessor(size={"height": side, "width": side}).save_pretrained(folder)
    return folder


def measure_classifier(model: Path, sizes: Sizes, device: str) -> list[dict]:
    """faces/s per dtype and batch size, through EmotionClassifier.predict (host uint8 in, probabilities out)."""
    from pipeline.classify import EmotionClassifier
    from pipeline.config import ClassifierConfig

    rows = []
    for dtype in sizes.dtypes:
        classifier = EmotionClassifier.from_config(ClassifierConfig(model=str(model), device=device, dtype=dtype))
        side = classifier.input_size
        crops = np.random.default_rng(0).integers(0, 256, (max(sizes.batch_sizes), side, side, 3), dtype=np.uint8)
        for batch in sizes.batch_sizes:
            classifier.batch_size = batch
            classifier.predict(crops[:batch])  # warm-up: kernels chosen, memory allocated
            faces, start = 0, time.perf_counter()
            with Sampler(gpu_utilisation, every_s=0.2) as gpu:
                while time.perf_counter() - start < sizes.seconds:
                    classifier.predict(crops[:batch])
                    faces += batch
                elapsed = time.perf_counter() - start
            rows.append({"dtype": dtype, "batch_size": batch, "faces_per_s": faces / elapsed,
                         "gpu": _busy(gpu.samples)})
        del classifier
    return rows


def sample_frames(video: Path, count: int) -> list[np.ndarray]:
    """The first `count` frames of a video (fewer if it is shorter), RGB."""
    import decord

    reader = decord.VideoReader(str(video))
    return list(reader.get_batch(list(range(min(count, len(reader))))).asnumpy())


def measure_detector(frames: list[np.ndarray], detector_model: Path, repeat: int) -> dict:
    """SCRFD frames/s on one stream, on CUDA where ONNX Runtime has it."""
    from pipeline.detect import FaceDetector

    detector = FaceDetector(str(detector_model), device="auto", threads=0)
    detector.detect(frames[0])  # warm-up: the CUDA provider builds its kernels here
    start = time.perf_counter()
    with Sampler(gpu_utilisation, every_s=0.2) as gpu:
        for k in range(repeat):
            detector.detect(frames[k % len(frames)])
        elapsed = time.perf_counter() - start
    return {"provider": detector.providers[0], "frames": repeat, "frames_per_s": repeat / elapsed,
            "gpu": _busy(gpu.samples)}


def write_looped_video(frames: list[np.ndarray], path: Path, seconds: float, fps: int = 30) -> Path:
    """An H.264 MP4 of `seconds` that plays the frames forward and back, over and over."""
    import av

    loop = frames + frames[-2:0:-1]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt, stream.options = "yuv420p", {"preset": "ultrafast"}
        for k in range(int(seconds * fps)):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(loop[k % len(loop)], format="rgb24")))
        container.mux(stream.encode(None))
    return path


def machine() -> dict:
    """What ran the check (onnxruntime by its module: the GPU wheel has another distribution name)."""
    import onnxruntime
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpus": os.cpu_count(), "gpu": gpu, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "onnxruntime_providers": onnxruntime.get_available_providers()}


def run_check(sizes: Sizes, detector_model: Path, source_video: Path) -> dict:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory(prefix="fervid-gpu-check-") as tmp:
        model = save_random_vit(Path(tmp) / "vit", sizes)
        classifier = measure_classifier(model, sizes, device)
        frames = sample_frames(source_video, 90)
        detector = measure_detector(frames, detector_model, sizes.detector_frames)
        videos = Path(tmp) / "videos"
        videos.mkdir()
        video = write_looped_video(frames, videos / "long.mp4", sizes.video_s)
        overrides = [f"detector.model={detector_model}", f"classifier.model={model}", "sampling.fps=null",
                     "sampling.every_n_frames=1", *sizes.overrides]
        if device == "cpu":  # no GPU: the same run on the CPU, whatever the config says
            overrides += ["detector.device=cpu", "detector.num_gpus=0", "classifier.device=cpu",
                          "classifier.num_gpus=0"]
        elif detector["provider"] != "CUDAExecutionProvider":  # onnxruntime without CUDA: detect on the CPUs
            overrides += ["detector.device=cpu", "detector.num_gpus=0"]
        config = load_config(sizes.config, overrides)
        cpus_left = (os.cpu_count() or 1) - (config.classifier.actors or 0)
        config.detector.actors = min(config.detector.actors, max(1, cpus_left))
        with Sampler(gpu_utilisation, every_s=0.2) as gpu:
            e2e = end_to_end([video], config, Path(tmp) / "results")
        e2e.update(video_s=sizes.video_s, gpu=_busy(gpu.samples), detector_actors=config.detector.actors,
                   classifier_actors=config.classifier.actors, classifier_batch_size=config.classifier.batch_size,
                   classifier_dtype=config.classifier.dtype, config=sizes.config.name)
    return {"model": sizes.name, "device": device, "machine": machine(), "classifier": classifier,
            "detector": detector, "end_to_end": e2e}


def print_table(result: dict) -> None:
    m, d, e = result["machine"], result["detector"], result["end_to_end"]
    rows = [("machine", f"{m['cpus']} CPUs, GPU: {m['gpu'] or 'none'}; torch {m['torch']}, "
                        f"onnxruntime {m['onnxruntime']}")]
    for r in result["classifier"]:
        rows.append((f"classifier {r['dtype']} b{r['batch_size']}", f"{r['faces_per_s']:,.0f} faces/s  "
                     f"({result['model']} on {result['device']}; GPU {_gpu(r['gpu'])})"))
    rows.append(("detector", f"{d['frames_per_s']:,.1f} frames/s  (SCRFD-500M 640, one stream, {d['provider']}; "
                             f"GPU {_gpu(d['gpu'])})"))
    rows.append(("end to end", f"{e['frames_per_s']:,.1f} frames/s, {e['faces_per_s']:,.1f} faces/s  ({e['frames']} "
                               f"frames of a {e['video_s']:.0f} s video in {e['wall_s']:.1f} s, first result after "
                               f"{e['first_result_s']:.1f} s; {e['config']}: {e['detector_actors'] or 'auto'} "
                               f"decode+detect actors, {e['classifier_actors']} classifier actors, batch "
                               f"{e['classifier_batch_size']}, {e['classifier_dtype']})"))
    rows.append(("GPU utilisation", f"end to end {_gpu(e['gpu'])}"))
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def _busy(samples: list[float]) -> dict | None:
    """Mean and peak of GPU utilisation samples, in percent; None where nothing was sampled (no GPU)."""
    return {"mean": float(np.mean(samples)), "peak": max(samples)} if samples else None


def _gpu(summary: dict | None) -> str:
    return f"mean {summary['mean']:.0f}%, peak {summary['peak']}%" if summary else "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small sizes (the default where there is no CUDA)")
    parser.add_argument("--detector", default=str(SHARED / "models" / "scrfd_500m_bnkps.onnx"))
    parser.add_argument("--video", default=str(SHARED / "videos" / "WolfgangLanger_Pexels.mp4"),
                        help="frames to detect on and to loop into the end-to-end video")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    import torch

    sizes = TINY if args.tiny or not torch.cuda.is_available() else FULL
    result = run_check(sizes, Path(args.detector), Path(args.video))
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
