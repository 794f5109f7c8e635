"""Stage 3b (IRNet's train_irn): the boundary network trained on the confident pseudo labels, on Ray Train
(METHOD §3; used when pseudo.method = irnet).

The confident labels of data.train_split (`<out_dir>/pseudo_labels`, 255 unsure) are taken at stride 4 of a 512
crop; pairs of cells within `irn.train_radius` (10) that both have a label teach the edge map: the affinity of a
pair, 1 - the largest edge on the path between them, should be 1 for equal labels and 0 for different ones
(`vwe.losses.affinity_loss`). Global batch 32, 3 epochs, LR 0.1 with the poly schedule, weight decay 1e-4; the
backbone is frozen. The loop is `vwe.training.run`, shared with the classifier and DeepLab (checkpoints, resume,
fault recovery). Output: `<out_dir>/irn/model.pth` + `config.yaml`; checkpoints in `<ray storage>/train_irn/`.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vwe import storage, training
from vwe.accelerator import Accelerator
from vwe.affinity import affinity_labels, path_affinity
from vwe.checkpoint import export_model, read_export, unwrap
from vwe.config import Config, IrnConfig
from vwe.data.datasets import AffinityDataset
from vwe.io import MetricsLog
from vwe.losses import affinity_loss
from vwe.models.irnet import BoundaryNet, build_boundary_net
from vwe.models.weights import check_weights
from vwe.ray.train import fit
from vwe.run_folder import RunFolder
from vwe.stages.stage import Stage

NAME = "train_irn"


def uses_irnet(cfg: Config) -> bool:
    return cfg.pseudo.method == "irnet"


def build_optimizer(model: BoundaryNet, irn: IrnConfig) -> torch.optim.Optimizer:
    """SGD (or AdamW) over the side outputs and the fusion; keywords only (METHOD P1)."""
    groups = [{"params": model.trainable_parameters(), "lr_mult": 1.0}]
    return training.make_optimizer(irn.optimizer, groups, irn.lr, irn.momentum, irn.weight_decay)


def train_step(model: nn.Module, batch: dict[str, Any], optimizer: torch.optim.Optimizer,
               cfg: Config) -> dict[str, torch.Tensor]:
    """One optimisation step of the affinity loss; returns its terms as detached device tensors (no host sync)."""
    accel = Accelerator.of(cfg.irn, next(unwrap(model).parameters()).device)
    images = accel.inputs(batch["image"])
    labels = batch["label"].to(accel.device, non_blocking=True)
    with accel.autocast():
        logits = model(images)
    edge = torch.sigmoid(logits.float())[:, 0, :labels.shape[1], :labels.shape[2]]
    loss, terms = affinity_loss(path_affinity(edge, cfg.irn.train_radius),
                                *affinity_labels(labels, cfg.irn.train_radius))
    return training.optimize(optimizer, loss, terms)


def dataset(cfg: Config) -> AffinityDataset:
    irn = cfg.irn
    return AffinityDataset(cfg.data.root, cfg.data.train_split, RunFolder.of(cfg).pseudo_labels,
                           crop_size=irn.crop_size, scale_range=tuple(irn.scale_range), flip=irn.flip, seed=irn.seed)


def train(cfg: Config, session: training.Session, fault: dict[str, Any] | None = None) -> dict[str, Any]:
    """Trains (or resumes) the boundary network; rank 0 exports the final weights to `<out_dir>/irn/`."""
    irn = cfg.irn
    torch.manual_seed(irn.seed)
    data = dataset(cfg)
    per_epoch = training.steps_per_epoch(len(data), irn.batch_size, cfg.data.train_split)
    schedule = training.Schedule(
        batch_size=irn.batch_size, total_steps=per_epoch * irn.epochs, lr=irn.lr, poly_power=irn.poly_power,
        seed=irn.seed, log_every=irn.log_every, checkpoint_every=irn.checkpoint_every,
        loader_workers=irn.loader_workers, max_steps=irn.max_steps)
    model = Accelerator.of(irn, session.device).prepare(build_boundary_net(irn))
    optimizer = build_optimizer(model, irn)
    result = training.run(session, model, optimizer, data, functools.partial(train_step, cfg=cfg), schedule,
                          cfg.to_dict(), fault=fault,
                          on_report=MetricsLog(RunFolder.of(cfg).metrics(NAME)).add if session.rank == 0 else None)
    if session.rank == 0:
        export_model(model, cfg, RunFolder.of(cfg).irn)
    return result


def load_trained_irn(directory: str | Path, device: str | torch.device = "cpu") -> tuple[BoundaryNet, Config]:
    """The exported boundary network (`model.pth` + `config.yaml` in `directory`), in eval mode."""
    state, cfg = read_export(directory, "train-irn")
    model = build_boundary_net(cfg.irn, load_pretrained=False)
    model.load_state_dict(state)
    return model.to(device).eval(), cfg


def check_inputs(cfg: Config) -> None:
    """What the workers will read, checked here first: the confident labels of the split and the init weights."""
    training.steps_per_epoch(len(dataset(cfg)), cfg.irn.batch_size, cfg.data.train_split)
    if cfg.irn.pretrained:
        check_weights(cfg.irn.pretrained, key="irn.pretrained")


def train_irn(cfg: Config, *, resume: bool = False, restart: bool = False,
              fault: dict[str, Any] | None = None) -> dict[str, Any]:
    """IRNet's boundary network on Ray Train (`vwe train-irn`); returns rank 0's last metrics, the step it resumed
    from and every report."""
    check_inputs(cfg)
    return fit(cfg, NAME, train, num_workers=cfg.irn.num_workers, resume=resume, restart=restart, fault=fault)


def run(cfg: Config) -> dict[str, Any]:
    result = train_irn(cfg)
    result.pop("history")
    return {**result, "images": cfg.irn.batch_size * (result["step"] - result["resumed_from"])}


STAGE = Stage(
    name=NAME, run=run, used=uses_irnet,
    is_complete=lambda cfg: storage.is_file(storage.join(RunFolder.of(cfg).irn, "model.pth")),
    outputs=lambda cfg: [RunFolder.of(cfg).irn, RunFolder.of(cfg).train_run(NAME), RunFolder.of(cfg).metrics(NAME)],
    depends_on=("irn.backbone", "irn.init", "irn.pretrained", "irn.batch_size", "irn.epochs", "irn.lr",
                "irn.optimizer", "irn.momentum", "irn.weight_decay", "irn.poly_power", "irn.crop_size",
                "irn.scale_range", "irn.flip", "irn.train_radius", "irn.amp", "irn.seed", "irn.max_steps"))
