"""`fervid finetune`: the default model's recipe (ViT, Adam, cosine warm-up, rotations/flips/zooms) on labelled folders.

A plain torch loop on one device, or the same loop data-parallel in several Ray Train workers (DDP;
a GPU each, or CPUs). Images go through the same resizing (imagefolder.load_image) and
normalisation (classify.pixel_normalisation) as in `fervid run`, so the model learns from the input
it will later see. The output folder is a save_pretrained model that `fervid run --set
classifier.model=DIR` and `fervid eval --model DIR` load as it is. Checkpoints are whole models
plus the optimiser, schedule and random states, so an interrupted run resumes exactly.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.classify import pixel_normalisation
from pipeline.errors import FervidError
from pipeline.executor import train as ray_train
from pipeline.imagefolder import labelled_files, load_image, match_labels, scan
from pipeline.models import ClassifierSpec, resolve_classifier

if TYPE_CHECKING:
    import torch
    from transformers.image_processing_utils import BaseImageProcessor

CHECKPOINT_PREFIX, TRAINER_STATE = "checkpoint-", "trainer.pt"
LOG_FILE, METRICS_FILE = "train_log.jsonl", "metrics.json"
SCHEDULERS = ("cosine", "linear", "constant_with_warmup")


@dataclass
class Recipe:
    """Every setting that shapes the result; the defaults are trpakov/vit-face-expression's model card."""

    base: str = "google/vit-base-patch16-224-in21k"
    lr: float = 3e-5
    batch_size: int = 32
    grad_accum: int = 8  # micro-batches per optimiser step (effective batch 256)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 0.0  # 0: plain Adam
    max_grad_norm: float = 1.0  # 0: no clipping
    scheduler: str = "cosine"
    warmup_steps: int = 1000
    epochs: int = 3
    max_steps: int = 0  # stop after this many optimiser steps (0: epochs decide)
    seed: int = 42
    rotation: float = 15.0  # random rotation, degrees either way
    flip: float = 0.5  # probability of a horizontal flip
    zoom: float = 0.1  # random zoom by a factor within 1 +- zoom
    filter: str | None = None  # glob on training file names
    eval_filter: str | None = None  # glob on evaluation file names
    eval_steps: int = 0  # evaluate and log every N optimiser steps (0: every epoch)
    save_steps: int = 50  # checkpoint every N optimiser steps


class _Images:
    """Map-style dataset over image files: (uint8 (S, S, 3) tensor, label index)."""

    def __init__(self, paths: list[str], labels: np.ndarray, side: int) -> None:
        self.paths, self.labels, self.side = paths, labels, side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        import torch

        try:
            return torch.from_numpy(load_image(self.paths[i], self.side)), int(self.labels[i])
        except OSError as e:
            raise FervidError(f"cannot read image {self.paths[i]}: {e}") from None


@dataclass
class _Plan:
    """A fine-tune resolved and checked before any training, so that mistakes stop it early; sent to every worker."""

    out: Path
    recipe: Recipe
    spec: ClassifierSpec
    labels: list[str]
    keep_head: bool
    paths: list[str]
    targets: np.ndarray
    validation: tuple[list[str], np.ndarray] | None
    identity: dict
    checkpoint: Path | None


def finetune(train_dir: str | Path, out: str | Path, recipe: Recipe, eval_dir: str | Path | None = None,
             device: str = "auto", workers: int = 2, train_workers: int | None = None, address: str | None = None,
             log: Callable[[str], None] = print) -> dict:
    """Train, evaluating and checkpointing along the way; resume from out's last checkpoint if there is one.

    train_workers > 1 trains data-parallel in that many Ray Train workers (one GPU each where there are
    GPUs; worker 0 prints the log lines instead of calling log); None means one per GPU of the Ray
    cluster at address (or RAY_ADDRESS), else of this machine.
    """
    plan = _plan(train_dir, out, recipe, eval_dir)
    if train_workers is None:
        train_workers = 1 if device == "cpu" else ray_train.gpu_count(address)
    if train_workers < 1:
        raise FervidError("--train-workers must be at least 1")
    if train_workers == 1:
        return _train(plan, _local_device(device), workers, log)
    ray_train.train_on_ray(functools.partial(_train, plan, workers=workers), train_workers, device, address,
                           name=f"fervid-finetune-{plan.out.name}-{int(time.time())}")
    return json.loads((plan.out / METRICS_FILE).read_text())  # Ray Train returns metrics only with its checkpoints


def _local_device(device: str) -> str:
    """auto: the GPU where this machine has one."""
    import torch

    return device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


