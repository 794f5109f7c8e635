"""Stage 4: DeepLab v2 trained on the pseudo labels, as deeplab-pytorch trains it (METHOD §5).

Global batch 10 split over the workers and two accumulated sub-batches (the authors' 5 x 2, METHOD P13), 321
crops, one of 5 scales per image, SGD momentum 0.9 with weight decay 5e-4, poly LR from 2.5e-4 over 20,000 steps
updated every 10, ASPP at 10x / 20x, BN frozen, cross-entropy (255 ignored) summed over the 4 MSC outputs, on Ray
Train. The loop itself is `vwe.training.run`, shared with the classifier (progress, checkpoints, resume, fault
recovery).
Output: `<out_dir>/deeplab/model.pth` + `config.yaml`; checkpoints in `<ray storage>/train_seg/`.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vwe import storage, training
from vwe.accelerator import Accelerator
from vwe.checkpoint import export_model, read_export, unwrap
from vwe.io import MetricsLog
from vwe.config import Config, SegConfig
from vwe.data.datasets import SegmentationDataset
from vwe.data.voc import IGNORE
from vwe.models.deeplab import DeepLabV2, MultiScaleDeepLab, build_deeplab, caffe_input
from vwe.models.weights import check_weights
from vwe.ray.train import fit
from vwe.run_folder import RunFolder
from vwe.stages.stage import Stage

NAME = "train_seg"


def labels_dir(cfg: Config) -> str | Path:
    """Where the training labels are (a folder or URI): `seg.labels_dir`, by default IRNet's labels
    (`<out_dir>/sem_seg_labels`) with pseudo.method = irnet, else `<out_dir>/pseudo_labels`."""
    run = RunFolder.of(cfg)
    return storage.join(cfg.seg.labels_dir or (run.sem_seg_labels if cfg.pseudo.method == "irnet" else
                                               run.pseudo_labels))


def _missing_labels_hint(cfg: Config) -> str:
    if cfg.seg.labels_dir:
        return "check seg.labels_dir"
    return "run `vwe make-sem-seg` first" if cfg.pseudo.method == "irnet" else "run `vwe make-pseudo` first"


def build_optimizer(model: DeepLabV2, seg: SegConfig) -> torch.optim.Optimizer:
    """SGD (or AdamW) over the backbone convs (x1), ASPP weights (x10) and ASPP biases (x20, no weight decay);
    keywords only."""
    groups = model.param_groups(seg.weight_decay, seg.aspp_weight_lr_mult, seg.aspp_bias_lr_mult)
    return training.make_optimizer(seg.optimizer, groups, seg.lr, seg.momentum, seg.weight_decay)


def resize_labels(labels: Tensor, size: Sequence[int]) -> Tensor:
    """N x H x W integer labels -> N x size nearest-neighbour, sampling pixel centres as PIL's NEAREST does."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    resized = F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest-exact")
    return resized[:, 0].long()


