"""Stage 2 (IRNet's make_cam): multi-scale + flip CAMs of every image of a split (METHOD §2).

Output: `<out_dir>/cams/<id>.npz` (arrays `keys` int64 K, `cam` K x ceil(H/4) x ceil(W/4), `high_res` K x H x W,
stored as `cam.dtype`, float16 by default; see `vwe.cam.save_cam`) and `<out_dir>/cams/manifest.parquet`, one row
per id with its status and stats. The pieces here are plain Python; `vwe.ray.data` runs them as a Ray Data pipeline.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vwe import storage
from vwe.cam import batched_cams, cam_is_complete, save_cam
from vwe.config import Config
from vwe.data.voc import VOCDataset, read_image
from vwe.errors import DataError
from vwe.stages.train_classifier import load_trained_classifier

CAM_DIR = "cams"


def cam_path(out_dir: str | Path, image_id: str) -> str | Path:
    return storage.join(out_dir, CAM_DIR, f"{image_id}.npz")


def split_items(cfg: Config, split: str, output: callable, is_complete: callable) -> tuple[list[dict], list[str]]:
    """(items still to do, ids already done) of a split; an item is {"id", "path", "labels"}."""
    voc = VOCDataset(cfg.data.root)
    labels = voc.image_labels(num_classes=cfg.data.num_classes)
    zero = np.zeros(cfg.data.num_classes, np.float32)
    todo, done = [], []
    for image_id in voc.split_ids(split):
        if is_complete(output(cfg.out_dir, image_id)):
            done.append(image_id)
        else:
            todo.append({"id": image_id, "path": str(voc.image_path(image_id)), "labels": labels.get(image_id, zero)})
    return todo, done


def read_images(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Decodes a batch of {"id", "path", "labels"}; an unreadable image gets an `error` instead of pixels."""
    images, errors = [], []
    for path in batch["path"]:
        try:
            images.append(read_image(path))
            errors.append("")
        except DataError as err:
            images.append(np.zeros((1, 1, 3), np.uint8))
            errors.append(str(err))
    return {**batch, "image": _objects(images), "error": np.array(errors, dtype=object)}


class CamPredictor:
    """Loads the trained classifier once; each call computes, saves and summarises the CAMs of a batch."""

    def __init__(self, cfg: dict[str, Any], use_gpu: bool = False):
        self.cfg = Config.from_dict(cfg)
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.model, _ = load_trained_classifier(storage.join(self.cfg.out_dir, "classifier"), self.device)
        gpu = self.device.type == "cuda"
        self.dtype = torch.bfloat16 if gpu and self.cfg.cam.amp else torch.float32
        self.channels_last = gpu
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        good = [i for i, error in enumerate(batch["error"]) if not error]
        results = batched_cams(self.model, [batch["image"][i] for i in good], [batch["labels"][i] for i in good],
                               self.cfg.cam.scales, self.device, self.dtype, self.channels_last)
        for i, result in zip(good, results):
            save_cam(cam_path(self.cfg.out_dir, batch["id"][i]), result, self.cfg.cam.dtype)
        seconds = (time.perf_counter() - start) / max(1, len(good))
        return {
            "id": batch["id"], "path": batch["path"], "error": batch["error"],
            "num_classes": np.array([len(np.flatnonzero(labels)) for labels in batch["labels"]]),
            "height": np.array([image.shape[0] for image in batch["image"]]),
            "width": np.array([image.shape[1] for image in batch["image"]]),
            "seconds": np.full(len(batch["id"]), seconds),
        }


def _objects(items: list[Any]) -> np.ndarray:
    """A 1-d object array (numpy would otherwise try to stack equal-shaped images into one array)."""
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out
