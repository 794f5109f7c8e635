"""Throughput benchmarks (`vwe bench ...`). Speed targets live here, never in tests."""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from vwe.config import Config
from vwe.data.datasets import ClassificationDataset
from vwe.data.synth import generate
from vwe.models import build_classifier
from vwe.stages.train_classifier import build_optimizer, train_step
from vwe.stages.training import EpochBatchSampler

log = logging.getLogger(__name__)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def _timed_steps(cfg: Config, device: torch.device, batches, steps: int, warmup: int) -> float:
    """Images/s of `steps` training steps after `warmup` ones; `batches` yields dicts with image and labels."""
    model = build_classifier(cfg).to(device)
    if device.type == "cuda" and cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = build_optimizer(model, cfg.train)
    iterator = iter(batches)
    images = 0
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        batch = next(iterator)
        train_step(model, batch, optimizer, cfg)
        if i >= warmup:
            images += len(batch["image"])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return images / (time.perf_counter() - start)


def bench_train(backbones: list[str] | None = None, batch_size: int | None = None, size: int | None = None,
                steps: int = 20, loader_workers: int | None = None, data_root: str | None = None,
                warmup: int = 3) -> list[dict[str, Any]]:
    """Images/s of the classifier training step (model alone, and with data loading) for each backbone."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    backbones = backbones or (["resnet50", "resnet101"] if gpu else ["resnet-tiny"])
    batch_size = batch_size or (16 if gpu else 4)
    size = size or (512 if gpu else 64)
    loader_workers = loader_workers if loader_workers is not None else (8 if gpu else 0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if data_root is None:
            data_root = str(Path(tmp) / "VOC2012")
            count = batch_size * (warmup + steps)
            height, width = (375, 500) if gpu else (size, size)
            log.info("generating %d synthetic %dx%d images for the loader benchmark", count, height, width)
            generate(data_root, {"train_aug": count, "train": 1, "val": 1, "test": 1}, height, width, seed=0)
        for backbone in backbones:
            cfg = Config().with_overrides({"model.backbone": backbone, "train.crop_size": size,
                                           "train.resize_long": [size * 5 // 8, size * 5 // 4]})
            in_memory = {"image": torch.randn(batch_size, 3, size, size, device=device),
                         "labels": (torch.rand(batch_size, cfg.data.num_classes, device=device) < 0.15).float()}
            model_only = _timed_steps(cfg, device, _repeat(in_memory), steps, warmup)
            dataset = ClassificationDataset(data_root, "train_aug", crop_size=size,
                                            resize_long=tuple(cfg.train.resize_long), seed=0)
            sampler = EpochBatchSampler(len(dataset), batch_size, rank=0, world_size=1, seed=0, epoch=0)
            loader = DataLoader(dataset, batch_sampler=sampler, num_workers=loader_workers, pin_memory=gpu,
                                persistent_workers=loader_workers > 0)
            full = _timed_steps(cfg, device, _cycle(loader), steps, warmup)
            rows.append({"device": device_name(device), "backbone": backbone, "batch": batch_size, "size": size,
                         "amp": "bf16" if gpu and cfg.train.amp else "fp32", "model_step_img_s": round(model_only, 1),
                         "full_step_img_s": round(full, 1), "loader_workers": loader_workers})
    return rows


def _repeat(batch: dict[str, torch.Tensor]):
    while True:
        yield batch


def _cycle(loader: DataLoader):
    while True:
        yield from loader


def print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns))
