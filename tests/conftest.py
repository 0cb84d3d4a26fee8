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
CHROMIUM = shutil.which("chromium")
# As root and offline: no sandbox, and no background connections that the closed network refuses.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

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


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser):
    """Opens a file in a new tab; returns the page and what went wrong in it: console errors, uncaught
    exceptions and any alert/confirm dialog (a script that should never have run)."""
    pages = []

    def opener(path: Path):
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        pages.append(page)
        problems: list[str] = []
        page.on("console", lambda m: problems.append(f"console {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"exception {e}"))
        page.on("dialog", lambda d: (problems.append(f"dialog {d.message}"), d.dismiss()))
        page.goto(path.as_uri(), wait_until="load")
        return page, problems

    yield opener
    for page in pages:
        page.close()
