"""`fervid finetune`: a few real steps from the test ViT, then the model in `fervid eval` and `fervid run`; resuming;
two Ray Train workers on CPU against one process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
from safetensors.numpy import load_file

from pipeline import finetune as ft
from pipeline.config import ClassifierConfig, load_config
from pipeline.errors import FervidError
from pipeline.evaluate import evaluate
from pipeline.runner import Runner
from tests.conftest import TEST_CONFIG
from tests.test_cli import fervid


@pytest.fixture(scope="module")
def three_labels(shared, tmp_path_factory) -> Path:
    """12 training images in each of Calm, Happy and Sad: labels the base model does not have."""
    root = tmp_path_factory.mktemp("train")
    for folder, source in (("Calm", "neutral"), ("Happy", "happy"), ("Sad", "sad")):
        (root / folder).mkdir()
        for image in sorted((shared / "fer2013" / "train-sample" / source).glob("*.jpg"))[:12]:
            (root / folder / image.name).symlink_to(image)
    return root


def test_new_labels_give_a_model_that_eval_and_run_load(shared, three_labels, tmp_path):
    out = tmp_path / "model"
    result = fervid("finetune", three_labels, "--base", shared / "models" / "vit-fer-tiny", "--out", out,
                    "--eval-dir", three_labels, "--max-steps", 4, "--batch-size", 6, "--grad-accum", 2,
                    "--warmup-steps", 1, "--eval-steps", 2, "--lr", 1e-3, "--workers", 0)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == "Training Loss Epoch Step Validation Loss "
                  "Accuracy".split())
    assert [line.split()[2] for line in lines[header + 1:header + 3]] == ["2", "4"]

    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "Calm", "1": "Happy", "2": "Sad"}
    assert (out / "model.safetensors").is_file() and (out / "preprocessor_config.json").is_file()
    assert not list(out.glob("checkpoint-*"))
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [2, 4] and all("accuracy" in row for row in log)
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["head"] == "new" and summary["final_eval"]["images"] == 36

    report = evaluate(three_labels, ClassifierConfig(model=str(out), device="cpu", num_gpus=0))
    assert report["labels"] == ["Calm", "Happy", "Sad"] and report["images"] == 36
    assert report["accuracy"] == pytest.approx(summary["final_eval"]["accuracy"], abs=1 / 36)

    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(shared / "videos" / "single_face.mp4", videos)
    config = load_config(TEST_CONFIG, [f"classifier.model={out}"])
    run = Runner(videos, tmp_path / "results", config, show_progress=False).run()
    assert run.counts["ok"] == 1 and run.faces > 0
    faces = ds.dataset(tmp_path / "results" / "faces", format="parquet", partitioning="hive").to_table()
    assert [c for c in faces.column_names if c.startswith("p_")] == \
        ["p_Calm", "p_Happy", "p_Sad"]
    assert set(faces["emotion"].to_pylist()) <= {"Calm", "Happy", "Sad"}


def small_recipe(shared: Path) -> ft.Recipe:
    return ft.Recipe(base=str(shared / "models" / "vit-fer-tiny"), batch_size=8, grad_accum=1, max_steps=4,
                     warmup_steps=1, lr=1e-3, eval_steps=1, save_steps=2)


def finetune_until_first_checkpoint(monkeypatch: pytest.MonkeyPatch, *args, **kwargs) -> None:
    """ft.finetune in this process, interrupted (as by Ctrl-C) once it has written its first checkpoint."""
    save = ft._save_checkpoint

    def save_then_stop(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(ft, "_save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(*args, **kwargs)
    monkeypatch.undo()


def test_resuming_after_an_interruption_gives_the_same_model(shared, tmp_path, monkeypatch):
    train = shared / "fer2013" / "train-sample"
    recipe = small_recipe(shared)
    whole = ft.finetune(train, tmp_path / "whole", recipe, workers=0, log=lambda line: None)
    assert whole["head"] == "kept from the base model"
    assert whole["labels"] == ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]

    finetune_until_first_checkpoint(monkeypatch, train, tmp_path / "resumed", recipe, workers=0,
                                    log=lambda line: None)
    assert [p.name for p in (tmp_path / "resumed").glob("checkpoint-*")] == ["checkpoint-2"]

    lines: list[str] = []
    resumed = ft.finetune(train, tmp_path / "resumed", recipe, workers=0, log=lines.append)
    assert "resuming from checkpoint-2 (step 2 of 4)" in lines
    before, after = (load_file(tmp_path / name / "model.safetensors") for name in ("whole", "resumed"))
    assert all((before[k] == after[k]).all() for k in before)
    log = {name: (tmp_path / name / "train_log.jsonl").read_text() for name in ("whole", "resumed")}
    assert log["whole"] == log["resumed"] and len(log["whole"].splitlines()) == 4
    assert resumed["steps"] == whole["steps"] == 4


def test_mismatched_eval_folders_and_a_used_out_folder_are_clear_errors(shared, three_labels, tmp_path):
    recipe = small_recipe(shared)
    with pytest.raises(FervidError, match="folders with no label: Calm; labels with no folder: angry"):
        ft.finetune(shared / "fer2013" / "train-sample", tmp_path / "a", recipe,
                    eval_dir=three_labels, workers=0, log=lambda line: None)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(FervidError, match="not empty and holds no checkpoint"):
        ft.finetune(three_labels, tmp_path / "b", recipe, workers=0, log=lambda line: None)


def data_parallel_recipe(shared: Path) -> ft.Recipe:
    """36 images in micro-batches of 5: the epoch's last one holds a single image, so worker 1 gets none."""
    return ft.Recipe(base=str(shared / "models" / "vit-fer-tiny"), batch_size=5, grad_accum=2, max_steps=4,
                     warmup_steps=1, lr=1e-3, eval_steps=2, save_steps=2)


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def assert_same_training(a: Path, b: Path, lr: float) -> None:
    """Equal up to float rounding: DDP sums each micro-batch's gradient in two halves, one process in one.

    Measured: within 1e-6, but for the attention key biases. Softmax ignores them, so their gradient
    is rounding noise that Adam scales to steps of up to lr either way; they only stay within a few lr.
    """
    for row, same in zip(read_log(a), read_log(b), strict=True):
        assert row["step"] == same["step"] and row["lr"] == same["lr"]
        assert row["train_loss"] == pytest.approx(same["train_loss"], abs=1e-5)
    first, second = (load_file(folder / "model.safetensors") for folder in (a, b))
    assert first.keys() == second.keys()
    for k in first:
        atol = 4 * lr if k.endswith("attention.key.bias") else 1e-5
        np.testing.assert_allclose(first[k], second[k], rtol=0, atol=atol, err_msg=k)