def _plan(train_dir: str | Path, out: str | Path, recipe: Recipe, eval_dir: str | Path | None) -> _Plan:
    _check(recipe)
    out = Path(out)
    checkpoint = _last_checkpoint(out)
    if checkpoint is None and out.exists() and any(out.iterdir()):
        raise FervidError(f"{out} is not empty and holds no checkpoint to resume; choose a new --out folder")

    spec = resolve_classifier(recipe.base)
    train = scan(train_dir, recipe.filter)
    labels, keep_head = _labels(list(train), list(spec.labels))
    paths, targets = labelled_files(train, {name: labels.index(name) for name in train})
    validation = None
    if eval_dir is not None:
        folders = scan(eval_dir, recipe.eval_filter)
        match = match_labels(list(folders), labels)
        if not match.exact:
            raise FervidError(match.mismatch(f"the training folders ({', '.join(labels)})"))
        validation = labelled_files(folders, match.index)
    identity = {"recipe": asdict(recipe), "train_dir": str(Path(train_dir).resolve()), "labels": labels,
                "train_images": len(paths)}
    return _Plan(out, recipe, spec, labels, keep_head, paths, targets, validation, identity, checkpoint)


def _train(plan: _Plan, device: str, workers: int, log: Callable[[str], None], rank: int = 0,
           world: int = 1) -> dict:
    """The training loop of one process: the only one, or worker `rank` of `world` under Ray Train.

    Each worker takes rows rank::world of every micro-batch (and of its augmentation draws), and DDP
    averages the gradients, so the optimiser sees the recipe's batches whatever the worker count;
    worker 0 alone evaluates and writes.
    """
    import torch
    from transformers import AutoImageProcessor, get_scheduler
    from transformers.utils import logging as hf_logging

    from pipeline.evaluate import metrics  # here, not at the top: the CLI imports this module for Recipe

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    recipe, out, checkpoint, paths, validation = plan.recipe, plan.out, plan.checkpoint, plan.paths, plan.validation
    lead, cuda = rank == 0, torch.device(device).type == "cuda"
    torch.manual_seed(recipe.seed)
    state = torch.load(checkpoint / TRAINER_STATE, weights_only=True) if checkpoint else None
    if state is not None and state["identity"] != plan.identity:
        raise FervidError(f"{out} holds a checkpoint of a different fine-tune (other data or settings); "
                          f"use the same command to resume it, or a new --out folder")
    source = str(checkpoint) if checkpoint else plan.spec.source
    model = bare = _load_model(source, plan.labels, plan.keep_head or checkpoint is not None).to(device).train()
    if world > 1:  # under Ray Train, which has set up the process group; DDP starts from worker 0's weights
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[torch.device(device).index] if cuda else None)
    processor = AutoImageProcessor.from_pretrained(source)
    scale, shift = pixel_normalisation(processor, device)

    batches_per_epoch = math.ceil(len(paths) / recipe.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / recipe.grad_accum)
    total = recipe.max_steps or recipe.epochs * steps_per_epoch
    log_every = recipe.eval_steps or steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(recipe.adam_beta1, recipe.adam_beta2),
                                  eps=recipe.adam_eps, weight_decay=recipe.weight_decay)
    scheduler = get_scheduler(recipe.scheduler, optimizer, num_warmup_steps=recipe.warmup_steps,
                              num_training_steps=total)
    augment_rng = torch.Generator().manual_seed(recipe.seed)
    if state is None:
        state = {"identity": plan.identity, "step": 0, "rows": [], "train_s": 0.0, "loss_sum": 0.0, "loss_steps": 0}
    else:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        augment_rng.set_state(state["augment_rng"])
        torch.set_rng_state(state["torch_rng"])
        log(f"resuming from {checkpoint.name} (step {state['step']} of {total})")

    head = "kept from the base model" if plan.keep_head else "new"
    where = f"{world} workers ({torch.device(device).type})" if world > 1 else device
    log(f"fine-tuning {recipe.base} on {len(paths)} images, {len(plan.labels)} labels ({', '.join(plan.labels)}; "
        f"head {head}); {total} steps of {recipe.batch_size}x{recipe.grad_accum} images, {steps_per_epoch} per epoch, "
        f"on {where}")
    log(_row_text(None))
    for row in state["rows"]:
        log(_row_text(row))

    images = _Images(paths, plan.targets, plan.spec.input_size)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    step = first = state["step"]
    started, eval_s = time.monotonic(), 0.0
    last_report: dict | None = None
    while step < total:
        epoch, first_step = divmod(step, steps_per_epoch)
        batches = _epoch_batches(len(paths), recipe.batch_size, recipe.seed + epoch)[first_step * recipe.grad_accum:]
        shards = [_shard(len(batch), rank, world) for batch in batches]
        loader = iter(torch.utils.data.DataLoader(
            images, batch_sampler=[batch[rows] for batch, (rows, _) in zip(batches, shards)], num_workers=workers,
            pin_memory=cuda))
        for g in range(0, len(batches), recipe.grad_accum):
            group = batches[g:g + recipe.grad_accum]
            count = sum(len(b) for b in group)
            loss_sum = 0.0
            for i, batch in enumerate(group):
                rows, weight = shards[g + i]
                pixels, y = next(loader)
                theta = _augmentation(len(batch), recipe, augment_rng)[rows]
                x = _resample(pixels.to(device).permute(0, 3, 1, 2).float(), theta)
                with autocast:
                    logits = model(pixel_values=x * scale + shift).logits.float()
                loss = torch.nn.functional.cross_entropy(logits, y.to(device), reduction="sum") * weight
                # DDP averages over the workers, and all-reduces once per step, on the last micro-batch
                sync = model.no_sync() if world > 1 and i < len(group) - 1 else contextlib.nullcontext()
                with sync:
                    (loss * world / count).backward()
                loss_sum += loss.item()
            if world > 1:
                loss_sum = _sum_over_workers(loss_sum, device)
            if recipe.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            state.update(step=step, loss_sum=state["loss_sum"] + loss_sum / count, loss_steps=state["loss_steps"] + 1)
            if step % log_every == 0 or step == total:
                row = {"step": step, "epoch": round(step / steps_per_epoch, 2),
                       "train_loss": state["loss_sum"] / state["loss_steps"], "lr": scheduler.get_last_lr()[0]}
                if validation is not None and lead:
                    eval_started = time.monotonic()
                    probs = _predict(bare, _Images(*validation, plan.spec.input_size), recipe.batch_size, scale,
                                     shift, device, workers)
                    last_report = metrics(validation[1], probs, plan.labels)
                    eval_s += time.monotonic() - eval_started
                    row.update(val_loss=last_report["loss"], accuracy=last_report["accuracy"])
                state["rows"].append(row)
                state.update(loss_sum=0.0, loss_steps=0)
                log(_row_text(row))
                if lead:
                    _write_log(out, state["rows"])
            if step == total:
                break
            if step % recipe.save_steps == 0 and lead:
                _save_checkpoint(out, bare, processor, optimizer, scheduler, augment_rng,
                                 {**state, "train_s": state["train_s"] + time.monotonic() - started})

    session_s = time.monotonic() - started
    summary = {
        "base": recipe.base, "labels": plan.labels, "head": head, "train_images": len(paths),
        "eval_images": len(validation[0]) if validation else 0, "steps": total,
        "epochs": round(total / steps_per_epoch, 2), "device": torch.device(device).type, "workers": world,
        "wall_s": state["train_s"] + session_s,
        # this session's optimiser steps per second, evaluation excluded (checkpoints included)
        "steps_per_s": (total - first) / max(session_s - eval_s, 1e-9),
        "final_eval": last_report, "recipe": asdict(recipe),
    }
    if lead:
        bare.save_pretrained(out)
        processor.save_pretrained(out)
        _write_log(out, state["rows"])
        (out / METRICS_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        for old in out.glob(CHECKPOINT_PREFIX + "*"):
            shutil.rmtree(old)
    return summary


def _shard(size: int, rank: int, world: int) -> tuple[slice, float]:
    """The rows of a micro-batch for this worker, and their loss weight.

    A worker left without rows (a last micro-batch smaller than the worker count) takes the first
    row at weight 0: DDP's gradient all-reduce needs every worker to run forward and backward.
    """
    return (slice(rank, None, world), 1.0) if rank < size else (slice(0, 1), 0.0)


def _sum_over_workers(value: float, device: str) -> float:
    """The sum of value over the workers of a data-parallel run (on the device: NCCL reduces only GPU tensors)."""
    import torch
    import torch.distributed as dist

    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total.item())