def msc_loss(outputs: Sequence[Tensor], labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Cross-entropy (255 ignored) of every MSC output against the labels resized to its size, summed.

    Each term averages over the output's valid pixels; a term with none is 0 (not NaN: a crop can land entirely
    on ignored pixels, which pseudo labels have many of).
    """
    total = torch.zeros((), device=labels.device)
    terms: dict[str, Tensor] = {}
    fused = len(outputs) - 1 if len(outputs) > 1 else None  # the max fusion comes last, when there are scales
    for i, logits in enumerate(outputs):
        target = resize_labels(labels, logits.shape[-2:])
        valid = (target != IGNORE).sum().clamp(min=1)
        term = F.cross_entropy(logits.float(), target, ignore_index=IGNORE, reduction="sum") / valid
        terms["loss_max" if i == fused else f"loss_{i}"] = term.detach()
        total = total + term
    return total, terms


def train_step(model: nn.Module, batch: dict[str, Any], optimizer: torch.optim.Optimizer,
               cfg: Config) -> dict[str, Tensor]:
    """One optimisation step over `seg.accumulation` equal sub-batches, as deeplab-pytorch's iter_size: each
    sub-batch's MSC loss averages over its own valid pixels, and the step takes the mean of their gradients. With
    no ignored pixel that equals one pass over the whole batch; when the sub-batches ignore different shares of
    their pixels, it weights their pixels differently. Returns the loss terms (means over the sub-batches) as
    detached device tensors (no host sync)."""
    accel = Accelerator.of(cfg.seg, next(unwrap(model).parameters()).device)
    images = accel.inputs(batch["image"])
    labels = batch["label"].to(accel.device, non_blocking=True)
    parts = cfg.seg.accumulation
    optimizer.zero_grad(set_to_none=True)
    terms: dict[str, Tensor] = {}
    for i, (part_images, part_labels) in enumerate(zip(images.chunk(parts), labels.chunk(parts))):
        # DDP all-reduces the gradients once, with the last sub-batch's backward pass
        last = i == parts - 1
        with contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
            with accel.autocast():
                outputs = model(part_images)
            loss, part_terms = msc_loss(outputs, part_labels)
            (loss / parts).backward()
        for name, value in {**part_terms, "loss": loss.detach()}.items():
            terms[name] = terms.get(name, 0) + value / parts
    optimizer.step()
    return terms


def train(cfg: Config, session: training.Session, fault: dict[str, Any] | None = None) -> dict[str, Any]:
    """Trains (or resumes) DeepLab on `data.train_split` with the labels of `labels_dir(cfg)`; rank 0 exports the
    final weights to `<out_dir>/deeplab/`."""
    seg = cfg.seg
    torch.manual_seed(seg.seed)
    accel = Accelerator.of(seg, session.device)
    dataset = SegmentationDataset(cfg.data.root, cfg.data.train_split, labels_dir(cfg), crop_size=seg.crop_size,
                                  scales=seg.scales, flip=seg.flip, caffe=caffe_input(seg), seed=seg.seed,
                                  hint=_missing_labels_hint(cfg))
    schedule = training.Schedule(
        batch_size=seg.batch_size, total_steps=seg.iterations, lr=seg.lr, poly_power=seg.poly_power, seed=seg.seed,
        log_every=seg.log_every, checkpoint_every=seg.checkpoint_every, loader_workers=seg.loader_workers,
        max_steps=seg.max_steps, lr_every=seg.lr_every)
    base = build_deeplab(seg, cfg.data.num_classes + 1)
    model = accel.prepare(MultiScaleDeepLab(base, seg.train_msc_scales))
    optimizer = build_optimizer(base, seg)
    result = training.run(session, model, optimizer, dataset, functools.partial(train_step, cfg=cfg), schedule,
                          cfg.to_dict(), compile_model=accel.compile, fault=fault,
                          on_report=MetricsLog(RunFolder.of(cfg).metrics(NAME)).add if session.rank == 0 else None)
    if session.rank == 0:
        export_model(base, cfg, RunFolder.of(cfg).deeplab)
    return result


def load_trained_deeplab(directory: str | Path, device: str | torch.device = "cpu") -> tuple[DeepLabV2, Config]:
    """The exported DeepLab (`model.pth` + `config.yaml` in `directory`, a folder or URI), in eval mode."""
    state, cfg = read_export(directory, "train-seg")
    model = build_deeplab(cfg.seg, cfg.data.num_classes + 1, load_pretrained=False)
    model.load_state_dict(state)
    return model.to(device).eval(), cfg


def check_inputs(cfg: Config) -> None:
    """What the workers will read, checked here first: the training split, its labels and the init weights."""
    dataset = SegmentationDataset(cfg.data.root, cfg.data.train_split, labels_dir(cfg), hint=_missing_labels_hint(cfg))
    training.steps_per_epoch(len(dataset), cfg.seg.batch_size, cfg.data.train_split)
    if cfg.seg.pretrained:
        check_weights(cfg.seg.pretrained, key="seg.pretrained")


def train_deeplab(cfg: Config, *, resume: bool = False, restart: bool = False,
                  fault: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stage 4 on Ray Train (`vwe train-seg`); returns rank 0's last metrics, the step it resumed from and every
    report."""
    check_inputs(cfg)
    return fit(cfg, NAME, train, num_workers=cfg.seg.num_workers, resume=resume, restart=restart, fault=fault)


def run(cfg: Config) -> dict[str, Any]:
    result = train_deeplab(cfg)
    result.pop("history")
    return {**result, "images": cfg.seg.batch_size * (result["step"] - result["resumed_from"])}


STAGE = Stage(
    name=NAME, run=run,
    is_complete=lambda cfg: storage.is_file(storage.join(RunFolder.of(cfg).deeplab, "model.pth")),
    outputs=lambda cfg: [RunFolder.of(cfg).deeplab, RunFolder.of(cfg).train_run(NAME),
                         RunFolder.of(cfg).metrics(NAME)],
    depends_on=("data.train_split", "data.num_classes", "seg.backbone", "seg.init", "seg.pretrained",
                "seg.labels_dir", "seg.batch_size", "seg.accumulation", "seg.iterations", "seg.lr", "seg.lr_every",
                "seg.optimizer",
                "seg.aspp_weight_lr_mult", "seg.aspp_bias_lr_mult", "seg.momentum", "seg.weight_decay",
                "seg.poly_power", "seg.crop_size", "seg.scales", "seg.flip", "seg.train_msc_scales",
                "seg.aspp_rates", "seg.amp", "seg.channels_last", "seg.compile", "seg.fuse_bn", "seg.seed",
                "seg.max_steps"))
