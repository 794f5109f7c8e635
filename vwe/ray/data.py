"""Generic Ray Data helpers for the per-image stages: map a list of items through CPU tasks and actor pools, sum
per-batch arrays on the driver, and finish a stage's Parquet manifest.

Ray's conventions stay here: batches are dicts of numpy columns (object columns for images of different sizes,
read-only when they come from the object store), and rows come back as numpy scalars.
"""
from __future__ import annotations

import logging
import math
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
from vwe.io import update_manifest
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
    `use_gpu`."""

    cls: type
    batch_size: int
    kwargs: dict[str, Any] = field(default_factory=dict)
    size: int = 1
    use_gpu: bool = False


def actor_count(requested: int, use_gpu: bool) -> int:
    """`requested` when > 0, else one per GPU of the cluster (use_gpu) or one on CPU."""
    if requested > 0:
        return requested
    if use_gpu:
        return max(1, int(ray.cluster_resources().get("GPU", 0)))
    return 1


def _dataset(items: list[dict[str, Any]], steps: list[Tasks | Actors], ray_cfg: RayConfig) -> ray.data.Dataset:
    init_ray(ray_cfg)
    blocks = max(1, min(math.ceil(len(items) / steps[0].batch_size), 1000))
    dataset = ray.data.from_items(items, override_num_blocks=blocks)
    for step in steps:
        if isinstance(step, Actors):
            dataset = dataset.map_batches(step.cls, fn_constructor_kwargs=step.kwargs, batch_size=step.batch_size,
                                          batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=step.size),
                                          num_gpus=1 if step.use_gpu else 0, num_cpus=1)
        else:
            placement = {"resources": {step.resource: 0.001}} if step.resource else {}
            dataset = dataset.map_batches(step.fn, fn_kwargs=step.kwargs, batch_size=step.batch_size,
                                          batch_format="numpy", num_cpus=1, **placement)
    return dataset


def map_items(items: list[dict[str, Any]], steps: list[Tasks | Actors], ray_cfg: RayConfig) -> list[dict[str, Any]]:
    """Runs `items` (dicts of plain values) through `steps` in order; returns the last step's rows as plain
    Python values. Nothing to do starts no Ray."""
    if not items:
        return []
    return [_plain(row) for row in _dataset(items, steps, ray_cfg).iter_rows()]


def sum_batches(items: list[dict[str, Any]], step: Tasks, columns: tuple[str, ...],
                ray_cfg: RayConfig) -> dict[str, np.ndarray]:
    """Runs `items` through `step`, whose batches return one row of partial sums per column (e.g. a summed
    confusion matrix and an image count), and adds those rows up here: one small array per batch crosses the
    network instead of one per image."""
    totals: dict[str, np.ndarray] = {}
    for batch in _dataset(items, [step], ray_cfg).iter_batches(batch_size=None, batch_format="numpy"):
        for column in columns:
            part = batch[column].sum(axis=0)
            totals[column] = part if column not in totals else totals[column] + part
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
