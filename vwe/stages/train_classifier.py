"""Stage 1 (IRNet's train_cam): the multi-label classifier with visual words and HSPP (METHOD §1).

The loop is plain PyTorch. It runs in this process (`vwe.checkpoint.LocalSession`) or once per Ray Train worker
(`vwe.ray.train.RaySession`); the session owns devices, DDP, checkpoints and reporting.

Determinism, which exact resume relies on: the global batches of epoch e are a permutation seeded by (seed, e),
each worker takes its slice of every global batch, and item i of epoch e is augmented with a generator seeded by
(seed, e, i). So any step can be replayed from a checkpoint without replaying the data before it, and the batches
do not depend on the number of workers.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Sampler

from vwe.checkpoint import rng_state, set_rng_state, unwrap
from vwe.config import Config, TrainConfig
from vwe.data.datasets import ClassificationDataset
from vwe.errors import ConfigError
from vwe.io import atomic_path
from vwe.losses import classifier_loss
from vwe.models import Classifier, build_classifier

log = logging.getLogger(__name__)


class Session(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def wrap_model(self, model: nn.Module) -> nn.Module: ...
    def load_checkpoint(self) -> dict[str, Any] | None: ...
    def report(self, metrics: dict[str, Any], checkpoint: dict[str, Any] | None = None) -> None: ...


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
        raise ConfigError(f"train.batch_size={global_batch} must divide evenly over {world_size} workers")
    return global_batch // world_size


def poly_lr_factor(step: int, total_steps: int, power: float) -> float:
    """lr_t / lr_0 = (1 - t / T) ** power, set before every step from t = 0 (METHOD §1.6)."""
    return (1.0 - step / total_steps) ** power


def build_optimizer(model: Classifier, train: TrainConfig) -> torch.optim.SGD:
    """SGD over (backbone x1, new layers x new_layer_lr_mult); keyword arguments only (METHOD P1)."""
    backbone, new = model.param_groups()
    groups = [{"params": backbone, "lr_mult": 1.0}, {"params": new, "lr_mult": train.new_layer_lr_mult}]
    optimizer = torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    set_lr(optimizer, train.lr, 1.0)
    return optimizer


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group["lr_mult"] * factor


def train_step(model: nn.Module, batch: dict[str, Any], optimizer: torch.optim.Optimizer, cfg: Config,
               device: torch.device) -> dict[str, torch.Tensor]:
    """One optimisation step; returns the loss terms as detached device tensors (no host sync)."""
    images = batch["image"].to(device, non_blocking=True)
    labels = batch["labels"].to(device, non_blocking=True)
    if device.type == "cuda" and cfg.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    core = unwrap(model)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and cfg.train.amp):
        output = model(images)
    loss, terms = classifier_loss(output, labels, cfg.model, core.codebook_for_loss())
    if core.uses_memory_bank:
        # METHOD §1.7: the memory bank moves once per iteration, after the forward pass, before backward
        core.update_memory_bank(output.features.detach().float())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    terms["loss"] = loss.detach()
    return terms


def train(cfg: Config, session: Session, fault: dict[str, Any] | None = None) -> dict[str, Any]:
    """Trains (or resumes) the classifier; returns the last metrics, the step it resumed from and every report since.

    Rank 0 exports the final weights to `<out_dir>/classifier/`.

    `fault` is a test hook: {"step": k, "rank": r, "marker": path} raises once on rank r after step k.
    """
    train_cfg = cfg.train
    device = session.device
    torch.manual_seed(train_cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    dataset = ClassificationDataset(cfg.data.root, cfg.data.train_split, crop_size=train_cfg.crop_size,
                                    resize_long=tuple(train_cfg.resize_long), flip=train_cfg.flip,
                                    seed=train_cfg.seed)
    batch = per_worker_batch(train_cfg.batch_size, session.world_size)
    steps_per_epoch = len(dataset) // train_cfg.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"split {cfg.data.train_split!r} has {len(dataset)} images, fewer than one global batch "
                          f"(train.batch_size={train_cfg.batch_size})")
    total_steps = steps_per_epoch * train_cfg.epochs
    last_step = min(total_steps, train_cfg.max_steps) if train_cfg.max_steps > 0 else total_steps

    model = build_classifier(cfg).to(device)
    if device.type == "cuda" and train_cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, train_cfg)
    step = 0
    state = session.load_checkpoint()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        step = state["step"]
        if session.rank == 0:
            log.info("resuming from step %d of %d", step, last_step)
    wrapped = session.wrap_model(model)
    if train_cfg.compile:
        wrapped = torch.compile(wrapped)
    wrapped.train()

    meter = _Meter()
    metrics: dict[str, Any] = {"step": step}
    history: list[dict[str, Any]] = []
    while step < last_step:
        epoch, start = divmod(step, steps_per_epoch)
        dataset.set_epoch(epoch)
        sampler = EpochBatchSampler(len(dataset), train_cfg.batch_size, rank=session.rank,
                                    world_size=session.world_size, seed=train_cfg.seed, epoch=epoch, start=start)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=train_cfg.loader_workers,
                            pin_memory=device.type == "cuda")
        for data in loader:
            factor = poly_lr_factor(step, total_steps, train_cfg.poly_power)
            set_lr(optimizer, train_cfg.lr, factor)
            meter.add(train_step(wrapped, data, optimizer, cfg, device), images=batch * session.world_size)
            step += 1
            if fault and step == fault["step"] and session.rank == fault["rank"] and not Path(fault["marker"]).exists():
                Path(fault["marker"]).touch()
                raise RuntimeError(f"injected test fault at step {step} on rank {session.rank}")
            checkpoint_now = step % train_cfg.checkpoint_every == 0 or step % steps_per_epoch == 0 or step == last_step
            if step % train_cfg.log_every == 0 or checkpoint_now:
                losses = meter.summary()
                metrics = {"step": step, "epoch": step / steps_per_epoch, "lr": train_cfg.lr * factor, **losses}
                if session.rank == 0:
                    log.info("step %d/%d  epoch %.2f  %s  lr %.5f", step, last_step, metrics["epoch"],
                             "  ".join(f"{k} {v:.4f}" if k != "images_per_s" else f"{v:.1f} img/s"
                                       for k, v in losses.items()), metrics["lr"])
                history.append(metrics)
                checkpoint = None
                if checkpoint_now and session.rank == 0:
                    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                                  "rng": rng_state(), "config": cfg.to_dict()}
                session.report(metrics, checkpoint)
            if step >= last_step:
                break
    if session.rank == 0:
        export_model(model, cfg, Path(cfg.out_dir) / "classifier")
    return {**metrics, "resumed_from": state["step"] if state else 0, "history": history}


def export_model(model: nn.Module, cfg: Config, directory: Path) -> Path:
    """Writes `model.pth` (a plain state dict) and `config.yaml` beside it; returns the weights path."""
    weights = directory / "model.pth"
    with atomic_path(directory / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    with atomic_path(weights) as tmp:
        torch.save(unwrap(model).state_dict(), tmp)
    return weights


def load_trained_classifier(directory: str | Path, device: str | torch.device = "cpu") -> tuple[Classifier, Config]:
    """The exported classifier (`model.pth` + `config.yaml` in `directory`), in eval mode."""
    directory = Path(directory)
    cfg = Config.from_dict(yaml.safe_load((directory / "config.yaml").read_text()), source=str(directory / "config.yaml"))
    model = build_classifier(cfg, load_pretrained=False)
    model.load_state_dict(torch.load(directory / "model.pth", map_location="cpu", weights_only=True))
    return model.to(device).eval(), cfg


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

    def summary(self) -> dict[str, float]:
        out = {name: float(total) / self.count for name, total in self.sums.items()}
        elapsed = time.perf_counter() - self.start
        out["images_per_s"] = self.images / elapsed if elapsed > 0 else math.nan
        self.sums, self.count, self.images, self.start = {}, 0, 0, time.perf_counter()
        return out
