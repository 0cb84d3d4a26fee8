"""Starting or joining Ray, knowing when a run was cancelled, and Ray's own figures for the bench."""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import FervidError

IN_SUBMITTED_JOB = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray in the environment of a submitted job's entrypoint
CODE_EXCLUDES = ["__pycache__", "*.pyc"]
QUIET_RAY_LOGGERS = (
    "ray.data._internal.progress",  # "Progress bars disabled": fervid shows its own
    "ray._private.authentication.authentication_token_setup",  # "Token authentication is enabled" (Ray's default)
)
WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # for every worker
LOCAL = "local"  # ray.init's address for a Ray of this process's own, whatever /tmp/ray says is running


@functools.cache
def project_code() -> list[str]:
    """The folders of fervid's packages, as a Ray runtime_env's py_modules, laid out as the wheel lays them
    out: a driver running on the cluster (a submitted job, a ray:// run) reads the SQL views from pipeline/sql.
    From a checkout, where sql/ lies beside the package, the package is copied once per process to add it."""
    package = Path(__file__).resolve().parents[1]
    jobs = str(package.parent / "jobs")
    if (package / "sql").is_dir():
        return [str(package), jobs]
    copy = Path(tempfile.mkdtemp(prefix="fervid-code-")) / "pipeline"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns(*CODE_EXCLUDES))
    shutil.copytree(package.parent / "sql", copy / "sql")
    return [str(copy), jobs]


def cluster_address(address: str | None) -> str | None:
    """The cluster to join: address, else RAY_ADDRESS; None means a Ray of fervid's own.

    `auto` joins the cluster started on this machine (`ray start --head`) on purpose.
    """
    return address or os.environ.get("RAY_ADDRESS") or None


def connect(address: str | None) -> None:
    """Join the cluster at address (or RAY_ADDRESS); otherwise start a Ray of this process's own.

    Without an address Ray is started with address="local": a plain ray.init() would join whatever
    cluster /tmp/ray/ray_current_cluster names, and hang for minutes where that cluster has died.
    Joining a cluster from outside a submitted job carries this copy of fervid's code to its workers,
    so they run the same code as the driver (a submitted job carries it already, see submit.py). A
    ray:// address joins over Ray Client, where Ray Data cannot run: see client.py.
    """
    import ray
    from ray.data import DataContext

    context = DataContext.get_current()  # also where Ray is up: a run inside a Ray task (client.py)
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    for choice in QUIET_RAY_LOGGERS:  # their warnings only restate what fervid chose, on every run
        logging.getLogger(choice).setLevel(logging.ERROR)
    if ray.is_initialized():
        return
    address = cluster_address(address)
    if address:
        runtime_env = {"env_vars": dict(WORKER_ENV)}
        if IN_SUBMITTED_JOB not in os.environ:
            runtime_env.update(py_modules=project_code(), excludes=CODE_EXCLUDES)
        ray.init(address=address, logging_level=logging.WARNING, runtime_env=runtime_env)
    else:
        # A local Ray's workers inherit this process's environment. A runtime_env would pass the same
        # variables but keep Ray from using the workers it starts with: it starts new ones for the
        # first tasks (1.2 s more before the first probe returned, measured).
        for name, value in WORKER_ENV.items():
            os.environ.setdefault(name, value)
        ray.init(address=LOCAL, include_dashboard=False, logging_level=logging.WARNING)


def shutdown() -> None:
    import ray

    ray.shutdown()


def resources() -> dict[str, float]:
    """The cluster's total resources (CPU, GPU, custom ones)."""
    import ray

    return ray.cluster_resources()


def refuse_ray_client(what: str) -> None:
    """One clear line where a Ray library needs a process of the cluster's own and this one is a Ray Client."""
    import ray

    if ray.util.client.ray.is_connected():
        raise FervidError(f"{what} does not run over Ray Client (ray://; only fervid run takes such addresses): "
                          "run this on a node of the cluster with --address HEAD:6379")


def cancelled(error: BaseException) -> bool:
    """Whether error comes from this task being cancelled: Ray cancels its child tasks first, and Ray Data
    raises their TaskCancelledError from wherever it was waiting on one."""
    import ray

    while error is not None:
        if isinstance(error, ray.exceptions.TaskCancelledError):
            return True
        error = error.__cause__ or error.__context__
    return False


def worker_memory(rss: Callable[[int], int], children: Callable[[set[int]], list[int]]) -> Callable[[], int]:
    """A reading of the summed resident memory of this Ray instance's workers (children of its raylets)."""
    import ray

    node = ray._private.worker.global_worker.node
    raylets = {info.process.pid for info in node.all_processes.get("raylet", [])}
    return lambda: sum(rss(pid) for pid in children(raylets))


def spilled_mib() -> int:
    """MiB this Ray instance has spilled from its object store to disk so far."""
    import ray

    stats = ray._private.internal_api.memory_summary(ray.get_runtime_context().gcs_address, stats_only=True)
    spilled = re.search(r"Spilled (\d+) MiB", stats)
    return int(spilled.group(1)) if spilled else 0
