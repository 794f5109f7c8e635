"""The training loop shared by the classifier (stage 1) and DeepLab (stage 4): data order, poly LR, progress,
checkpoints, resume. A stage supplies the model, optimizer, dataset and one-step function.

A loop runs in this process (`vwe.checkpoint.LocalSession`) or once per Ray Train worker
(`vwe.ray.train.RaySession`); the session owns devices, DDP, checkpoints and reporting. Nothing here imports Ray.

Determinism, which exact resume relies on: the global batches of epoch e are a permutation seeded by (seed, e),
each worker takes its slice of every global batch, and a dataset with `set_epoch` augments item i of epoch e with
a generator seeded by (seed, e, i). So any step can be replayed from a checkpoint without replaying the data
before it, and the batches do not depend on the number of workers.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from vwe.checkpoint import rng_state, set_rng_state
from vwe.io import duration
from vwe.errors import ConfigError

log = logging.getLogger(__name__)


class Session(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def wrap_model(self, model: nn.Module) -> nn.Module: ...
    def load_checkpoint(self) -> dict[str, Any] | None: ...
    def report(self, metrics: dict[str, Any], checkpoint: dict[str, Any] | None = None) -> None: ...


@dataclass
class Schedule:
    """How long and how a loop runs; `total_steps` spans the LR schedule, `last_step` may stop it early."""

    batch_size: int  # global
    total_steps: int
    lr: float
    poly_power: float
    seed: int
    log_every: int
    checkpoint_every: int
    loader_workers: int
    max_steps: int = 0  # > 0: stop after this many steps (the LR schedule still spans total_steps)
    lr_every: int = 1  # steps between LR updates (deeplab-pytorch updates its poly LR every 10)

    @property
    def last_step(self) -> int:
        return min(self.total_steps, self.max_steps) if self.max_steps > 0 else self.total_steps


class EpochBatchSampler(Sampler[list[int]]):
    """This worker's share of each global batch of one epoch, from batch `start` on (drop_last)."""

    def __init__(self, num_items: int, global_batch: int, *, rank: int, world_size: int, seed: int, epoch: int,
                 start: int = 0):
        self.num_items, self.global_batch = num_items, global_batch
        self.per_worker = global_batch // world_size
        self.rank, self.seed, self.epoch, self.start = rank, seed, epoch, start

    def __len__(self) -> int:
        return max(0, self.num_items // self.global_batch - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng((self.seed, self.epoch)).permutation(self.num_items)
        for b in range(self.start, self.num_items // self.global_batch):
            batch = order[b * self.global_batch:(b + 1) * self.global_batch]
            yield batch[self.rank * self.per_worker:(self.rank + 1) * self.per_worker].tolist()


def per_worker_batch(global_batch: int, world_size: int) -> int:
    if global_batch % world_size:
        raise ConfigError(f"batch size {global_batch} must divide evenly over {world_size} workers")
    return global_batch // world_size


def steps_per_epoch(dataset_size: int, global_batch: int, split: str) -> int:
    steps = dataset_size // global_batch
    if steps == 0:
        raise ConfigError(f"split {split!r} has {dataset_size} images, fewer than one global batch of {global_batch}")
    return steps


def poly_lr_factor(step: int, total_steps: int, power: float, every: int = 1) -> float:
    """lr_t / lr_0 = (1 - t' / T) ** power with t' = t rounded down to a multiple of `every`: set before every step
    from t = 0 (METHOD §1.6), held for `every` steps (METHOD §5)."""
    return (1.0 - (step - step % every) / total_steps) ** power


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> None:
    """Each param group carries an `lr_mult`; its LR is base_lr * lr_mult * factor."""
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group["lr_mult"] * factor


def make_optimizer(name: str, groups: list[dict[str, Any]], lr: float, momentum: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW over param groups that carry an `lr_mult`, LRs set for step 0; keywords only
    (METHOD P1). A group's own `weight_decay` wins over `weight_decay`."""
    if name == "sgd":
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif name == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be sgd or adamw, got {name!r}")
    set_lr(optimizer, lr, 1.0)
    return optimizer


def optimize(optimizer: torch.optim.Optimizer, loss: torch.Tensor,
             terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Backward and update for a step function; returns `terms` plus the detached total `loss` (no host sync)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {**terms, "loss": loss.detach()}


StepFn = Callable[[nn.Module, dict[str, Any], torch.optim.Optimizer], dict[str, torch.Tensor]]


def run(session: Session, model: nn.Module, optimizer: torch.optim.Optimizer, dataset: Dataset, step_fn: StepFn,
        schedule: Schedule, config: dict[str, Any], compile_model: bool = False,
        fault: dict[str, Any] | None = None,
        epoch_end: Callable[[nn.Module, int], dict[str, float]] | None = None,
        on_report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Trains from the session's last checkpoint (or step 0) to `schedule.last_step`.

    `step_fn(model, batch, optimizer)` does one optimisation step and returns loss terms as detached device
    tensors; they are averaged and read (the only host sync) every `log_every` steps and at checkpoints.
    Returns the last metrics, the step it resumed from and every report since. `epoch_end(model, epochs_done)`
    (optional) runs on rank 0 at each epoch end (an evaluation, an export); the metrics it returns join that step's
    report (the other ranks report the step without them). `on_report(metrics)` (optional) gets rank 0's reports
    (a metrics file). `fault` is a test hook: {"step": k, "rank": r, "marker": path} raises once on rank r after
    step k.
    """
    per_epoch = steps_per_epoch(len(dataset), schedule.batch_size, "training")
    batch = per_worker_batch(schedule.batch_size, session.world_size)
    step = 0
    state = session.load_checkpoint()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        step = state["step"]
        if session.rank == 0:
            log.info("resuming from step %d of %d", step, schedule.last_step)
    resumed_from = step
    if session.rank == 0:
        log.info("training steps %d to %d: %d per epoch, global batch %d over %d worker(s)", step, schedule.last_step,
                 per_epoch, schedule.batch_size, session.world_size)
    wrapped = session.wrap_model(model)
    if compile_model:
        wrapped = torch.compile(wrapped)
    wrapped.train()

    meter = _Meter()
    started = time.perf_counter()
    # a run resumed at its last step trains nothing and still says where it is
    metrics: dict[str, Any] = {"step": step, "epoch": step / per_epoch}
    history: list[dict[str, Any]] = []
    while step < schedule.last_step:
        epoch, start = divmod(step, per_epoch)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        sampler = EpochBatchSampler(len(dataset), schedule.batch_size, rank=session.rank,
                                    world_size=session.world_size, seed=schedule.seed, epoch=epoch, start=start)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=schedule.loader_workers,
                            pin_memory=session.device.type == "cuda", collate_fn=getattr(dataset, "collate_fn", None))
        for data in loader:
            factor = poly_lr_factor(step, schedule.total_steps, schedule.poly_power, schedule.lr_every)
            set_lr(optimizer, schedule.lr, factor)
            meter.add(step_fn(wrapped, data, optimizer), images=batch * session.world_size)
            step += 1
            if fault and step == fault["step"] and session.rank == fault["rank"] and not Path(fault["marker"]).exists():
                Path(fault["marker"]).touch()
                raise RuntimeError(f"injected test fault at step {step} on rank {session.rank}")
            checkpoint_now = (step % schedule.checkpoint_every == 0 or step % per_epoch == 0
                              or step == schedule.last_step)
            if step % schedule.log_every == 0 or checkpoint_now:
                losses = meter.summary()
                if not math.isfinite(losses["loss"]):
                    # a diverged run only gets worse; stop before a checkpoint or export keeps NaN weights
                    raise FloatingPointError(
                        f"the loss is {losses['loss']} at step {step}: training diverged; lower the learning rate")
                metrics = {"step": step, "epoch": step / per_epoch, "lr": schedule.lr * factor, **losses}
                if epoch_end is not None and step % per_epoch == 0 and session.rank == 0:
                    metrics.update(epoch_end(model, step // per_epoch))
                    meter.restart_clock()  # the evaluation is not training time
                history.append(metrics)
                if session.rank == 0 and on_report is not None:
                    on_report(metrics)
                if session.rank == 0:
                    left = (time.perf_counter() - started) / (step - resumed_from) * (schedule.last_step - step)
                    log.info("step %d/%d  epoch %.2f  %s  lr %.6f  ETA %s", step, schedule.last_step, metrics["epoch"],
                             "  ".join(f"{k} {v:.4f}" if k != "images_per_s" else f"{v:.1f} img/s"
                                       for k, v in losses.items()), metrics["lr"], duration(left))
                checkpoint = None
                if checkpoint_now and session.rank == 0:
                    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                                  "rng": rng_state(), "config": config}
                session.report(metrics, checkpoint)
            if step >= schedule.last_step:
                break
    return {**metrics, "resumed_from": resumed_from, "history": history}


class _Meter:
    """Averages loss terms between reports; reading them is the only host-device sync of the loop."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.images = 0
        self.start = time.perf_counter()

    def add(self, terms: dict[str, torch.Tensor], images: int) -> None:
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0) + value
        self.count += 1
        self.images += images

    def restart_clock(self) -> None:
        self.start = time.perf_counter()

    def summary(self) -> dict[str, float]:
        out = {name: float(total) / self.count for name, total in self.sums.items()}
        elapsed = time.perf_counter() - self.start
        out["images_per_s"] = self.images / elapsed if elapsed > 0 else math.nan
        self.sums, self.count, self.images, self.start = {}, 0, 0, time.perf_counter()
        return out
