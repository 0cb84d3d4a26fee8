"""Facial-expression classification with a Hugging Face image-classification model.

Crops arrive as uint8 RGB at the model's input size; scaling and normalisation run on the
device, so only bytes cross from host to GPU. Safetensors only, never remote code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import FervidError
from pipeline.models import resolve_classifier

if TYPE_CHECKING:
    import torch
    from transformers.image_processing_utils import BaseImageProcessor

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


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
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    names = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)
             and "attention" not in name and "attn" not in name and name != "classifier"}
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {name: per_channel_dynamic_qconfig for name in names}, dtype=torch.qint8)


class EmotionClassifier:
    """Loads the model once; `predict` maps a batch of crops to label probabilities."""

    def __init__(self, model: str, revision: str | None = None, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 32, threads: int = 0, quantize: str | None = None) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if threads:
            torch.set_num_threads(threads)
        spec = resolve_classifier(model, revision)
        self.labels = list(spec.labels)
        self.input_size = spec.input_size
        self.batch_size = batch_size
        self.device = pick_device(device)
        name = ("bfloat16" if self.device == "cuda" else "float32") if dtype == "auto" else _DTYPES[dtype]
        self.dtype = getattr(torch, name)
        self.model = AutoModelForImageClassification.from_pretrained(
            spec.source, revision=revision, use_safetensors=True, trust_remote_code=False,
            local_files_only=True, attn_implementation="sdpa", dtype=self.dtype,
        ).to(self.device).eval()
        if quantize == "int8":
            if self.device != "cpu":
                raise FervidError("classifier.quantize: int8 runs on the CPU only")
            self.model = quantize_feed_forward(self.model)
        processor = AutoImageProcessor.from_pretrained(spec.source, revision=revision, local_files_only=True)
        self.scale, self.shift = pixel_normalisation(processor, self.device)

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB crops -> (N, labels) float32 probabilities."""
        import torch

        out = np.zeros((len(crops), len(self.labels)), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(crops), self.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(crops[start:start + self.batch_size]))
                x = batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
                x = (x * self.scale + self.shift).to(self.dtype)
                logits = self.model(pixel_values=x).logits.float()
                out[start:start + len(batch)] = torch.softmax(logits, dim=-1).cpu().numpy()
        return out