def test_two_ray_train_workers_resume_one_process_and_learn_what_it_would(shared, three_labels, tmp_path,
                                                                         monkeypatch):
    """One process stops at its step-2 checkpoint and two workers finish: the model one process makes alone.

    One Ray Train run, not two (from scratch and resumed): starting Ray Train costs a minute on the test machine.
    """
    recipe = data_parallel_recipe(shared)
    whole = ft.finetune(three_labels, tmp_path / "whole", recipe, eval_dir=three_labels, workers=0, train_workers=1,
                        log=lambda line: None)
    finetune_until_first_checkpoint(monkeypatch, three_labels, tmp_path / "resumed", recipe, eval_dir=three_labels,
                                    workers=0, train_workers=1, log=lambda line: None)

    out = tmp_path / "resumed"
    summary = ft.finetune(three_labels, out, recipe, eval_dir=three_labels, workers=0, train_workers=2)
    assert summary["workers"] == 2 and summary["steps"] == 4 and summary["final_eval"]["images"] == 36
    assert not list(out.glob("checkpoint-*"))
    assert [row["step"] for row in read_log(out)] == [2, 4] and all("accuracy" in row for row in read_log(out))
    assert read_log(out)[0] == read_log(tmp_path / "whole")[0]  # kept in the checkpoint
    assert_same_training(tmp_path / "whole", out, recipe.lr)

    report = evaluate(three_labels, ClassifierConfig(model=str(out), device="cpu", num_gpus=0))
    assert report["labels"] == ["Calm", "Happy", "Sad"] and report["images"] == 36
    assert report["accuracy"] == pytest.approx(whole["final_eval"]["accuracy"], abs=1 / 36)
