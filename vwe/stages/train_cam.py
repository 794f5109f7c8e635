"""Stage 1 (IRNet's train_cam): the multi-label classifier with visual words and HSPP (METHOD §1), on Ray Train.

The optimisation follows METHOD §1.6: global batch 16 split over the workers, poly LR with new layers at 10x,
weight decay 1e-4, 6 epochs of train_aug. The loop itself is `vwe.training.run`; `train` runs on every Ray Train
worker. Output: `<out_dir>/classifier/model.pth` + `config.yaml`; checkpoints in `<ray storage>/train_cam/`.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vwe import evaluation, storage, training
from vwe.accelerator import Accelerator
from vwe.checkpoint import export_model, read_export, unwrap
from vwe.io import MetricsLog
from vwe.config import Config, TrainConfig
from vwe.data.datasets import ClassificationDataset
from vwe.data.device_augment import augment_batch, is_device_batch
from vwe.losses import classifier_loss
from vwe.models import Classifier, build_classifier
from vwe.models.weights import check_weights
from vwe.ray.train import fit
from vwe.run_folder import RunFolder
from vwe.stages.stage import Stage

NAME = "train_cam"


def build_optimizer(model: Classifier, train: TrainConfig) -> torch.optim.Optimizer:
    """SGD (or AdamW) over (backbone x1, new layers x new_layer_lr_mult); keyword arguments only (METHOD P1)."""
    backbone, new = model.param_groups()
    groups = [{"params": backbone, "lr_mult": 1.0}, {"params": new, "lr_mult": train.new_layer_lr_mult}]
    return training.make_optimizer(train.optimizer, groups, train.lr, train.momentum, train.weight_decay)


def train_step(model: nn.Module, batch: dict[str, Any], optimizer: torch.optim.Optimizer,
               cfg: Config) -> dict[str, torch.Tensor]:
    """One optimisation step; returns the loss terms as detached device tensors (no host sync)."""
    accel = Accelerator.of(cfg.train, next(unwrap(model).parameters()).device)
    images = augment_batch(batch, accel.device) if is_device_batch(batch) else batch["image"]
    images = accel.inputs(images)
    labels = batch["labels"].to(accel.device, non_blocking=True)
    core = unwrap(model)
    with accel.autocast():
        output = model(images)
    loss, terms = classifier_loss(output, labels, cfg.model, core.codebook_for_loss())
    if core.uses_memory_bank:
        # METHOD §1.7: the memory bank moves once per iteration, after the forward pass, before backward
        core.update_memory_bank(output.features.detach().float())
    return training.optimize(optimizer, loss, terms)


def train(cfg: Config, session: training.Session, fault: dict[str, Any] | None = None) -> dict[str, Any]:
    """Trains (or resumes) the classifier; rank 0 exports the final weights to `<out_dir>/classifier/`."""
    train_cfg = cfg.train
    torch.manual_seed(train_cfg.seed)
    accel = Accelerator.of(train_cfg, session.device)
    dataset = ClassificationDataset(cfg.data.root, cfg.data.train_split, crop_size=train_cfg.crop_size,
                                    resize_long=tuple(train_cfg.resize_long), flip=train_cfg.flip,
                                    seed=train_cfg.seed, num_classes=cfg.data.num_classes,
                                    labels_from=cfg.data.labels_from,
                                    augment="device" if accel.on_device(train_cfg.augment) else "host")
    per_epoch = training.steps_per_epoch(len(dataset), train_cfg.batch_size, cfg.data.train_split)
    schedule = training.Schedule(
        batch_size=train_cfg.batch_size, total_steps=per_epoch * train_cfg.epochs, lr=train_cfg.lr,
        poly_power=train_cfg.poly_power, seed=train_cfg.seed, log_every=train_cfg.log_every,
        checkpoint_every=train_cfg.checkpoint_every, loader_workers=train_cfg.loader_workers,
        max_steps=train_cfg.max_steps)
    model = accel.prepare(build_classifier(cfg))
    optimizer = build_optimizer(model, train_cfg)
    epoch_end = functools.partial(at_epoch_end, cfg=cfg)
    result = training.run(session, model, optimizer, dataset, functools.partial(train_step, cfg=cfg), schedule,
                          cfg.to_dict(), compile_model=accel.compile, fault=fault, epoch_end=epoch_end,
                          on_report=MetricsLog(RunFolder.of(cfg).metrics(NAME)).add if session.rank == 0 else None)
    if session.rank == 0:
        export_model(model, cfg, RunFolder.of(cfg).classifier)
    return result


def at_epoch_end(model: nn.Module, epochs_done: int, cfg: Config) -> dict[str, float]:
    """Rank 0 at each epoch end: keeps the weights that make the CAMs when they are this epoch's
    (cam.classifier_epoch), and evaluates the CAMs when train.eval_images asks for it."""
    if epochs_done == cfg.cam.classifier_epoch:
        export_model(model, cfg, RunFolder.of(cfg).classifier_at(epochs_done))
    return epoch_cam_miou(model, cfg) if cfg.train.eval_images > 0 else {}


def epoch_cam_miou(model: nn.Module, cfg: Config) -> dict[str, float]:
    """CAM mIoU at cam.background_score (and the sweep's optimistic best) on the first `train.eval_images` images
    of data.cam_split, with the configured CAM scales; the per-epoch signal of `vwe tune`'s early stopping."""
    device = next(model.parameters()).device
    summary = evaluation.model_cam_scores(
        model, cfg.data.root, cfg.data.cam_split, cfg.cam.background_score, list(cfg.cam.sweep),
        num_images=cfg.train.eval_images, scales=cfg.cam.scales, batch_size=cfg.cam.batch_size,
        dtype=Accelerator.of(cfg.cam, device).dtype,
        num_classes=cfg.data.num_classes, labels_from=cfg.data.labels_from)
    return {"cam_miou": summary["miou"], "cam_best_miou": summary["best_miou"],
            "cam_best_threshold": summary["best_threshold"]}


def load_trained_classifier(directory: str | Path, device: str | torch.device = "cpu") -> tuple[Classifier, Config]:
    """The exported classifier (`model.pth` + `config.yaml` in `directory`, a folder or URI), in eval mode."""
    state, cfg = read_export(directory, "train-cam")
    model = build_classifier(cfg, load_pretrained=False)
    model.load_state_dict(state)
    return model.to(device).eval(), cfg


def check_inputs(cfg: Config) -> None:
    """What the workers will read, checked here first: the training split and the ImageNet weights."""
    dataset = ClassificationDataset(cfg.data.root, cfg.data.train_split, num_classes=cfg.data.num_classes,
                                    labels_from=cfg.data.labels_from)
    training.steps_per_epoch(len(dataset), cfg.train.batch_size, cfg.data.train_split)
    if cfg.model.pretrained:
        check_weights(cfg.model.pretrained, key="model.pretrained")


def train_classifier(cfg: Config, *, resume: bool = False, restart: bool = False,
                     fault: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stage 1 on Ray Train (`vwe train-cam`); returns rank 0's last metrics, the step it resumed from and every
    report."""
    check_inputs(cfg)
    return fit(cfg, NAME, train, resume=resume, restart=restart, fault=fault)


def run(cfg: Config) -> dict[str, Any]:
    result = train_classifier(cfg)
    result.pop("history")
    return {**result, "images": cfg.train.batch_size * (result["step"] - result["resumed_from"])}


STAGE = Stage(
    name=NAME, run=run,
    is_complete=lambda cfg: all(storage.is_file(storage.join(RunFolder.of(cfg).classifier_at(epoch), "model.pth"))
                                for epoch in {0, cfg.cam.classifier_epoch}),
    outputs=lambda cfg: [RunFolder.of(cfg).classifier, RunFolder.of(cfg).train_run(NAME),
                         RunFolder.of(cfg).metrics(NAME)],
    depends_on=("data.train_split", "data.num_classes", "data.labels_from", "model", "cam.classifier_epoch",
                "train.batch_size", "train.epochs", "train.lr",
                "train.new_layer_lr_mult", "train.optimizer", "train.momentum", "train.weight_decay",
                "train.poly_power", "train.crop_size", "train.resize_long", "train.flip", "train.seed", "train.amp",
                "train.channels_last", "train.compile", "train.fuse_bn", "train.max_steps"))
