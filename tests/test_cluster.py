"""fervid on a real two-node Ray cluster started here, and the GPU check on the CPU.

The cluster is two `ray start --block` processes, each in its own session, temp dir and ports, with
token authentication on (a token made here): a head with one CPU and an `extract` resource, and a
second node with one CPU and a `classify` resource. The tests pin decode+detect to the head and the
classifier to the second node through `detector.resources` and `classifier.resources`. Afterwards
both process groups are ended by id; `ray stop` would end every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest
import ray

from pipeline.config import load_config
from pipeline.executor import connect
from tests.conftest import ROOT, TEST_CONFIG, wait_for
from tests.test_run import assert_same_rows, records, table

BIN = Path(sys.executable).parent  # ray, and the `python` a job's entrypoint runs
PINNED = ["--set", "detector.actors=1", "--set", "detector.resources={extract: 1}",
          "--set", "classifier.resources={classify: 1}"]
NODE_PORTS = ("node-manager", "object-manager", "dashboard-agent-listen", "dashboard-agent-grpc", "runtime-env-agent",
              "metrics-export")


@dataclass
class Cluster:
    gcs: str  # host:port, for `fervid run --address`
    client: str  # ray://host:port, Ray Client's server on the head
    dashboard: str  # http://host:port, for `fervid submit` and `fervid jobs`
    env: dict[str, str]  # for every process that talks to it: the token, the venv on PATH
    head_node: str  # Ray node ids
    classify_node: str


@pytest.fixture(scope="module")
def cluster(shared) -> Cluster:
    temp = Path(tempfile.mkdtemp(prefix="fray-", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    token = temp / "token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard, client, *ports = _free_ports(3 + 2 * len(NODE_PORTS))
    common = ["--block", "--num-cpus=1", "--object-store-memory=150000000", "--node-ip-address=127.0.0.1"]
    head = [f"--port={gcs}", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
            f"--ray-client-server-port={client}", "--resources={\"extract\": 1}"]
    worker = [f"--address=127.0.0.1:{gcs}", "--resources={\"classify\": 1}"]
    nodes = []
    try:
        for name, args, node_ports in (("head", ["--head", *head], ports[:len(NODE_PORTS)]),
                                         ("worker", worker, ports[len(NODE_PORTS):])):
            port_args = [f"--{what}-port={port}" for what, port in zip(NODE_PORTS, node_ports)]
            log = temp / f"{name}.log"
            nodes.append(subprocess.Popen(
                [BIN / "ray", "start", *args, *port_args, *common, f"--temp-dir={temp / name}"],
                env=env, start_new_session=True, stdout=log.open("w"), stderr=subprocess.STDOUT))
            wait_for(lambda: "Ray runtime started" in log.read_text() or nodes[-1].poll() is not None, 300)
            assert nodes[-1].poll() is None, log.read_text()[-3000:]
        url = f"http://127.0.0.1:{dashboard}"
        node_ids = json.loads(subprocess.run(
            [sys.executable, "-c", _NODE_IDS, url], env=env, capture_output=True, text=True, timeout=300,
            check=True).stdout)
        yield Cluster(f"127.0.0.1:{gcs}", f"ray://127.0.0.1:{client}", url, env, node_ids["extract"],
                      node_ids["classify"])
    finally:
        for node in reversed(nodes):
            _end_group(node)
        shutil.rmtree(temp, ignore_errors=True)


# Waits for the Jobs API and both nodes; prints {resource: node id} for the two custom resources.
_NODE_IDS = """
import json, sys, time
from ray.job_submission import JobSubmissionClient
from ray.util.state import list_nodes
for attempt in range(240):
    try:
        JobSubmissionClient(sys.argv[1]).list_jobs()
        nodes = [n for n in list_nodes(address=sys.argv[1]) if n.state == "ALIVE"]
        if len(nodes) == 2:
            break
    except Exception:
        pass
    time.sleep(1)
