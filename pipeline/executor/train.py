"""`fervid finetune --train-workers N`: the training loop in N Ray Train workers, data-parallel."""

from __future__ import annotations

import sys
from collections.abc import Callable

from pipeline.errors import FervidError
from pipeline.executor.connect import cluster_address, connect, refuse_ray_client


def gpu_count(address: str | None) -> int:
    """GPUs of the Ray cluster being joined, else of this machine (without starting Ray for it); at least 1."""
    if cluster_address(address):
        import ray

        connect(address)
        return max(1, int(ray.cluster_resources().get("GPU", 0)))
    import torch

    return max(1, torch.cuda.device_count())


def train_on_ray(loop: Callable[..., object], workers: int, device: str, address: str | None, name: str) -> None:
    """loop(device=, log=, rank=, world=) in `workers` Ray Train workers, a GPU each (or CPUs and gloo).

    Ray Train sets up torch's process group, so the loop wraps its model in DistributedDataParallel itself.
    Worker 0's log lines reach this terminal through Ray's worker output; the others log nothing. A
    FervidError in a worker is raised here as itself.
    """
    import ray
    from ray.train import RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    connect(address)
    refuse_ray_client("Ray Train")  # untested there; its workers' output and checkpoints assume a cluster process
    kind = "GPU" if device == "cuda" or (device == "auto" and ray.cluster_resources().get("GPU", 0) > 0) else "CPU"
    have = int(ray.cluster_resources().get(kind, 0))
    if have < workers:
        raise FervidError(f"--train-workers {workers} needs a {kind} each; the Ray cluster has {have}")
    trainer = TorchTrainer(_worker, train_loop_config={"loop": loop},
                           scaling_config=ScalingConfig(num_workers=workers, use_gpu=kind == "GPU"),
                           run_config=RunConfig(name=name))
    try:
        trainer.fit()
    except TrainingFailedError as e:
        known = [f for f in getattr(e, "worker_failures", {}).values() if isinstance(f, FervidError)]
        if known:
            raise FervidError(str(known[0])) from None
        raise


def _worker(config: dict) -> None:
    """Ray Train's loop on each worker: the loop on the device Ray Train gave it, worker 0 printing the log."""
    import ray.train
    from ray.train.torch import get_device

    context = ray.train.get_context()
    rank = context.get_world_rank()
    config["loop"](device=str(get_device()), log=_write_line if rank == 0 else (lambda line: None), rank=rank,
                   world=context.get_world_size())


def _write_line(line: str) -> None:
    """To standard output, which Ray forwards; not print, which Ray Train makes log every line twice."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
