"""Nothing lost, whatever happens: hostile inputs in one batch, killed workers, a killed driver,
an unwritable partition, refused model formats. Files are built here from ../shared material."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest

from pipeline.errors import FervidError
from pipeline.models import resolve_classifier
from pipeline.runner import Runner
from tests.conftest import ROOT, TEST_CONFIG, wait_for
from tests.media import read_photo, write_video
from tests.test_run import records, table, video_rows

HOSTILE_NAMES = ["interview with spaces.mp4", "entrevista_niño_ü.mp4", "it's \"quoted\".mp4"]


@pytest.fixture(scope="module")
def hostile_run(shared, test_config, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    videos = shared / "videos"
    source = (videos / "WolfgangLanger_Pexels.mp4").read_bytes()
    damaged = bytearray(source)
    damaged[len(source) // 2: len(source) // 2 + 200_000] = bytes(200_000)
    (folder / "damaged_middle.mp4").write_bytes(bytes(damaged))
    frames = [f for f in _frames(shared, 10)]
    portrait = read_photo(shared / "images" / "faces" / "dlib" / "Tom_Cruise_avp_2014_4.jpg")
    portrait = cv2.resize(portrait, (452, 640))[:, 46:406]  # upright, 360 wide and 640 high
    sideways = np.ascontiguousarray(np.rot90(portrait, 1))  # as a phone sensor records it
    write_video(folder / "phone_portrait.mp4", (sideways for _ in range(10)), fps=5, rotation=-90)
    photo = read_photo(shared / "images" / "faces" / "pyfeat" / "multi_face.jpg")
    big = np.ascontiguousarray(np.pad(photo, ((0, 2160 - photo.shape[0]), (0, 3840 - photo.shape[1]), (0, 0))))
    write_video(folder / "uhd_4k.mp4", (big for _ in range(5)), fps=5)
    times = list(np.concatenate([np.arange(0, 2, 1 / 30), 2 + np.arange(0, 2, 1 / 10)]))
    write_video(folder / "variable_rate.mp4", (frames[k % len(frames)] for k in range(len(times))), fps=30,
                times_s=times)
    for name in HOSTILE_NAMES:
        shutil.copy(videos / "single_face.mp4", folder / name)
        with open(folder / name, "ab") as f:  # its own content, so it is not skipped as a duplicate
            f.write(name.encode())
    (folder / "loop").mkdir()
    os.symlink(folder, folder / "loop" / "back")
    os.symlink(folder / "gone.mp4", folder / "dangling.mp4")
    os.mkfifo(folder / "pipe.mp4")
    out = tmp_path_factory.mktemp("hostile_results")
    summary = Runner(folder, out, test_config, show_progress=False).run()
    by_name = {Path(r["path"]).name: r for r in records(out).to_pylist()}
    return out, summary, by_name


def _frames(shared: Path, n: int) -> list[np.ndarray]:
    from pipeline.decode import read_frames

    return [f for _, f in read_frames(str(shared / "videos" / "single_face.mp4"), "decord", range(0, 6 * n, 6))]


def test_damaged_frames_cost_only_themselves(hostile_run):
    results, _, by_name = hostile_run
    record = by_name["damaged_middle.mp4"]
    assert record["status"] == "ok" and "could not be decoded and were skipped" in record["error"]
    frames = video_rows(results, "frames", "damaged_middle.mp4")
    assert 40 <= len(frames) < 99 and (frames.face_count >= 1).mean() > 0.9


def test_rotated_phone_video_is_analysed_upright(hostile_run):
    results, _, by_name = hostile_run
    record = by_name["phone_portrait.mp4"]
    assert (record["status"], record["rotation"], record["width"], record["height"]) == ("ok", 90, 360, 640)
    faces = video_rows(results, "faces", "phone_portrait.mp4")
    assert len(faces) == 10  # the face is found in every frame: the detector saw it upright
    assert (faces.x2 <= 360).all() and (faces.y2 <= 640).all() and (faces.y2 - faces.y1 > faces.x2 - faces.x1).all()


def test_4k_and_variable_frame_rate(hostile_run, test_config):
    results, _, by_name = hostile_run
    assert (by_name["uhd_4k.mp4"]["width"], by_name["uhd_4k.mp4"]["height"]) == (3840, 2160)
    assert (video_rows(results, "frames", "uhd_4k.mp4").face_count == 5).all()
    frames = video_rows(results, "frames", "variable_rate.mp4").sort_values("pts_s")
    assert len(frames) == 20 and np.allclose(np.diff(frames.pts_s), 0.2, atol=0.02)


def test_hostile_names_links_and_pipes(hostile_run):
    results, summary, by_name = hostile_run
    for name in HOSTILE_NAMES:
        assert by_name[name]["status"] == "ok" and len(video_rows(results, "faces", name)) == 12
    for name in ("dangling.mp4", "pipe.mp4"):
        assert by_name[name]["status"] == "failed" and "not a regular file" in by_name[name]["error"]
    assert summary.counts["failed"] == 2 and summary.counts["ok"] == 4 + len(HOSTILE_NAMES)


def test_unwritable_partition_fails_that_video_only(shared, test_config, tmp_path):
    from pipeline.models import file_digest

    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("single_face.mp4", "no_face.mp4"):
        shutil.copy(shared / "videos" / name, folder / name)
    out = tmp_path / "results"
    blocked = out / "faces" / f"video_id={file_digest(folder / 'single_face.mp4')}"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where the partition folder should be")
    summary = Runner(folder, out, test_config, show_progress=False).run()
    by_name = {Path(r["path"]).name: r for r in records(out).to_pylist()}
    assert by_name["single_face.mp4"]["status"] == "failed" and "cannot write results" in by_name["single_face.mp4"]["error"]
    assert by_name["no_face.mp4"]["status"] == "ok" and summary.counts == {"ok": 1, "failed": 1, "skipped": 0}


def test_pickle_checkpoints_and_remote_code_are_refused(shared, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(shared / "models" / "vit-fer-tiny" / "config.json", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"pickle data")
    with pytest.raises(FervidError, match="no .safetensors weights"):
        resolve_classifier(str(pickled))
    remote = tmp_path / "remote"
    shutil.copytree(shared / "models" / "vit-fer-tiny", remote)
    config = json.loads((remote / "config.json").read_text())
    config.update(model_type="sneaky", auto_map={"AutoConfig": "sneaky.SneakyConfig"})
    (remote / "config.json").write_text(json.dumps(config))
    (remote / "sneaky.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(FervidError, match="asks to run its own code"):
        resolve_classifier(str(remote))


def _content(results: Path) -> dict[str, pa.Table]:
    """Visible rows of every ok video, without run ids or scores (which may differ in the last bits)."""
    ok = {r["video_id"] for r in records(results).to_pylist() if r["status"] == "ok"}
    out = {}
    for name in ("faces", "frames"):
        rows = table(results, name).to_pandas()
        rows = rows[rows.video_id.isin(ok)]
        keep = [c for c in rows.columns if not (c.startswith("p_") or c in ("run_id", "confidence", "landmarks"))]
        out[name] = rows[keep].sort_values(keep[:4] if name == "faces" else ["video_id", "frame_index"]).reset_index(drop=True)
    return out


def _start_run(videos: Path, out: Path, *settings: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "pipeline.cli", "run", str(videos), "--out", str(out), "--config", str(TEST_CONFIG),
               "--quiet", *(arg for setting in settings for arg in ("--set", setting))]
    return subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _ok_videos(out: Path) -> int:
    try:
        return sum(r["status"] == "ok" for r in records(out).to_pylist())
    except (ValueError, OSError, pa.ArrowInvalid):
        return 0


def test_killed_worker_loses_nothing(shared, analysed, tmp_path):
    """A decode+detect+classify actor is killed mid-run; Ray restarts it and its segment is run again.

    classifier.actors 0 (this machine's default), so videos are committed one by one while the actors
    work: a separate classifier actor could start so late that every video lands at once, at the end.
    """
    out = tmp_path / "results"
    run = _start_run(shared / "videos", out, "classifier.actors=0")
    victims = []

    def extract_worker() -> bool:
        victims[:] = [pid for pid in _pids() if _cmdline(pid).startswith(b"ray::StageActor")]
        return bool(victims) and _ok_videos(out) >= 1

    wait_for(extract_worker)
    os.kill(victims[0], signal.SIGKILL)
    _, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stderr.decode()[-2000:]
    assert all(r["status"] == "ok" for r in records(out).to_pylist())
    expected, got = _content(analysed), _content(out)
    for name in ("faces", "frames"):
        assert got[name].equals(expected[name]), name


class _DiesOnVideo:
    """A stage whose process dies on the video "crash", every time, as it would in a crashing decoder."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        if batch["video_id"][0].as_py() == "crash":
            os._exit(1)
        return batch


def test_a_segment_that_kills_its_worker_every_time_fails_alone(shared):
    """The actor pool of the default CPU layout: the other segments come back whole, the crashing one as
    lost (which fails its video), and the workers go on probing after it."""
    import ray
    from ray import cloudpickle

    from pipeline.executor import connect
    from pipeline.executor.pool import RETRIES, ActorPool

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import the tests
    connect.connect(None)
    segments = [{"video_id": name, "segment_index": 0} for name in ("a", "crash", "b", "c")]
    pool = ActorPool(_DiesOnVideo, {}, 2, {"num_cpus": 0.5})
    try:
        lost = lambda segment, why: pa.table({"video_id": [segment["video_id"]], "lost": [why]})  # noqa: E731
        out = pa.concat_tables(pool.run(segments, lost), promote_options="default").to_pylist()
        video = shared / "videos" / "single_face.mp4"
        probed = dict(pool.probe({str(video): "v", str(shared / "README.md"): "w"}))
    finally:
        pool.close()
    assert sorted(r["video_id"] for r in out) == ["a", "b", "c", "crash"]
    assert [r["lost"] for r in out if r["video_id"] == "crash"] == [f"its worker died {RETRIES + 1} times (a crash in the decoder?)"]
    assert all(r["lost"] is None for r in out if r["video_id"] != "crash")
    assert probed[str(video)].frame_count > 0 and isinstance(probed[str(shared / "README.md")], Exception)
    assert ray.is_initialized()


def test_killed_driver_then_rerun_equals_an_uninterrupted_run(shared, analysed, tmp_path):
    out = tmp_path / "results"
    run = _start_run(shared / "videos", out, "classifier.actors=0")  # videos commit one by one: see above
    wait_for(lambda: _ok_videos(out) >= 1)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait(timeout=60)
    # what queries may see now: only committed videos, each complete
    for record in records(out).to_pylist():
        assert record["status"] == "ok"
        assert len(video_rows(out, "frames", Path(record["path"]).name)) == record["sampled_frames"]
    again = _start_run(shared / "videos", out)
    stdout, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr.decode()[-2000:]
    assert "0 failed" in stdout.decode()
    expected, got = _content(analysed), _content(out)
    for name in ("faces", "frames"):
        assert got[name].equals(expected[name]), name


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