print(json.dumps({r: n.node_id for n in nodes for r in ("extract", "classify") if r in n.resources_total}))
"""


def fervid(*args: str | Path, env: dict[str, str], timeout_s: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout_s)


def test_submitted_job_gives_the_rows_of_a_local_run_with_work_on_both_nodes(cluster, shared, analysed, tmp_path):
    videos = _two_videos(shared, tmp_path)
    out = tmp_path / "results"
    result = fervid("submit", videos, "--out", out, "--address", cluster.dashboard, "--config", TEST_CONFIG,
                    *PINNED, env=cluster.env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    job_id = result.stdout.splitlines()[0]
    assert job_id.startswith("raysubmit_")
    assert "2 ok, 0 failed, 0 skipped" in result.stdout  # the job's own summary, followed from its logs
    assert f"job {job_id}: SUCCEEDED" in result.stderr
    assert_same_rows(out, analysed, videos=2)
    _assert_work_on_both_nodes(out, cluster)
    status = fervid("jobs", "status", job_id, "--address", cluster.dashboard, env=cluster.env)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout
    logs = fervid("jobs", "logs", job_id, "--address", cluster.dashboard, env=cluster.env)
    assert "2 ok, 0 failed" in logs.stdout


def test_stopping_a_submitted_job_leaves_only_complete_videos(cluster, shared, tmp_path):
    videos = _queue_of_videos(shared, tmp_path, copies=6)  # one done first; the job is stopped during the others
    out = tmp_path / "results"
    submitted = fervid("submit", videos, "--out", out, "--address", cluster.dashboard, "--config", TEST_CONFIG,
                       *PINNED, "--set", "classifier.batch_size=8", "--no-follow", env=cluster.env)  # commits early
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    wait_for(lambda: _ok_videos(out) >= 1, 600)
    stopped = fervid("jobs", "stop", job_id, "--address", cluster.dashboard, env=cluster.env)
    assert stopped.returncode == 130 and "STOPPED" in stopped.stdout, stopped.stdout + stopped.stderr
    assert not list(out.rglob("*.tmp"))
    ok = {r["video_id"]: r for r in records(out).to_pylist() if r["status"] == "ok"}
    assert 1 <= len(ok) < 7
    for name in ("faces", "frames"):  # every file on disk is a committed video's, and complete
        for path in (out / name).glob("video_id=*/*.parquet"):
            assert path.parent.name.removeprefix("video_id=") in ok, path
    frames = table(out, "frames").to_pandas()
    for video_id, record in ok.items():
        assert (frames.video_id == video_id).sum() == record["sampled_frames"] > 0


def test_ctrl_c_over_ray_client_cancels_the_run_and_its_actors(cluster, shared, tmp_path):
    videos = _queue_of_videos(shared, tmp_path, copies=6)
    out, log = tmp_path / "results", tmp_path / "stderr"
    with log.open("w") as stderr:
        run = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", videos, "--out", out, "--address",
                                cluster.client, "--config", TEST_CONFIG, *PINNED, "--set", "sampling.fps=20"],
                               cwd=ROOT, env=cluster.env, stdout=subprocess.DEVNULL, stderr=stderr)
        # The event: the first video committed, so Ray Data is running, with five videos of about 390 sampled
        # frames each still to do on the cluster's one CPU per stage (minutes), whatever the machine's load.
        wait_for(lambda: _ok_videos(out) >= 1 or run.poll() is not None, 600)
        assert run.poll() is None, log.read_text()[-3000:]
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=60) == 130, log.read_text()[-3000:]
    assert "fervid: interrupted" in log.read_text()
    statuses = [r["status"] for r in records(out).to_pylist()]
    assert 1 <= statuses.count("ok") < 7 and set(statuses) == {"ok"}  # nothing recorded as failed
    wait_for(lambda: _map_workers(cluster) == 0, 60)


def test_a_cancelled_child_task_anywhere_in_the_chain_means_the_run_was_cancelled():
    try:
        try:
            raise ray.exceptions.TaskCancelledError()
        except Exception as e:  # Ray Data re-raising it from its executor
            raise RuntimeError("the executor stopped") from e
    except RuntimeError as e:
        assert connect.cancelled(e)
    assert not connect.cancelled(RuntimeError("a real failure"))


_LOCAL_WORKER_ENV = """
import os, ray
from pipeline.executor import connect
connect.connect(None)
seen = ray.get(ray.remote(lambda: {n: os.environ.get(n) for n in connect.WORKER_ENV}).remote())
print(seen == connect.WORKER_ENV, ray.get_runtime_context().runtime_env == {})
"""


def test_a_local_rays_workers_inherit_fervids_variables_without_a_runtime_env():
    """No runtime_env on a local Ray: with one, Ray would start new workers for the first tasks instead of
    using those it started with."""
    env = {k: v for k, v in os.environ.items() if k not in connect.WORKER_ENV and k != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, "-c", _LOCAL_WORKER_ENV], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.split() == ["True", "True"], result.stderr[-2000:]


def test_every_config_in_configs_loads():
    names = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    assert {"default.yaml", "cpu.yaml", "gpu.yaml", "test.yaml"} <= set(names)
    for name in names:
        load_config(ROOT / "configs" / name)


def test_run_over_ray_client_gives_the_rows_of_a_local_run_and_its_exit_status(cluster, shared, analysed, tmp_path):
    """The run is one task in the cluster: its rows, record and exit status are those of a run on a node."""
    videos = _two_videos(shared, tmp_path)
    (videos / "broken.mp4").write_bytes(b"not a video")  # exit status 3: the run finished, a video failed
    out = tmp_path / "results"
    result = fervid("run", videos, "--out", out, "--address", cluster.client, "--config", TEST_CONFIG, *PINNED,
                    env=cluster.env)
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 ok, 1 failed, 0 skipped" in result.stdout
    assert_same_rows(out, analysed, videos=2)
    _assert_work_on_both_nodes(out, cluster)
    missing = fervid("run", tmp_path / "missing", "--out", out, "--config", TEST_CONFIG,
                     env={**cluster.env, "RAY_ADDRESS": cluster.client})
    assert missing.returncode == 1, missing.stderr[-3000:]  # the task's FervidError, as one line (after Ray's own)
    assert missing.stderr.splitlines()[-1] == f"fervid: error: input folder not found: {tmp_path / 'missing'}"
    assert "Traceback" not in missing.stderr


def test_eval_and_multi_worker_finetune_refuse_ray_client_in_one_line(cluster, shared, tmp_path):
    model = shared / "models" / "vit-fer-tiny"
    commands = {"Ray Data": ("eval", shared / "fer2013" / "test", "--model", model, "--filter", "PublicTest_1*"),
                "Ray Train": ("finetune", shared / "fer2013" / "train-sample", "--base", model, "--out",
                              tmp_path / "tuned", "--train-workers", "2", "--device", "cpu")}
    for library, command in commands.items():
        result = fervid(*command, "--address", cluster.client, env=cluster.env)
        assert result.returncode == 1, result.stderr[-3000:]
        assert result.stderr.splitlines()[-1].startswith(f"fervid: error: {library} does not run over Ray Client")


def test_detector_on_cuda_without_the_gpu_onnxruntime_is_one_clear_error():
    import onnxruntime

    from pipeline.detect import onnx_providers
    from pipeline.errors import FervidError

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(FervidError, match=r"fervid\[gpu\]"):
        onnx_providers("cuda")
    assert onnx_providers("auto") == ["CPUExecutionProvider"]


def test_gpu_check_runs_on_the_cpu_and_prints_its_table(cluster):
    """Joined to the cluster from outside (RAY_ADDRESS, as `fervid run --address` does): its end-to-end part is
    a `fervid run` whose workers get fervid's code from the driver, and no Ray of its own has to start."""
    result = subprocess.run([sys.executable, "-m", "jobs.gpu_check", "--tiny"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600, env={**cluster.env, "RAY_ADDRESS": cluster.gcs})
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ("classifier", "detector", "end to end", "GPU utilisation"):
        assert row in result.stdout, result.stdout


def _queue_of_videos(shared: Path, tmp_path: Path, copies: int) -> Path:
    """single_face.mp4 (done first: videos run in path order), then copies of WolfgangLanger_Pexels.mp4, each
    with its own content id (trailing bytes): work that is still running when the first video is committed."""
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(shared / "videos" / "single_face.mp4", videos / "0.mp4")
    for k in range(1, copies + 1):
        copy = videos / f"{k}.mp4"
        shutil.copy(shared / "videos" / "WolfgangLanger_Pexels.mp4", copy)
        with copy.open("ab") as f:
            f.write(b"\0" * k)
    return videos


def _two_videos(shared: Path, tmp_path: Path) -> Path:
    """A folder of two short videos from ../shared: one with a face, one without."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("single_face.mp4", "no_face.mp4"):
        shutil.copy(shared / "videos" / name, videos)
    return videos


def _assert_work_on_both_nodes(out: Path, cluster: Cluster) -> None:
    [run] = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    assert set(run["nodes"]["decode_detect_frames"]) == {cluster.head_node}
    assert set(run["nodes"]["classify_faces"]) == {cluster.classify_node}
    assert sum(run["nodes"]["decode_detect_frames"].values()) == run["sampled_frames"]
    assert sum(run["nodes"]["classify_faces"].values()) == run["faces"] > 0


def _map_workers(cluster: Cluster) -> int:
    """How many of Ray Data's actors are on the cluster and not dead (asked with the cluster's token, in a process)."""
    return int(subprocess.run([sys.executable, "-c", _MAP_WORKERS, cluster.dashboard], env=cluster.env,
                              capture_output=True, text=True, timeout=120, check=True).stdout)


_MAP_WORKERS = """
import sys
from ray.util.state import list_actors
actors = list_actors(address=sys.argv[1], filters=[("state", "!=", "DEAD")])
print(sum(a.class_name.startswith("MapWorker") for a in actors))
"""


def _ok_videos(out: Path) -> int:
    try:
        return sum(r["status"] == "ok" for r in records(out).to_pylist())
    except (ValueError, OSError, pa.ArrowInvalid):
        return 0


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _end_group(node: subprocess.Popen) -> None:
    """End one `ray start --block` and every process it started (its own session), by process group id."""
    for sig in (signal.SIGTERM, signal.SIGKILL):  # SIGKILL: whatever is still shutting down after 5 s
        try:
            os.killpg(node.pid, sig)
        except ProcessLookupError:
            return
        try:
            node.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
