"""Throughput benchmarks (`vwe bench ...`). Speed targets live here, never in tests."""
from __future__ import annotations

import copy
import functools
import logging
import os
import resource
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from vwe.accelerator import Accelerator
from vwe.config import Config
from vwe.data.datasets import ClassificationDataset
from vwe.data.synth import generate
from vwe.io import write_json
from vwe.models import build_classifier
from vwe.stages.train_cam import build_optimizer, train_step

log = logging.getLogger(__name__)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since the last `_reset_peak`: allocated on a GPU; on the CPU the process's resident peak (the
    whole run so far, as the kernel reports it)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10, 1)


def _timed(step: Callable[[Any], Any], batches: Iterator[Any], steps: int, warmup: int, device: torch.device,
           images: int) -> tuple[float, float, float]:
    """(images/s, peak MB, warm-up seconds) of `steps` calls of `step` on the next batch after `warmup` untimed ones
    (the warm-up holds a compile)."""
    _reset_peak(device)
    start = time.perf_counter()
    for _ in range(warmup):
        step(next(batches))
    _sync(device)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step(next(batches))
    _sync(device)
    return images * steps / (time.perf_counter() - start), peak_memory_mb(device), warm


def bench_train(backbones: list[str] | None = None, batch_size: int | None = None, size: int | None = None,
                steps: int = 20, loader_workers: int | None = None, data_root: str | None = None,
                warmup: int = 3, compile: bool = True) -> list[dict[str, Any]]:
    """Images/s and peak memory of the classifier training step (`train_cam.train_step`, the real one) for each
    backbone: fp32 as the authors ran it, then the fast settings (bf16 autocast on a GPU, channels_last, folded
    frozen BN), eager and compiled; each with the model alone (a batch already on the device), and with the input
    pipeline: PIL augmentation in `loader_workers` DataLoader processes (host), or decoding there and augmenting
    on the device (device). A compiled model's first steps compile: `warmup_s` says how long that took."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    backbones = backbones or (["resnet50", "resnet101"] if gpu else ["resnet-tiny"])
    batch_size = batch_size or (16 if gpu else 4)
    size = size or (512 if gpu else 64)
    if loader_workers is None:
        loader_workers = min(12, max(1, (os.cpu_count() or 1) - 2)) if gpu else 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if data_root is None:
            data_root = str(Path(tmp) / "VOC2012")
            count = batch_size * (warmup + steps)
            height, width = (375, 500) if gpu else (size, size)
            log.info("generating %d synthetic %dx%d images for the input pipeline", count, height, width)
            generate(data_root, {"train_aug": count, "train": 1, "val": 1, "test": 1}, height, width, seed=0,
                     workers=max(1, min(8, os.cpu_count() or 1)))
        fast = {"train.amp": gpu, "train.channels_last": True, "train.fuse_bn": True}
        plans = [("fp32", {}, False, ("model",)), ("fast", fast, False, ("model", "host", "device"))]
        if compile:
            plans.append(("fast", fast, True, ("model", "device")))
        for backbone in backbones:
            for name, settings, compiled, inputs in plans:
                cfg = Config().with_overrides({"model.backbone": backbone, "train.crop_size": size,
                                               "train.resize_long": [size * 5 // 8, size * 5 // 4], **settings})
                torch.manual_seed(0)
                model = Accelerator.of(cfg.train, device).prepare(build_classifier(cfg, load_pretrained=False))
                model.train()
                optimizer = build_optimizer(model, cfg.train)
                runner = torch.compile(model) if compiled else model
                step = functools.partial(train_step, runner, optimizer=optimizer, cfg=cfg)
                for source in inputs:
                    batches = _train_batches(source, cfg, data_root, batch_size, loader_workers, device)
                    rate, peak, warm = _timed(step, batches, steps, warmup, device, batch_size)
                    rows.append({"device": device_name(device), "backbone": backbone, "batch": batch_size,
                                 "size": size, "settings": name, "amp": "bf16" if cfg.train.amp else "fp32",
                                 "compiled": compiled, "input": source,
                                 "loader_workers": loader_workers if source != "model" else 0,
                                 "img_s": round(rate, 1), "peak_mb": peak, "warmup_s": round(warm, 1)})
                    log.info("train %s %s%s, input %s: %.1f img/s", backbone, name, " compiled" if compiled else "",
                             source, rate)
    return rows


def _train_batches(source: str, cfg: Config, data_root: str, batch_size: int, loader_workers: int,
                   device: torch.device) -> Iterator[dict[str, Any]]:
    """Endless batches for the training benchmark: one random batch on the device (model), or the loader's."""
    if source == "model":
        batch = {"image": torch.randn(batch_size, 3, cfg.train.crop_size, cfg.train.crop_size, device=device),
                 "labels": (torch.rand(batch_size, cfg.data.num_classes, device=device) < 0.15).float()}
        while True:
            yield batch
    dataset = ClassificationDataset(data_root, "train_aug", crop_size=cfg.train.crop_size,
                                    resize_long=tuple(cfg.train.resize_long), seed=0, augment=source)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=loader_workers,
                        pin_memory=device.type == "cuda", persistent_workers=loader_workers > 0,
                        collate_fn=dataset.collate_fn)
    while True:
        yield from loader


