"""Generic Ray Data helpers for the per-image stages: map a list of items through CPU tasks and actor pools, sum
per-batch arrays on the driver, and finish a stage's Parquet manifest.

Ray's conventions stay here: batches are dicts of numpy columns (object columns for images of different sizes,
read-only when they come from the object store), and rows come back as numpy scalars.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.data

from vwe.config import RayConfig
from vwe.data.voc import read_image
from vwe.errors import DataError
from vwe.io import duration, update_manifest
from vwe.ray.cluster import init_ray

log = logging.getLogger(__name__)


@dataclass
class Tasks:
    """A function over batches (dict of numpy columns -> dict of numpy columns), one single-core CPU task each.

    `resource`: a custom resource that marks the nodes to run on (a tiny amount per task, so their CPUs set the
    concurrency), e.g. ray.crf_resource for the CRF.
    """

    fn: Callable[..., dict[str, np.ndarray]]
    batch_size: int
    kwargs: dict[str, Any] = field(default_factory=dict)
    resource: str = ""


@dataclass
class Actors:
    """A callable class (the model loaded once in `__init__`) run by a pool of `size` actors, one GPU each when
    `use_gpu`; size 0 = one per GPU of the cluster (use_gpu), or one on CPU."""

    cls: type
    batch_size: int
    kwargs: dict[str, Any] = field(default_factory=dict)
    size: int = 0
    use_gpu: bool = False

    def pool_size(self) -> int:
        if self.size > 0:
            return self.size
        return max(1, int(ray.cluster_resources().get("GPU", 0))) if self.use_gpu else 1


def _dataset(items: list[dict[str, Any]], steps: list[Tasks | Actors], ray_cfg: RayConfig) -> ray.data.Dataset:
    init_ray(ray_cfg)
    blocks = max(1, min(math.ceil(len(items) / steps[0].batch_size), 1000))
    dataset = ray.data.from_items(items, override_num_blocks=blocks)
    for step in steps:
        if isinstance(step, Actors):
            pool = ray.data.ActorPoolStrategy(size=step.pool_size())
            dataset = dataset.map_batches(step.cls, fn_constructor_kwargs=step.kwargs, batch_size=step.batch_size,
                                          batch_format="numpy", compute=pool, num_gpus=1 if step.use_gpu else 0,
                                          num_cpus=1)
        else:
            placement = {"resources": {step.resource: 0.001}} if step.resource else {}
            dataset = dataset.map_batches(step.fn, fn_kwargs=step.kwargs, batch_size=step.batch_size,
                                          batch_format="numpy", num_cpus=1, **placement)
    return dataset


class Progress:
    """The progress lines of a data stage: its total from the start, then a line at most every `every` seconds
    with the rate and the time left, and one at the end."""

    def __init__(self, label: str, total: int, already_done: int = 0, every: float = 10.0):
        self.label, self.total, self.every = label, total, every
        self.done = 0
        self.start = self.last = time.perf_counter()
        log.info("%s: %d images to do%s", label, total, f", {already_done} done already" if already_done else "")

    def update(self, count: int) -> None:
        self.done += count
        now = time.perf_counter()
        if now - self.last >= self.every and self.done < self.total:
            self.last = now
            rate = self.done / (now - self.start)
            log.info("%s: %d/%d images (%d%%), %.1f images/s, %s left", self.label, self.done, self.total,
                     100 * self.done // self.total, rate, duration((self.total - self.done) / rate))

    def close(self) -> None:
        seconds = time.perf_counter() - self.start
        log.info("%s: %d/%d images in %.1f s (%.1f images/s)", self.label, self.done, self.total, seconds,
                 self.done / seconds if seconds > 0 else 0.0)


def map_items(items: list[dict[str, Any]], steps: list[Tasks | Actors], ray_cfg: RayConfig, label: str,
              already_done: int = 0) -> list[dict[str, Any]]:
    """Runs `items` (dicts of plain values, one per image) through `steps` in order; returns the last step's rows
    as plain Python values, logging progress as `label`. Nothing to do starts no Ray."""
    if not items:
        log.info("%s: nothing to do, %d images done already", label, already_done)
        return []
    progress = Progress(label, len(items), already_done)
    rows = []
    for row in _dataset(items, steps, ray_cfg).iter_rows():
        rows.append(_plain(row))
        progress.update(1)
    progress.close()
    return rows


def sum_batches(items: list[dict[str, Any]], step: Tasks, columns: tuple[str, ...], ray_cfg: RayConfig,
                label: str) -> dict[str, np.ndarray]:
    """Runs `items` through `step`, whose batches return one row of partial sums per column (e.g. a summed
    confusion matrix) and the batch's image count (`images`), and adds those rows up here: one small array per
    batch crosses the network instead of one per image. Progress is logged as `label`."""
    progress = Progress(label, len(items))
    totals: dict[str, np.ndarray] = {}
    for batch in _dataset(items, [step], ray_cfg).iter_batches(batch_size=None, batch_format="numpy"):
        for column in (*columns, "images"):
            part = batch[column].sum(axis=0)
            totals[column] = part if column not in totals else totals[column] + part
        progress.update(int(batch["images"].sum()))
    progress.close()
    return totals


def read_images(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A task step: decodes the images of a batch of {"id", "path", ...}; an unreadable one gets an `error` (the
    message names the file) and a 1 x 1 placeholder instead of pixels."""
    images, errors = [], []
    for path in batch["path"]:
        try:
            images.append(read_image(path))
            errors.append("")
        except DataError as err:
            images.append(np.zeros((1, 1, 3), np.uint8))
            errors.append(str(err))
    return {**batch, "image": objects(images), "error": np.array(errors, dtype=object)}


def objects(items: list[Any]) -> np.ndarray:
    """A 1-d object column (numpy would otherwise stack equal-shaped images into one array)."""
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def writable(array: np.ndarray) -> np.ndarray:
    """Ray Data hands out read-only arrays; torch and pydensecrf want writable ones."""
    return np.require(array, requirements=["C_CONTIGUOUS", "WRITEABLE"])


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """Arrow/numpy scalars -> Python values, for the Parquet manifest."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()}


def finish_manifest(stage: str, rows: list[dict[str, Any]], done: int, manifest: str | Path,
                    skip_bad: bool) -> dict[str, Any]:
    """Merges `rows` into the stage's manifest, reports bad inputs by id and file, and fails unless `skip_bad`."""
    bad = [row for row in rows if row["error"]]
    for row in bad:
        log.warning("%s: skipped %s: %s", stage, row["id"], row["error"])
    total = update_manifest(manifest, rows) if rows else done
    summary = {"processed": len(rows) - len(bad), "already_done": done, "bad": len(bad), "manifest": str(manifest),
               "manifest_rows": total}
    if bad and not skip_bad:
        listing = "; ".join(f"{row['id']} ({row['error']})" for row in bad[:5])
        raise DataError(f"{stage}: {len(bad)} input(s) could not be read: {listing}"
                        f"{' ...' if len(bad) > 5 else ''} -- the others are saved; fix or remove these ids, "
                        f"or set data.skip_bad=true to go on without them (listed in {manifest})")
    return summary