def _check(recipe: Recipe) -> None:
    r = recipe
    if r.scheduler not in SCHEDULERS:
        raise FervidError(f"--scheduler must be one of {', '.join(SCHEDULERS)}")
    if min(r.batch_size, r.grad_accum, r.epochs, r.save_steps) < 1:
        raise FervidError("--batch-size, --grad-accum, --epochs and --save-steps must be at least 1")
    if min(r.warmup_steps, r.max_steps, r.eval_steps, r.weight_decay, r.max_grad_norm, r.rotation) < 0:
        raise FervidError("--warmup-steps, --max-steps, --eval-steps, --weight-decay, --max-grad-norm and "
                          "--rotation must not be negative")
    if not (r.lr > 0 and r.adam_eps > 0 and 0 <= r.adam_beta1 < 1 and 0 <= r.adam_beta2 < 1
            and 0 <= r.flip <= 1 and 0 <= r.zoom < 1):
        raise FervidError("--lr and --adam-eps must be positive, the Adam betas and --zoom in [0, 1), --flip in [0, 1]")


def _labels(folders: list[str], base_labels: list[str]) -> tuple[list[str], bool]:
    """The folder names as labels; in the base model's order (keeping its head) when they are its labels."""
    match = match_labels(folders, base_labels)
    if match.exact:
        by_index = {i: folder for folder, i in match.index.items()}
        return [by_index[i] for i in range(len(base_labels))], True
    return sorted(folders), False


