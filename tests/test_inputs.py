"""The videos users actually have, and a first hour without surprises: containers, duplicates, settings that
combine, model errors, a terminal with fervid's lines only, and query tables that show every column."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import av
import pytest

from pipeline.decode import read_frames
from tests.conftest import ROOT, TEST_CONFIG
from tests.test_cli import assert_one_line_error, fervid

# (file name, container format FFmpeg writes it with): broadcast, camcorder, web, Matroska and phone files
CONTAINERS = [("broadcast.ts", "mpegts"), ("camcorder.MTS", "mpegts"), ("web.flv", "flv"), ("film.mkv", "matroska"),
              ("phone.3gp", "3gp")]


def encode(frames: list, target: Path, container: str) -> Path:
    """RGB frames as H.264 at 30 fps in the given container format."""
    with av.open(str(target), "w", format=container) as out:
        stream = out.add_stream("libx264", rate=30)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode(None))
    return target


@pytest.fixture(scope="module")
def containers(shared, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("containers")
    source = shared / "videos" / "single_face.mp4"
    frames = [frame for _, frame in read_frames(str(source), "decord", range(72))]
    for k, (name, container) in enumerate(CONTAINERS):  # each from its own first frame: its own content
        encode(frames[k:], folder / name, container)
    (folder / "original.mp4").write_bytes(source.read_bytes())
    (folder / "renamed copy.mp4").write_bytes(source.read_bytes())
    (folder / "notes.txt").write_text("not a video\n")
    (folder / "cover.jpg").write_bytes((shared / "images" / "faces" / "pyfeat" / "single_face.jpg").read_bytes())
    return folder


@pytest.fixture(scope="module")
def container_run(containers, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("container_results")
    result = fervid("run", containers, "--out", out, "--config", TEST_CONFIG, "--set", "sampling.every_n_frames=24")
    return result, out


def test_common_containers_are_found_and_analysed_and_the_rest_is_counted(container_run):
    result, out = container_run
    assert result.returncode == 0, result.stderr[-3000:]
    # five remuxed containers and the original; every_n_frames=24 alone: 3 of single_face.mp4's 72 frames each
    assert re.search(r": 6 ok, 0 failed, 1 skipped \(1 duplicate: renamed copy.mp4 = original.mp4\); 18 frames, 18 faces",
                     result.stdout), result.stdout
    assert "2 files not taken (.jpg 1, .txt 1; inputs.extensions lists what is)" in result.stderr


def test_a_renamed_copy_is_listed_and_accepted_wherever_a_video_is_named(container_run, containers, tmp_path):
    _, out = container_run
    copy, original = containers / "renamed copy.mp4", containers / "original.mp4"
    report = fervid("report", out, "--out", tmp_path / "report", "--video", copy)
    assert report.returncode == 0, report.stderr
    pages = sorted(p.name for p in (tmp_path / "report").glob("*.html") if p.name not in ("index.html", "overview.html"))
    index = (tmp_path / "report" / "index.html").read_text()
    assert len(pages) == 1 and pages[0] in index  # the original's page, asked for by the copy's path
    assert 'id="duplicates"' in index and "renamed copy.mp4" in index
    annotated = fervid("annotate", out, "--video", copy, "--out", tmp_path / "copy.mp4")
    assert annotated.returncode == 0 and "3 of 3 sampled frames" in annotated.stdout, annotated.stderr
    # a file never seen by fervid but with the same content is found by its content
    third = tmp_path / "third.mp4"
    third.write_bytes(original.read_bytes())
    assert fervid("annotate", out, "--video", third, "--out", tmp_path / "third-annotated.mp4").returncode == 0


def test_both_sampling_keys_set_with_set_is_one_error(containers, tmp_path):
    result = fervid("run", containers, "--out", tmp_path / "r", "--set", "sampling.fps=2",
                    "--set", "sampling.every_n_frames=24")
    assert_one_line_error(result, "sampling.fps and sampling.every_n_frames are both set with --set")


def test_a_mistyped_model_folder_is_not_found_and_two_broken_models_are_one_error(containers, shared, tmp_path):
    out = tmp_path / "r"
    typo = str(shared / "models" / "vit-fer-tiy")
    assert_one_line_error(fervid("run", containers, "--out", out, "--config", TEST_CONFIG,
                                 "--set", f"classifier.model={typo}"), f"classifier model not found: {typo}")
    both = fervid("run", containers, "--out", out, "--config", TEST_CONFIG, "--set", f"classifier.model={typo}",
                  "--set", "detector.model=models/scrfd.onnx")
    assert_one_line_error(both, "2 problems with the models", "detector model not found: models/scrfd.onnx",
                          f"classifier model not found: {typo}")
    assert not out.exists()


def test_on_a_terminal_a_run_prints_fervids_lines_only_and_the_log_keeps_ffmpegs(containers, tmp_path):
    """FFmpeg complains about a damaged stretch from inside a Ray worker: the log keeps it, the terminal does not."""
    source = (containers / "original.mp4").read_bytes()
    damaged = bytearray(source)
    damaged[len(source) // 2: len(source) // 2 + 50_000] = bytes(50_000)
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "damaged.mp4").write_bytes(bytes(damaged))
    out = tmp_path / "r"
    command = [sys.executable, "-m", "pipeline.cli", "run", str(tmp_path / "videos"), "--out", str(out),
               "--config", str(TEST_CONFIG)]
    screen = _on_a_terminal(command)
    lines = [line.strip() for line in re.split(r"[\r\n]+", re.sub(r"\x1b\[K", "", screen)) if line.strip()]
    fervids = re.compile(r"^(reading content ids|probing videos|starting workers|videos \d+/\d+|run \S+: |"
                         r"Ray's, FFmpeg's and the workers' own messages: )")
    assert lines and all(fervids.match(line) for line in lines), lines
    [log] = (out / "logs").glob("*.log")
    assert lines[-1].endswith(str(log))
    assert "Invalid NAL unit size" in log.read_text()


def _on_a_terminal(command: list[str]) -> str:
    """What a command shows on a terminal (a pty for its stdout and stderr), read until it exits."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 600)
        assert ready, "no output for 10 minutes"
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the follower side closed: the process and its children are done with the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=600) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode(errors="replace")


def test_query_tables_show_every_column_unless_told_a_width(analysed):
    sql = "SELECT * FROM video_summary"
    wide = fervid("query", analysed, sql)
    assert wide.returncode == 0 and "…" not in wide.stdout.splitlines()[1]  # the header row: no column left out
    assert "peak_surprise" in wide.stdout
    narrow = fervid("query", analysed, sql, "--max-width", "100")
    assert "│ … │" in narrow.stdout and max(map(len, narrow.stdout.splitlines())) <= 100