def bench_cam(backbones: list[str] | None = None, images: int | None = None, height: int = 375, width: int = 500,
              batch_size: int = 16, check: int = 2) -> list[dict[str, Any]]:
    """Images/s and peak memory of multi-scale + flip CAM inference: the fp32 batch-of-one reference
    (`multiscale_cam`), and `batched_cams` in fp32 and with the fast settings (bf16 autocast on a GPU,
    channels_last, folded BN, resizing on the device); `max_abs_diff` compares each with the reference on `check`
    images. The random network's head is made non-negative, as a trained head is for its classes: a random head's
    CAMs are sums of large terms of both signs, which no trained CAM is."""
    import numpy as np

    from vwe.cam import DEFAULT_SCALES, batched_cams, multiscale_cam

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    backbones = backbones or (["resnet50", "resnet101"] if gpu else ["resnet-tiny"])
    count = images or (128 if gpu else 8)
    if not gpu:
        height, width = min(height, 96), min(width, 128)
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]
    labels = [np.eye(20, dtype=np.float32)[rng.choice(20, 2, replace=False)].sum(0) for _ in range(count)]
    rows = []
    for backbone in backbones:
        torch.manual_seed(0)
        model = build_classifier(Config().with_overrides({"model.backbone": backbone}), load_pretrained=False)
        with torch.no_grad():
            model.classifier.weight.abs_()
        model = model.to(device).eval()
        reference_n = min(count, 8 if gpu else 4)
        multiscale_cam(model, pictures[0], labels[0], DEFAULT_SCALES)  # warm-up
        _reset_peak(device)
        _sync(device)
        start = time.perf_counter()
        reference = [multiscale_cam(model, p, l, DEFAULT_SCALES) for p, l in zip(pictures[:reference_n], labels)]
        _sync(device)
        row = {"device": device_name(device), "backbone": backbone, "image": f"{height}x{width}",
               "scales": f"{len(DEFAULT_SCALES)} x flip", "batch": 1, "settings": "reference", "dtype": "float32",
               "img_s": round(reference_n / (time.perf_counter() - start), 2), "peak_mb": peak_memory_mb(device),
               "max_abs_diff": 0.0}
        rows.append(row)
        fast = Accelerator(device, amp=gpu, channels_last=True, fuse_bn=True)
        for name, accel in (("batched", Accelerator(device)), ("fast", fast)):
            net = accel.prepare(copy.deepcopy(model))
            run = functools.partial(batched_cams, net, scales=DEFAULT_SCALES, device=device, dtype=accel.dtype,
                                    channels_last=accel.channels_last, resize_on_device=accel.on_device("auto"))
            run(pictures[:batch_size], labels[:batch_size])  # warm-up
            _reset_peak(device)
            _sync(device)
            start = time.perf_counter()
            results = []
            for i in range(0, count, batch_size):
                results += run(pictures[i:i + batch_size], labels[i:i + batch_size])
            _sync(device)
            rate = count / (time.perf_counter() - start)
            diff = max(float(np.abs(r.high_res - f.high_res).max()) for r, f in zip(reference[:check], results))
            rows.append({**row, "batch": batch_size, "settings": name,
                         "dtype": str(accel.dtype).replace("torch.", ""), "img_s": round(rate, 2),
                         "peak_mb": peak_memory_mb(device), "max_abs_diff": round(diff, 5)})
            log.info("cam %s %s: %.1f img/s, max diff %.2g", backbone, name, rate, diff)
    return rows


