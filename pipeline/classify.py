"""Facial-expression classification with a Hugging Face image-classification model.

Crops arrive as uint8 RGB at the model's input size; scaling and normalisation run on the
device, so only bytes cross from host to GPU. Safetensors only, never remote code.

Two runtimes: torch (GPUs, bf16, int8) and, for fp32 on the CPU, ONNX Runtime with the model
exported once per machine as one graph from uint8 crops to probabilities. An actor that scores
through ONNX Runtime never imports torch or transformers: on a 2-core box that import is most of
an actor's start-up, and ONNX Runtime also runs the ViT faster than torch does (1.37x the small one,
1.36x a ViT-B/16, one thread: jobs/bench_quantize.py).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.calibrate import with_temperature
from pipeline.errors import FervidError, first_line
from pipeline.models import ClassifierSpec, derived_model_file, onnx_session_options, resolve_classifier

if TYPE_CHECKING:
    import torch
    from transformers.image_processing_utils import BaseImageProcessor

    from pipeline.config import ClassifierConfig

ONNX_EXPORT_VERSION = 1  # part of the exported file's name: bump it when the exported graph changes


@dataclass(frozen=True)
class Placement:
    """Where and how classifier actors run, decided once by `place_classifier` for validation, the graph and
    the actors alike."""

    device: str  # cpu or cuda
    dtype: str  # float32, bfloat16 or float16
    runtime: str  # onnxruntime or torch
    threads: int  # intra-op threads of torch or ONNX Runtime
    num_gpus: float  # what each actor asks the executor for
    actors: int  # classifier actors; 0: faces are scored inside the decode+detect actors


def place_classifier(c: ClassifierConfig, cluster_gpus: float = 0.0, fused_threads: int = 1) -> Placement:
    """The classifier's placement on a cluster with cluster_gpus GPUs; FervidError where settings contradict.

    auto settings: actors of its own where the cluster has GPUs or the settings ask for a GPU or resources,
    else scoring inside the decode+detect actors (each CPU core runs whole segments: no split of cores to
    guess); a GPU per actor where the cluster has GPUs (not for int8, ONNX Runtime or scoring inside the
    decode+detect actors, which run on the CPU); bf16 on a GPU, fp32 on the CPU; ONNX Runtime where it
    computes what torch would (fp32 on the CPU), torch for the rest. Threads: classifier.threads, else the
    actor's CPUs (inside the decode+detect actors: fused_threads, the detector's).
    """
    wants_gpu = c.device == "cuda" or (c.num_gpus or 0) > 0 or bool(c.resources)
    actors = c.actors if c.actors is not None else int(wants_gpu or (cluster_gpus > 0 and c.quantize is None
                                                                     and c.runtime != "onnxruntime"))
    fused = actors == 0
    if fused and wants_gpu:
        raise FervidError("classifier.actors: 0 scores faces inside the decode+detect actors, on their CPUs: "
                          "it takes no classifier.device cuda, num_gpus or resources")
    cpu_only = fused or c.quantize is not None or c.runtime == "onnxruntime"
    num_gpus = c.num_gpus if c.num_gpus is not None else (1.0 if cluster_gpus and not cpu_only else 0.0)
    device = c.device if c.device != "auto" else ("cuda" if num_gpus > 0 else "cpu")
    dtype = c.dtype if c.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
    cpu_fp32 = device == "cpu" and dtype == "float32" and c.quantize is None
    runtime = c.runtime if c.runtime != "auto" else ("onnxruntime" if cpu_fp32 else "torch")
    if runtime == "onnxruntime" and (not cpu_fp32 or num_gpus > 0):
        raise FervidError("classifier.runtime onnxruntime runs fp32 on the CPU only: set classifier.device: cpu, "
                          "num_gpus: 0, dtype: float32 and quantize: null, or runtime: auto")
    if c.quantize is not None and (device != "cpu" or num_gpus > 0):
        raise FervidError("classifier.quantize: int8 runs on the CPU only: set classifier.device: cpu and "
                          "classifier.num_gpus: 0, or quantize: null")
    threads = c.threads or (fused_threads if fused else max(1, int(c.num_cpus)))
    return Placement(device, dtype, runtime, threads, num_gpus, actors)


def pixel_normalisation(processor: BaseImageProcessor, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift), (1, 3, 1, 1), so that uint8 pixels * scale + shift is the processor's input.

    Shared with fine-tuning, so a model is trained on exactly the input it is later run on.
    """
    import torch

    mean = processor.image_mean if processor.do_normalize else [0.0, 0.0, 0.0]
    std = processor.image_std if processor.do_normalize else [1.0, 1.0, 1.0]
    rescale = processor.rescale_factor if processor.do_rescale else 1.0
    # (x * rescale - mean) / std == x * scale + shift, per channel
    scale = torch.tensor([rescale / s for s in std], device=device).view(1, 3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=device).view(1, 3, 1, 1)
    return scale, shift


