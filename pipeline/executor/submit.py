"""`fervid submit` and `fervid jobs`: the analysis as a Ray job on a running cluster, via Ray's Job Submission API.

The job runs `python -m jobs.analyze` on the cluster with this copy of fervid's code (py_modules) and
the run configuration as validated and resolved here (model paths made absolute), so the cluster runs
exactly what was checked at submission. Videos and results must be paths that every node of the
cluster sees or URIs (s3://, gs://) every node can reach, local model paths paths every node sees;
fervid and its dependencies must be installed on every node.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import yaml

from pipeline import storage
from pipeline.config import Config
from pipeline.errors import FervidError
from pipeline.executor.connect import CODE_EXCLUDES, project_code

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

JOB_CONFIG = "fervid-job.yaml"  # the resolved configuration, in the job's working directory


@contextmanager
def jobs_api(address: str | None) -> Iterator[JobSubmissionClient]:
    """A client for the Jobs API at address (default: RAY_API_SERVER_ADDRESS or RAY_ADDRESS, as for `ray job`).

    Its failures (unreachable, refused, unknown job) become one-line errors.
    """
    from ray.job_submission import JobSubmissionClient

    try:
        yield JobSubmissionClient(address)
    except FervidError:
        raise
    except Exception as e:  # the SDK raises requests', aiohttp's, Ray's and plain RuntimeErrors
        lines = str(e).strip().splitlines() or [type(e).__name__]
        raise FervidError(f"Ray Jobs API at {address or 'RAY_ADDRESS'}: {lines[0][:300]}") from None


def submit(client: JobSubmissionClient, videos: str, out: str, config: Config, force: bool = False) -> str:
    """Submit one analysis of videos into out; returns the job id."""
    videos, out = cluster_paths(videos, out)
    args = [videos, "--out", out, "--config", JOB_CONFIG]
    entrypoint = shlex.join(["python", "-m", "jobs.analyze", *args, *(["--force"] if force else [])])
    with tempfile.TemporaryDirectory(prefix="fervid-job-") as folder:  # uploaded by submit_job before it returns
        Path(folder, JOB_CONFIG).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        runtime_env = {"working_dir": folder, "py_modules": project_code(), "excludes": CODE_EXCLUDES}
        return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)


def cluster_paths(*paths: str) -> list[str]:
    """Local paths made absolute, as the cluster's nodes must see them (they do not share our working
    directory); URIs (s3://, gs://) as they are."""
    return [path if storage.is_uri(path) else os.path.abspath(path) for path in paths]


def follow(client: JobSubmissionClient, job_id: str, stream: TextIO = sys.stdout) -> JobDetails:
    """Copy the job's logs to stream as they come, until it ends; returns its final details."""
    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            stream.write(lines)
            stream.flush()

    asyncio.run(tail())
    return wait(client, job_id)


def stop(client: JobSubmissionClient, job_id: str, timeout_s: float = 120.0) -> JobDetails:
    """Ask the job to stop (SIGTERM: it keeps what it has committed) and wait until it has."""
    client.stop_job(job_id)
    return wait(client, job_id, timeout_s)


def wait(client: JobSubmissionClient, job_id: str, timeout_s: float | None = None) -> JobDetails:
    """The job's details once it has ended (or, after timeout_s, as they are)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        job = client.get_job_info(job_id)
        if job.status.is_terminal() or (deadline is not None and time.monotonic() > deadline):
            return job
        time.sleep(0.5)


def describe(job: JobDetails) -> str:
    """One line: id, status, and Ray's message about it."""
    return f"job {job.submission_id}: {job.status.value}" + (f" ({job.message.strip()})" if job.message else "")


def exit_code(job: JobDetails, stopped: int, failed: int) -> int:
    """0 succeeded, `stopped` stopped, else the entrypoint's own exit status (3: some videos failed), or `failed`."""
    from ray.job_submission import JobStatus

    if job.status == JobStatus.SUCCEEDED:
        return 0
    if job.status == JobStatus.STOPPED:
        return stopped
    return job.driver_exit_code if job.driver_exit_code and job.driver_exit_code > 0 else failed