def bench_deeplab(backbone: str | None = None, batch_size: int | None = None, size: int | None = None,
                  steps: int = 10, warmup: int = 3) -> list[dict[str, Any]]:
    """Images/s and peak memory of the DeepLab v2 training step (`train_seg.train_step`: the MSC loss over 1, 0.75
    and 0.5 of the input, deeplab-pytorch's 5 x 2 accumulation), model alone, fp32 and with the fast settings
    (bf16 autocast on a GPU, channels_last, folded BN), eager."""
    from vwe.models.deeplab import MultiScaleDeepLab, build_deeplab
    from vwe.stages import train_seg

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    backbone = backbone or ("resnet101" if gpu else "resnet-tiny")
    batch_size = batch_size or (10 if gpu else 4)
    size = size or (321 if gpu else 64)
    batch = {"image": torch.randn(batch_size, 3, size, size, device=device),
             "label": torch.randint(0, 21, (batch_size, size, size), device=device)}
    rows = []
    for name, settings in (("fp32", {}), ("fast", {"seg.amp": gpu, "seg.channels_last": True, "seg.fuse_bn": True})):
        cfg = Config().with_overrides({"seg.backbone": backbone, "seg.crop_size": size, "seg.pretrained": "",
                                       **settings})
        torch.manual_seed(0)
        base = build_deeplab(cfg.seg, cfg.data.num_classes + 1)
        model = Accelerator.of(cfg.seg, device).prepare(MultiScaleDeepLab(base, cfg.seg.train_msc_scales)).train()
        optimizer = train_seg.build_optimizer(base, cfg.seg)
        step = functools.partial(train_seg.train_step, model, optimizer=optimizer, cfg=cfg)
        rate, peak, warm = _timed(step, _forever(batch), steps, warmup, device, batch_size)
        rows.append({"device": device_name(device), "backbone": backbone, "batch": batch_size,
                     "accumulation": cfg.seg.accumulation, "size": size, "settings": name,
                     "amp": "bf16" if cfg.seg.amp else "fp32", "img_s": round(rate, 1), "peak_mb": peak})
        log.info("deeplab %s %s: %.1f img/s", backbone, name, rate)
    return rows


