"""Shared fixtures: the real models and videos in ../shared, and one real run over them.

Tests that need ../shared skip (not fail) where it is absent. Nothing is downloaded:
the test config points at ../shared/models.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TEST_CONFIG = ROOT / "configs" / "test.yaml"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test that reaches for the hub fails instead of downloading
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session")
def shared() -> Path:
    if not (SHARED / "models").is_dir():
        pytest.skip(f"{SHARED} (real models and videos) is not present")
    return SHARED


@pytest.fixture(scope="session")
def test_config():
    from pipeline.config import load_config

    return load_config(TEST_CONFIG)


@pytest.fixture(scope="session")
def analysed(shared, test_config, tmp_path_factory) -> Path:
    """RESULTS of one real `fervid run` over ../shared/videos with the test config (read-only for tests)."""
    from pipeline.runner import Runner

    out = tmp_path_factory.mktemp("results")
    summary = Runner(shared / "videos", out, test_config, show_progress=False).run()
    assert summary.counts == {"ok": 5, "failed": 0, "skipped": 0}
    return out


@pytest.fixture
def results_copy(analysed, tmp_path) -> Path:
    """A private copy of the shared run's results, for tests that write to them."""
    copy = tmp_path / "results"
    shutil.copytree(analysed, copy)
    return copy


def wait_for(condition: Callable[[], bool], timeout_s: float = 300, every_s: float = 0.2) -> None:
    """Until condition() holds (another process's state, asked every every_s), or fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every_s)