def _load_model(source: str, labels: list[str], keep_head: bool) -> torch.nn.Module:
    """The base model with a head for these labels: its own if it already has them, else a fresh one."""
    import torch
    from transformers import AutoModelForImageClassification

    try:
        model = AutoModelForImageClassification.from_pretrained(
            source, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)}, ignore_mismatched_sizes=not keep_head,
            use_safetensors=True, trust_remote_code=False, dtype=torch.float32, attn_implementation="sdpa")
    except (OSError, ValueError) as e:
        raise FervidError(f"cannot load the weights of {source} ({str(e).splitlines()[0][:160]})") from None
    if not keep_head:
        # ignore_mismatched_sizes only renews a head of another shape; one of the same shape
        # would still carry the base model's meaning of each output.
        head = getattr(model, "classifier", None)
        if head is None:
            raise FervidError(f"{source} has no `classifier` head to replace")
        for module in head.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return model


def _epoch_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    """The epoch's shuffled micro-batches; a function of the seed alone, so resuming replays the same order."""
    order = np.random.default_rng(seed).permutation(n)
    return [order[i:i + batch_size].tolist() for i in range(0, n, batch_size)]


def _augmentation(n: int, recipe: Recipe, rng: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) affine maps for a random rotation, horizontal flip and zoom of each of n images.

    Drawn for a whole micro-batch, so every worker of a data-parallel run draws the same and keeps its rows.
    """
    import torch

    angle = (torch.rand(n, generator=rng) * 2 - 1) * math.radians(recipe.rotation)
    zoom = 1 + (torch.rand(n, generator=rng) * 2 - 1) * recipe.zoom
    flip = torch.where(torch.rand(n, generator=rng) < recipe.flip, -1.0, 1.0)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    zero = torch.zeros(n)
    # output -> input coordinates: rotate, scale by 1/zoom, mirror x
    return torch.stack([torch.stack([cos * flip, -sin, zero], 1), torch.stack([sin * flip, cos, zero], 1)], 1)


def _resample(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """(N, 3, S, S) float pixels through their affine maps, in one resampling on the device."""
    import torch.nn.functional as F

    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _predict(model: torch.nn.Module, images: _Images, batch_size: int, scale: torch.Tensor, shift: torch.Tensor,
             device: str, workers: int) -> np.ndarray:
    """Probabilities for every image, in order, without augmentation."""
    import torch

    model.eval()
    probs = []
    cuda = torch.device(device).type == "cuda"
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        for pixels, _ in torch.utils.data.DataLoader(images, batch_size=batch_size, num_workers=workers):
            x = pixels.to(device).permute(0, 3, 1, 2).float() * scale + shift
            probs.append(torch.softmax(model(pixel_values=x).logits.float(), dim=-1).cpu().numpy())
    model.train()
    return np.concatenate(probs)


def _last_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint (its trainer state is written last)."""
    done = [p for p in out.glob(CHECKPOINT_PREFIX + "*") if (p / TRAINER_STATE).is_file()]
    return max(done, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)), default=None)


def _save_checkpoint(out: Path, model: torch.nn.Module, processor: BaseImageProcessor,
                     optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                     augment_rng: torch.Generator, state: dict) -> None:
    """A loadable model plus everything needed to continue; older checkpoints go once it is complete."""
    import torch

    folder = out / f"{CHECKPOINT_PREFIX}{state['step']}"
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    torch.save({**state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "augment_rng": augment_rng.get_state(), "torch_rng": torch.get_rng_state()},
               folder / TRAINER_STATE)
    for old in out.glob(CHECKPOINT_PREFIX + "*"):
        if old != folder:
            shutil.rmtree(old)


def _write_log(out: Path, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / LOG_FILE).write_text("".join(json.dumps(row) + "\n" for row in rows))


def _row_text(row: dict | None) -> str:
    """One line of the model card's table; the header when row is None."""
    if row is None:
        return f"{'Training Loss':>13}  {'Epoch':>6}  {'Step':>6}  {'Validation Loss':>15}  {'Accuracy':>8}"
    val = f"{row['val_loss']:15.4f}  {row['accuracy']:8.4f}" if "val_loss" in row else f"{'-':>15}  {'-':>8}"
    return f"{row['train_loss']:13.4f}  {row['epoch']:6.2f}  {row['step']:6d}  {val}"
