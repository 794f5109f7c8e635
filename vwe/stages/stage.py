"""What a pipeline stage is, and the to-do list of the per-image stages.

A stage module (IRNet's `step/` files) holds the stage's per-item code, the function a `vwe` command calls, and a
`STAGE` that tells `vwe run` how to run it, whether its outputs are complete, what to delete before it runs afresh,
which config fields its outputs depend on (its fingerprint, recorded in stages.json), and whether the config uses
it at all (IRNet's stages run only with pseudo.method = irnet).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vwe.config import Config
from vwe.data.voc import VOCDataset, image_size, label_is_complete

PathLike = str | Path


@dataclass(frozen=True)
class Stage:
    name: str  # as in stages.json and `vwe run --force/--until`
    run: Callable[[Config], dict[str, Any]]  # does the work; returns the record for stages.json
    is_complete: Callable[[Config], bool]  # outputs there and readable by the later stages
    outputs: Callable[[Config], list[PathLike]]  # deleted before the stage runs afresh
    depends_on: tuple[str, ...]  # config keys (or whole sections) its outputs depend on, beyond earlier stages
    used: Callable[[Config], bool] = lambda cfg: True  # False: this config's pipeline leaves the stage out

    def fingerprint(self, cfg: Config) -> dict[str, Any]:
        return {key: _plain(cfg.get(key)) for key in self.depends_on}


def _plain(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The keys whose values differ between two fingerprints."""
    return [key for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


def split_items(cfg: Config, split: str,
                is_done: Callable[[dict[str, Any]], bool]) -> tuple[list[dict[str, Any]], list[str]]:
    """(items still to do, ids already done) of a split: an item is {"id", "path", "labels"} (the image file and
    its multi-hot class labels), done when `is_done(item)` says its output is complete."""
    voc = VOCDataset(cfg.data.root)
    labels = voc.image_labels(num_classes=cfg.data.num_classes, labels_from=cfg.data.labels_from)
    zero = np.zeros(cfg.data.num_classes, np.float32)
    todo, done = [], []
    for image_id in voc.split_ids(split):
        item = {"id": image_id, "path": str(voc.image_path(image_id)), "labels": labels.get(image_id, zero)}
        if is_done(item):
            done.append(image_id)
        else:
            todo.append(item)
    return todo, done


def label_done(path_of: Callable[[str], PathLike]) -> Callable[[dict[str, Any]], bool]:
    """`is_done` for `split_items` of a stage that writes one label PNG per image at `path_of(image_id)`: the PNG
    is whole and has its image's size."""
    return lambda item: label_is_complete(path_of(item["id"]), image_size(item["path"]))