def quantize_feed_forward(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 (per-channel weights) for the transformer's feed-forward Linear layers.

    They hold two thirds of a ViT's multiply-adds; attention projections and the head stay fp32,
    which keeps top-1 agreement with fp32 above 99% where quantizing every layer fell below it
    (measured on FER2013 with the small ../shared model: jobs/bench_quantize.py).
    """
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    names = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)
             and "attention" not in name and "attn" not in name and name != "classifier"}
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {name: per_channel_dynamic_qconfig for name in names}, dtype=torch.qint8)


class TorchScorer:
    """The model in torch, loaded once; `__call__` maps uint8 crops to probabilities on the device."""

    def __init__(self, spec: ClassifierSpec, revision: str | None, device: str, dtype: str) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageClassification
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.device = device
        self.dtype = getattr(torch, dtype)
        self.model = AutoModelForImageClassification.from_pretrained(
            spec.source, revision=revision, use_safetensors=True, trust_remote_code=False,
            local_files_only=True, attn_implementation="sdpa", dtype=self.dtype,
        ).to(device).eval()
        processor = AutoImageProcessor.from_pretrained(spec.source, revision=revision, local_files_only=True)
        self.scale, self.shift = pixel_normalisation(processor, device)

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            pixels = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device, non_blocking=True)
            return self.probabilities(pixels).cpu().numpy()

    def probabilities(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, S, S, 3) uint8 RGB -> (N, labels) float32 probabilities: the one place of the input
        transformation, run as it is on the torch runtime and traced into the ONNX graph."""
        import torch

        x = (pixels.permute(0, 3, 1, 2).float() * self.scale + self.shift).to(self.dtype)
        return torch.softmax(self.model(pixel_values=x).logits.float(), dim=-1)


def exported_classifier(spec: ClassifierSpec, revision: str | None) -> Path:
    """The classifier as one fp32 ONNX graph, uint8 crops (any number) in, probabilities out.

    Exported on the first use on a machine (torch's TorchScript exporter), then found in the model
    cache by the weights' identity, so later actors load it without importing torch.
    """
    name = f"classifier-{spec.identity_digest}-v{ONNX_EXPORT_VERSION}.onnx"
    return derived_model_file(name, lambda path: _export(spec, revision, path))


def _export(spec: ClassifierSpec, revision: str | None, path: Path) -> None:
    import torch

    scorer = TorchScorer(spec, revision, "cpu", "float32")
    scorer.model.requires_grad_(False)  # the tracer takes the weights as constants of the graph

    class Graph(torch.nn.Module):  # what the exporter traces: the scorer as a module
        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return scorer.probabilities(pixels)

    example = torch.zeros((2, spec.input_size, spec.input_size, 3), dtype=torch.uint8)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer notes on the model's constant shape checks
            torch.onnx.export(Graph(), (example,), str(path), input_names=["pixels"], output_names=["probabilities"],
                              dynamic_axes={"pixels": {0: "faces"}, "probabilities": {0: "faces"}},
                              opset_version=17, dynamo=False)
    except Exception as e:  # the exporter raises many kinds for operators it cannot map
        raise FervidError(f"classifier model '{spec.source}' could not be exported to ONNX ({first_line(e, 160)}); "
                          "set classifier.runtime: torch") from None


class OnnxScorer:
    """The exported graph on ONNX Runtime's CPU provider; `__call__` maps uint8 crops to probabilities."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), onnx_session_options(threads),
                                                    providers=["CPUExecutionProvider"])

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"pixels": np.ascontiguousarray(pixels)})[0]


def temperature(c: ClassifierConfig, spec: ClassifierSpec) -> float:
    """The softmax temperature a run applies: classifier.temperature, else the model folder's, else 1."""
    return c.temperature if c.temperature is not None else spec.temperature


class EmotionClassifier:
    """Loads the model once; `predict` maps a batch of crops to label probabilities."""

    def __init__(self, spec: ClassifierSpec, placement: Placement, batch_size: int = 32, quantize: str | None = None,
                 revision: str | None = None, temperature: float = 1.0) -> None:
        self.temperature = temperature
        self.labels = list(spec.labels)
        self.input_size = spec.input_size
        self.batch_size = batch_size
        self.placement = placement
        if placement.runtime == "onnxruntime":
            self.scorer = OnnxScorer(exported_classifier(spec, revision), placement.threads)
            return
        import torch

        torch.set_num_threads(placement.threads)
        self.scorer = TorchScorer(spec, revision, placement.device, placement.dtype)
        if quantize == "int8":
            self.scorer.model = quantize_feed_forward(self.scorer.model)

    @classmethod
    def from_config(cls, c: ClassifierConfig, spec: ClassifierSpec | None = None,
                    placement: Placement | None = None) -> EmotionClassifier:
        """The classifier of a config section; actors pass the spec and placement the driver resolved, other
        callers get them resolved here (placed as on a machine without GPUs, unless the config says cuda)."""
        spec = spec or resolve_classifier(c.model, c.revision)
        return cls(spec, placement or place_classifier(c), c.batch_size, c.quantize, c.revision, temperature(c, spec))

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB crops -> (N, labels) float32 probabilities."""
        out = np.zeros((len(crops), len(self.labels)), dtype=np.float32)
        for start in range(0, len(crops), self.batch_size):
            out[start:start + self.batch_size] = self.scorer(crops[start:start + self.batch_size])
        return with_temperature(out, self.temperature)
