"""`fervid run --address ray://HEAD:10001`: the whole run as one Ray task inside the cluster, over Ray Client.

Ray Data does not run over Ray Client (ray-project/ray#48682): its executor needs a process of the
cluster's own. So the client only connects (connect carries this copy of fervid's code) and runs
Runner.run as a task that asks for no CPU, so it keeps no worker slot from the run's own actors. The
task's progress lines reach the client through Ray Client's log streaming, its RunSummary comes back
as its result. Videos and results are paths on the cluster's nodes or URIs, as for `fervid submit`.
"""

from __future__ import annotations

from pipeline.config import Config
from pipeline.errors import FervidError
from pipeline.executor.connect import cluster_address, connect
from pipeline.executor.submit import cluster_paths
from pipeline.runner import Runner, RunSummary

STOP_WAIT_S = 60.0  # after Ctrl-C: how long to wait for the cancelled run to end, so it lets go of RESULTS


def over_client(address: str | None) -> bool:
    """Whether address (or RAY_ADDRESS) is a Ray Client address, ray://HOST:PORT."""
    return (cluster_address(address) or "").startswith("ray://")


def run_in_cluster(videos: str, out: str, config: Config, address: str | None, force: bool = False,
                   show_progress: bool = True) -> RunSummary:
    """Runner(videos, out, config).run() as a Ray task in the cluster at the ray:// address; Ctrl-C cancels it.

    A FervidError in the task is raised here as itself, so the CLI prints its one line as for a local run.
    """
    import ray

    videos, out = cluster_paths(videos, out)
    connect(address)
    # max_retries=0: a run whose process dies fails here, as a local one would; running it again resumes it
    run = ray.remote(num_cpus=0, max_retries=0, name="fervid run")(_run).remote(videos, out, config, force, show_progress)
    try:
        return ray.get(run)
    except KeyboardInterrupt:
        # Ends its process, and with it the actors it owns, at once, keeping what a local Ctrl-C keeps (each
        # video is committed whole). A plain cancel fails Ray Data's tasks first, which the run then records
        # as failed videos; with recursive=False it did not stop the run at all (Ray 2.60).
        ray.cancel(run, force=True)
        ray.wait([run], timeout=STOP_WAIT_S)
        raise
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, FervidError):
            raise e.cause from None
        raise


def _run(videos: str, out: str, config: Config, force: bool, show_progress: bool) -> RunSummary:
    """The task: a plain local-style run, since in a process of the cluster Ray Data works as on a node."""
    return Runner(videos, out, config, force=force, show_progress=show_progress).run()