def _forever(batch: dict[str, torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
    while True:
        yield batch


def bench_all(out: str | Path, quick: bool | None = None) -> dict[str, Any]:
    """Every benchmark in one process, each section's rows written to `out` (JSON) as soon as it is done, so a run
    cut short keeps what it measured. The GPU sizes are the paper's (under 8 minutes on one H100/H200); `quick`
    (the default without a GPU) runs tiny ones, in about a minute on two cores. A section that fails is recorded
    with its error and the others still run."""
    import platform
    import sys

    gpu = torch.cuda.is_available()
    quick = not gpu if quick is None else quick
    device = torch.device("cuda" if gpu else "cpu")
    sections: dict[str, Callable[[], list[dict[str, Any]]]] = {
        "train": lambda: bench_train(steps=3 if quick else 20, warmup=2 if quick else 5,
                                     backbones=["resnet-tiny"] if quick else None),
        "cam": lambda: bench_cam(backbones=["resnet-tiny"] if quick else ["resnet101"], images=4 if quick else None,
                                 batch_size=2 if quick else 16),
        "deeplab": lambda: bench_deeplab(steps=2 if quick else 10, warmup=1 if quick else 3,
                                         backbone="resnet-tiny" if quick else None),
        "crf": lambda: bench_crf(images=2 if quick else 8, height=48 if quick else 375, width=64 if quick else 500),
        "irn": lambda: bench_irn(sizes=((40, 48),) if quick else ((375, 500), (640, 480)), batches=1 if quick else 2,
                                 exp_times=4 if quick else 8),
    }
    report: dict[str, Any] = {"device": device_name(device), "torch": torch.__version__,
                              "cuda": torch.version.cuda if gpu else None, "python": platform.python_version(),
                              "command": " ".join(["vwe", *sys.argv[1:]]) if sys.argv[0].endswith("vwe") else None,
                              "quick": quick, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "sections": {},
                              "errors": {}}
    start = time.perf_counter()
    for name, section in sections.items():
        began = time.perf_counter()
        try:
            report["sections"][name] = section()
        except Exception as err:  # noqa: BLE001 - one broken benchmark must not cost the others' numbers
            log.exception("bench %s failed", name)
            report["errors"][name] = f"{type(err).__name__}: {err}"
        report.setdefault("seconds", {})[name] = round(time.perf_counter() - began, 1)
        report["total_seconds"] = round(time.perf_counter() - start, 1)
        write_json(out, report)
    return report


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _crf_problem(seed: int, height: int, width: int, n_labels: int, kind: str):
    """A random CRF input: an image of flat 40-pixel colour blocks with noise, and either a noisy label map of the
    blocks (the label CRF) or a softmax over `n_labels` classes that favours each block's class (DeepLab's CRF)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (max(2, -(-height // 40)), max(2, -(-width // 40)), 3), dtype=np.uint8)
    image = np.kron(cells, np.ones((40, 40, 1), np.uint8))[:height, :width]
    image = np.clip(image.astype(np.int16) + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
    regions = np.kron(rng.integers(0, n_labels, cells.shape[:2]), np.ones((40, 40), np.int64))[:height, :width]
    if kind == "label":
        return image, np.where(rng.random(regions.shape) < 0.2, rng.integers(0, n_labels, regions.shape), regions)
    logits = rng.normal(0, 1, (n_labels, height, width)) + 2.5 * (regions[None] == np.arange(n_labels)[:, None, None])
    probs = np.exp(logits - logits.max(0))
    return image, (probs / probs.sum(0)).astype(np.float32)


def _crf_task(seed: int, height: int, width: int, n_labels: int, kind: str, backend: str = "pydensecrf",
              device: str = "cpu"):
    """Seconds and labels of one CRF of `_crf_problem`, with the paper's parameters of `kind`."""
    from vwe.crf import crf_labels, crf_probs

    image, values = _crf_problem(seed, height, width, n_labels, kind)
    start = time.perf_counter()
    if kind == "label":
        labels = crf_labels(image, values, n_labels, backend=backend, device=device)
    else:
        labels = crf_probs(image, values, backend=backend, device=device).argmax(0)
    return time.perf_counter() - start, labels


def bench_crf(images: int | None = None, height: int = 375, width: int = 500, labels: tuple[int, ...] = (3, 21),
              batch_size: int = 8) -> list[dict[str, Any]]:
    """The dense CRF (10 iterations) of both parameter sets (IRNet's label CRF, DeepLab's softmax CRF) on both
    backends: pydensecrf s/image on one core and images/s over all cores (one Ray task per image, as make-pseudo);
    the torch CRF s/image on the CPU at batch 1, and on the GPU (when there is one) at batch 1 and batched
    (`batch_size` images per call, label CRF); and the share of pixels where the two backends agree (the minimum
    over the images)."""
    import os

    import numpy as np
    import ray

    from vwe.config import RayConfig
    from vwe.crf import crf_labels_many
    from vwe.ray.cluster import init_ray

    cores = os.cpu_count() or 1
    count = images or 2 * cores
    gpu = torch.cuda.is_available()
    init_ray(RayConfig(), num_cpus=cores)
    task = ray.remote(num_cpus=1)(_crf_task)
    ray.get([task.remote(0, 16, 16, 2, "label") for _ in range(cores)])  # workers up before timing
    rows = []
    for kind in ("label", "softmax"):
        for n_labels in labels:
            serial = [_crf_task(i, height, width, n_labels, kind) for i in range(count)]
            start = time.perf_counter()
            ray.get([task.remote(i, height, width, n_labels, kind) for i in range(count)])
            parallel_wall = time.perf_counter() - start
            torch_cpu = [_crf_task(i, height, width, n_labels, kind, "torch") for i in range(count)]
            row = {"device": device_name(torch.device("cuda" if gpu else "cpu")), "crf": kind,
                   "image": f"{height}x{width}", "labels": n_labels, "images": count,
                   "pydensecrf_s_1_core": round(float(np.mean([t for t, _ in serial])), 3), "cores": cores,
                   "pydensecrf_img_s_all_cores": round(count / parallel_wall, 2),
                   "torch_cpu_s": round(float(np.mean([t for t, _ in torch_cpu])), 3),
                   "torch_gpu_s": None, "torch_gpu_batched_img_s": None, "torch_gpu_peak_mb": None,
                   "agreement": round(min(float(np.mean(a == b)) for (_, a), (_, b) in zip(serial, torch_cpu)), 5)}
            if gpu:
                _crf_task(0, height, width, n_labels, kind, "torch", "cuda")  # warm-up
                single = [_crf_task(i, height, width, n_labels, kind, "torch", "cuda")[0] for i in range(count)]
                row["torch_gpu_s"] = round(float(np.mean(single)), 4)
                if kind == "label":
                    problems = [_crf_problem(i, height, width, n_labels, kind) for i in range(batch_size)]
                    torch.cuda.reset_peak_memory_stats()
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                    crf_labels_many([p[0] for p in problems], [p[1] for p in problems], [n_labels] * batch_size,
                                    backend="torch", device="cuda")
                    torch.cuda.synchronize()
                    row["torch_gpu_batched_img_s"] = round(batch_size / (time.perf_counter() - start), 2)
                    row["torch_gpu_peak_mb"] = peak_memory_mb(torch.device("cuda"))
            rows.append(row)
    return rows


def dense_random_walk(cam: torch.Tensor, edge: torch.Tensor, radius: int = 5, beta: float = 10.0,
                      exp_times: int = 8) -> torch.Tensor:
    """IRNet's own computation of `vwe.affinity.random_walk` for one image, the benchmark's baseline: the dense
    HW x HW transition matrix, squared exp_times times (HW^2 memory, 2 (HW)^3 exp_times FLOP)."""
    from vwe.affinity import transition_weights, walk_offsets

    height, width = edge.shape
    n = height * width
    weights = transition_weights(edge[None], radius, beta)[0]  # (o, j): T[j + o, j]
    transition = torch.zeros(n, n, device=edge.device, dtype=edge.dtype)
    ys, xs = torch.meshgrid(torch.arange(height, device=edge.device), torch.arange(width, device=edge.device),
                            indexing="ij")
    for k, (dy, dx) in enumerate(walk_offsets(radius)):
        inside = (ys + dy >= 0) & (ys + dy < height) & (xs + dx >= 0) & (xs + dx < width)
        source = ((ys + dy) * width + xs + dx)[inside]
        transition[source, (ys * width + xs)[inside]] = weights[k][inside]
    for _ in range(exp_times):
        transition = transition @ transition
    return ((cam * (1 - edge)).reshape(len(cam), n) @ transition).reshape(cam.shape)


def bench_irn(sizes: tuple[tuple[int, int], ...] = ((375, 500), (640, 480)), batch_size: int | None = None,
              batches: int = 2, exp_times: int = 8, radius: int = 5, dense_max_nodes: int | None = None,
              devices: list[str] | None = None) -> list[dict[str, Any]]:
    """Images/s and peak memory of IRNet's random walk (make-sem-seg's cost after the network), sparse
    (`vwe.affinity.random_walk`, a batch at a time) and dense (IRNet's matrix squaring, one image at a time), for
    images of `sizes` with 2 classes each, on the GPU when there is one and on the CPU.

    A dense walk over more than `dense_max_nodes` stride-4 cells (default: no limit on the GPU, 4,096 on the CPU,
    where one 375x500 image takes minutes) is not run: its time is estimated from the FLOP rate of one squaring
    at that size, and the row says so. Peak memory is measured on the GPU; on the CPU it is the size of the
    walk's tensors. `max_rel_diff` compares the two walks where both ran (relative to the largest value).
    """
    from vwe.affinity import random_walk, walk_offsets
    from vwe.cam import strided_size

    devices = devices or (["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"])
    rows = []
    for name in devices:
        device = torch.device(name)
        gpu = device.type == "cuda"
        batch = batch_size or (16 if gpu else 2)
        limit = dense_max_nodes if dense_max_nodes is not None else (None if gpu else 4096)
        for height, width in sizes:
            h, w = strided_size(height, width)
            generator = torch.Generator().manual_seed(0)
            edges = [torch.rand(h, w, generator=generator).pow(4).to(device) for _ in range(batch)]
            cams = [torch.rand(2, h, w, generator=generator).to(device) for _ in range(batch)]
            random_walk(cams[:1], edges[:1], radius, exp_times=1)  # warm-up
            _reset_peak(device)
            _sync(device)
            start = time.perf_counter()
            for _ in range(batches):
                sparse = random_walk(cams, edges, radius, exp_times=exp_times)
            _sync(device)
            sparse_rate = batches * batch / (time.perf_counter() - start)
            # weights per plane (offsets x cells) plus the values, their padded copy and the step's output
            sparse_mb = (peak_memory_mb(device) if gpu
                         else 4 * h * w * 2 * batch * (len(walk_offsets(radius)) + 3) / 2**20)
            n = h * w
            row = {"device": device_name(device), "image": f"{height}x{width}", "cells": n, "steps": 2 ** exp_times,
                   "batch": batch, "sparse_img_s": round(sparse_rate, 2), "sparse_peak_mb": round(sparse_mb)}
            if limit is None or n <= limit:
                _reset_peak(device)
                _sync(device)
                start = time.perf_counter()
                dense = dense_random_walk(cams[0], edges[0], radius, exp_times=exp_times)
                _sync(device)
                dense_seconds = time.perf_counter() - start
                difference = float((dense - sparse[0]).abs().max() / dense.abs().max())
                row.update(dense_img_s=round(1 / dense_seconds, 3), dense_estimated=False,
                           max_rel_diff=float(f"{difference:.2g}"))
            else:
                probe = torch.rand(limit, limit, device=device)
                start = time.perf_counter()
                probe @ probe
                flops = 2 * limit**3 / (time.perf_counter() - start)
                dense_seconds = exp_times * 2 * n**3 / flops
                row.update(dense_img_s=round(1 / dense_seconds, 5), dense_estimated=True, max_rel_diff=None)
            # the matrix, its square and the product's workspace
            dense_mb = peak_memory_mb(device) if gpu and not row["dense_estimated"] else 3 * 4 * n * n / 2**20
            row.update(dense_peak_mb=round(dense_mb),
                       speedup=round(row["sparse_img_s"] / row["dense_img_s"], 1))
            rows.append(row)
    return rows


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

