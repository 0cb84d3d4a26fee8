"""The `fervid` command as a user runs it: clear one-line errors, exit codes, the tables written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipeline.results import ResultsStore
from tests.conftest import ROOT, TEST_CONFIG


def fervid(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pipeline.cli", *map(str, args)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("fervid: error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def one_video(shared, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(shared / "videos" / "single_face.mp4", folder / "clip.mp4")
    return folder


def test_missing_and_empty_input_folders(tmp_path):
    assert_one_line_error(fervid("run", tmp_path / "nope", "--out", tmp_path / "r"), "input folder not found")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(fervid("run", tmp_path / "empty", "--out", tmp_path / "r"), "no videos")
    assert not (tmp_path / "r").exists()  # a run that cannot start creates nothing


def test_bad_config_keys_and_values(one_video, tmp_path):
    out = tmp_path / "r"
    assert_one_line_error(fervid("run", one_video, "--out", out, "--set", "sampling.fsp=3"),
                          "unknown config key 'sampling.fsp'")
    assert_one_line_error(fervid("run", one_video, "--out", out, "--config", TEST_CONFIG,
                                 "--set", "detector.threshold=2"), "detector.threshold")
    assert_one_line_error(fervid("run", one_video, "--out", out, "--config", tmp_path / "none.yaml"),
                          "config file not found")
    assert_one_line_error(fervid("run", one_video, "--out", out, "--set", "classifier.runtime=onnxruntime",
                                 "--set", "classifier.device=cuda"), "runs fp32 on the CPU only")
    assert not out.exists()


def test_unwritable_output(one_video, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_one_line_error(fervid("run", one_video, "--out", blocker / "results", "--config", TEST_CONFIG),
                          "not writable")


def test_models_missing_offline_name_the_model_and_the_fix(one_video, tmp_path):
    out = tmp_path / "r"
    result = fervid("run", one_video, "--out", out, "--config", TEST_CONFIG,
                    "--set", "classifier.model=someone/not-cached-model")
    assert_one_line_error(result, "someone/not-cached-model", "--set classifier.model=")
    result = fervid("run", one_video, "--out", out, "--config", TEST_CONFIG,
                    "--set", f"detector.model={tmp_path / 'missing.onnx'}")
    assert_one_line_error(result, "detector model not found")
    assert not out.exists()


def test_no_address_starts_a_ray_of_its_own_whatever_tmp_ray_says(one_video, tmp_path):
    """A `ray start --head` that died without `ray stop` leaves /tmp/ray/ray_current_cluster behind; a plain
    ray.init() would try to join it and hang for minutes."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="fr", dir="/tmp"))  # short: Ray's socket paths must stay under 108 bytes
    try:
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")  # the discard port: nothing listens
        env = {"RAY_TMPDIR": str(ray_tmp), "RAY_ADDRESS": ""}
        result = fervid("run", one_video, "--out", tmp_path / "r", "--config", TEST_CONFIG, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "1 ok" in result.stdout and "Failed to connect to GCS" not in result.stderr
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_second_writer_is_refused(one_video, tmp_path):
    store = ResultsStore(tmp_path / "r")
    with store.lock():
        result = fervid("run", one_video, "--out", tmp_path / "r", "--config", TEST_CONFIG)
    assert_one_line_error(result, "in use by another fervid run")


def test_fervid_run_writes_the_three_tables(one_video, tmp_path):
    out = tmp_path / "results"
    result = fervid("run", one_video, "--out", out, "--config", TEST_CONFIG)
    assert result.returncode == 0, result.stderr
    assert "1 ok, 0 failed, 0 skipped; 12 frames, 12 faces" in result.stdout
    for step in ("reading content ids 1/1", "probing videos 1/1", "videos 1/1"):
        assert step in result.stderr  # progress lines when not on a terminal
    for ray_notice in ("Progress bars disabled", "Token authentication is enabled"):
        assert ray_notice not in result.stderr  # Ray restating fervid's own choices
    for table in ("faces", "frames"):
        assert len(list((out / table).glob("video_id=*/*.parquet"))) == 1
    assert len(list((out / "videos").glob("*.parquet"))) == 1 and len(list((out / "runs").glob("*.json"))) == 1
    quiet = fervid("run", one_video, "--out", out, "--config", TEST_CONFIG, "--quiet")
    assert quiet.returncode == 0 and "0 ok, 0 failed, 1 skipped" in quiet.stdout
    assert "content ids" not in quiet.stderr  # --quiet: no progress at all
