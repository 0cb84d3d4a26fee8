"""`fervid eval`: FER2013 accuracy through the Ray Data path of `fervid run`, the metrics, label matching."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline.calibrate import with_temperature
from pipeline.classify import EmotionClassifier
from pipeline.config import ClassifierConfig, load_config
from pipeline.evaluate import evaluate, metrics
from pipeline.imagefolder import load_image
from tests.conftest import ROOT, TEST_CONFIG
from tests.test_cli import assert_one_line_error, fervid


def test_eval_reproduces_the_public_test_accuracy_of_the_model_card(shared, tmp_path):
    model = shared / "models" / "vit-fer-tiny"
    expected = json.loads((model / "metrics.json").read_text())["public_test_accuracy"]
    result = fervid("eval", shared / "fer2013" / "test", "--model", model, "--filter", "PublicTest_*",
                    "--config", TEST_CONFIG, "--json", tmp_path / "report.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert abs(report["accuracy"] - expected) <= 0.005
    assert report["images"] == 3589 and report["unreadable"] == []
    confusion = np.array(report["confusion"])
    assert confusion.sum() == 3589 and np.trace(confusion) / 3589 == pytest.approx(report["accuracy"])
    assert sum(m["images"] for m in report["per_label"].values()) == 3589
    assert report["macro_f1"] == pytest.approx(np.mean([m["f1"] for m in report["per_label"].values()]))
    assert 0 < report["loss"] < math.log(7) * 2
    assert f"accuracy {report['accuracy']:.4f}" in result.stdout
    for label in report["labels"]:
        assert any(line.startswith(label) for line in result.stdout.splitlines())


def test_metrics_on_a_worked_example():
    # 3 labels; "c" has no images but is predicted once
    truth = np.array([0, 0, 0, 1, 1])
    predicted = np.array([0, 0, 1, 1, 2])
    probs = np.full((5, 3), 0.1, dtype=np.float32)
    probs[np.arange(5), predicted] = 0.8
    m = metrics(truth, probs, ["a", "b", "c"])
    assert m["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 0]]
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["per_label"]["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "images": 3})
    assert m["per_label"]["b"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "images": 2})
    assert "c" not in m["per_label"] and m["macro_f1"] == pytest.approx(0.65)
    assert m["loss"] == pytest.approx(-(3 * math.log(0.8) + 2 * math.log(0.1)) / 5, rel=1e-6)


@pytest.fixture
def mismatched(shared, tmp_path) -> Path:
    """Happy and SAD (matching labels in another case), bored (no such label), and one broken file."""
    root = tmp_path / "faces"
    for folder, source in (("Happy", "happy"), ("SAD", "sad"), ("bored", "neutral")):
        (root / folder).mkdir(parents=True)
        for image in sorted((shared / "fer2013" / "test" / source).glob("PublicTest_*"))[:4]:
            (root / folder / image.name).symlink_to(image)
    (root / "Happy" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def test_label_mismatch_is_one_clear_error(shared, mismatched):
    result = fervid("eval", mismatched, "--model", shared / "models" / "vit-fer-tiny")
    assert_one_line_error(result, "folders with no label: bored",
                          "labels with no folder: angry, disgust, fear, neutral, surprise", "--ignore-missing")


def test_ignore_missing_scores_the_matching_folders_and_lists_the_rest(shared, mismatched):
    classifier = ClassifierConfig(model=str(shared / "models" / "vit-fer-tiny"), device="cpu", num_gpus=0)
    report = evaluate(mismatched, classifier, ignore_missing=True)
    assert report["images"] == 8
    assert sorted(report["per_label"]) == ["happy", "sad"]
    assert report["skipped_folders"] == ["bored"]
    assert report["labels_without_folder"] == ["angry", "disgust", "fear", "neutral", "surprise"]
    assert [Path(p).name for p in report["unreadable"]] == ["broken.jpg"]


def test_int8_classifier_agrees_with_fp32_on_fer2013(shared):
    model = str(shared / "models" / "vit-fer-tiny")
    fp32 = EmotionClassifier.from_config(ClassifierConfig(model=model, device="cpu", batch_size=128, threads=1))
    int8 = EmotionClassifier.from_config(ClassifierConfig(model=model, device="cpu", batch_size=128, threads=1,
                                                          quantize="int8"))
    quantized = {name for name, module in int8.scorer.model.named_modules() if "quantized" in type(module).__module__}
    assert quantized and all("mlp" in name for name in quantized)  # feed-forward only: attention and head stay fp32
    paths = sorted((shared / "fer2013" / "test").glob("*/PublicTest_*.jpg"))[::3]
    crops = np.stack([load_image(p, fp32.input_size) for p in paths])
    agreement = (fp32.predict(crops).argmax(1) == int8.predict(crops).argmax(1)).mean()
    assert len(crops) == 1197 and agreement >= 0.99


def test_onnx_runtime_scores_as_torch_does_and_starts_without_torch(shared):
    model = str(shared / "models" / "vit-fer-tiny")
    settings = ClassifierConfig(model=model, device="cpu", batch_size=64, threads=1)
    onnx = EmotionClassifier.from_config(settings)  # exported on first use on a machine
    reference = EmotionClassifier.from_config(replace(settings, runtime="torch"))
    assert (onnx.placement.runtime, reference.placement.runtime) == ("onnxruntime", "torch")
    paths = sorted((shared / "fer2013" / "test").glob("*/PublicTest_*.jpg"))[::10]
    crops = np.stack([load_image(p, onnx.input_size) for p in paths])
    scores, expected = onnx.predict(crops), reference.predict(crops)
    assert len(crops) == 359 and len(crops) % 64  # a last batch of another size too
    assert np.abs(scores - expected).max() < 1e-4 and (scores.argmax(1) == expected.argmax(1)).all()
    # a new actor loads the exported graph and never imports torch or transformers
    code = ("import sys; from pipeline.classify import EmotionClassifier; from pipeline.config import ClassifierConfig; "
            "c = EmotionClassifier.from_config(ClassifierConfig(model=sys.argv[1])); "
            "print(c.placement.runtime, 'torch' in sys.modules, 'transformers' in sys.modules)")
    fresh = subprocess.run([sys.executable, "-c", code, model], capture_output=True, text=True, cwd=ROOT, check=True)
    assert fresh.stdout.split() == ["onnxruntime", "False", "False"]


def test_fitted_temperature_and_ece_match_an_independent_computation_and_runs_apply_it(shared, tmp_path):
    model = tmp_path / "vit-fer-tiny"
    shutil.copytree(shared / "models" / "vit-fer-tiny", model)
    result = fervid("eval", shared / "fer2013" / "test", "--model", model, "--filter", "PrivateTest_*",
                    "--config", TEST_CONFIG, "--json", tmp_path / "report.json", "--fit-temperature")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    fitted = report["calibration"]["temperature"]
    assert "temperature 1.0000 -> " in result.stdout and f"ECE {report['ece']:.4f} (15 bins)" in result.stdout

    # independently: the model's own scores, the NLL minimised over a grid, ECE with numpy's digitize
    settings = ClassifierConfig(model=str(shared / "models" / "vit-fer-tiny"), device="cpu", batch_size=256)
    plain = EmotionClassifier.from_config(settings)
    labels = {label.lower(): i for i, label in enumerate(plain.labels)}
    paths = sorted((shared / "fer2013" / "test").glob("*/PrivateTest_*.jpg"))
    truth = np.array([labels[p.parent.name.lower()] for p in paths])
    probs = plain.predict(np.stack([load_image(p, plain.input_size) for p in paths])).astype(np.float64)
    assert len(paths) == report["images"] == 3589

    def nll_at(t: float) -> float:
        z = np.log(np.maximum(probs, 1e-38)) / t
        z -= z.max(axis=1, keepdims=True)
        return float(-(z[np.arange(len(truth)), truth] - np.log(np.exp(z).sum(axis=1))).mean())

    grid = np.arange(0.2, 5.0, 0.001)
    assert abs(fitted - grid[np.argmin([nll_at(t) for t in grid])]) < 0.05
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == truth
    bins = np.clip(np.digitize(confidence, np.linspace(0, 1, 16)[1:-1], right=True), 0, 14)
    expected_ece = sum((bins == b).mean() * abs(confidence[bins == b].mean() - correct[bins == b].mean())
                       for b in range(15) if (bins == b).any())
    assert abs(report["ece"] - expected_ece) < 0.005
    assert report["calibration"]["after"]["nll"] <= report["calibration"]["before"]["nll"]

    # the temperature lies beside the weights: runs apply it, and it is part of the config fingerprint
    assert json.loads((model / "temperature.json").read_text())["temperature"] == fitted
    calibrated = EmotionClassifier.from_config(replace(settings, model=str(model)))
    crops = np.stack([load_image(p, plain.input_size) for p in paths[:64]])
    assert np.allclose(calibrated.predict(crops), with_temperature(plain.predict(crops), fitted), atol=1e-5)
    with_file = load_config(TEST_CONFIG, [f"classifier.model={model}"])
    assert with_file.fingerprint() != load_config(TEST_CONFIG, [f"classifier.model={model}",
                                                                 "classifier.temperature=1"]).fingerprint()
