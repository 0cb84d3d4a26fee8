"""How far to trust a probability: expected calibration error, and one softmax temperature fitted to labels.

Temperature scaling divides a model's logits by T before the softmax. The classifier's probabilities
already carry the logits up to a per-face constant (log p = z - logsumexp(z)), and a softmax ignores
such constants, so softmax(log p / T) is the scaled output: T is fitted and applied to probabilities,
on any runtime, without touching the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ECE_BINS = 15  # equal-width confidence bins, as in Guo et al. (2017)
TEMPERATURE_FILE = "temperature.json"  # beside a local model's weights: fervid run applies it


def with_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """(N, labels) probabilities as the model would give them with its logits divided by temperature."""
    if temperature == 1.0:
        return probs
    logits = np.log(np.maximum(probs.astype(np.float64), np.finfo(np.float64).tiny)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return (scaled / scaled.sum(axis=1, keepdims=True)).astype(np.float32)


def nll(truth: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels (cross-entropy)."""
    p = probs[np.arange(len(truth)), truth].astype(np.float64)
    return float(-np.log(np.maximum(p, np.finfo(np.float32).tiny)).mean())


def ece(truth: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: over equal-width bins of the top probability, the gap between mean
    confidence and accuracy, weighted by the share of faces in each bin."""
    confidence = probs.max(axis=1).astype(np.float64)
    correct = probs.argmax(axis=1) == truth
    which = np.minimum((confidence * bins).astype(int), bins - 1)  # (k/bins, (k+1)/bins]; 1.0 in the last
    total = 0.0
    for k in np.unique(which):
        inside = which == k
        total += inside.mean() * abs(confidence[inside].mean() - correct[inside].mean())
    return float(total)


def fit_temperature(truth: np.ndarray, probs: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of the labels (searched over 0.05 to 20)."""
    from scipy.optimize import minimize_scalar  # here, not at the top: every classifier actor imports this module

    result = minimize_scalar(lambda log_t: nll(truth, with_temperature(probs, float(np.exp(log_t)))),
                             bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def read_temperature(model_dir: Path) -> float:
    """The temperature written beside a local model's weights, else 1 (none)."""
    path = Path(model_dir) / TEMPERATURE_FILE
    return float(json.loads(path.read_text())["temperature"]) if path.is_file() else 1.0


def write_temperature(model_dir: Path, temperature: float, fitted_on: dict) -> Path:
    path = Path(model_dir) / TEMPERATURE_FILE
    path.write_text(json.dumps({"temperature": temperature, "fitted_on": fitted_on}, indent=2) + "\n")
    return path
