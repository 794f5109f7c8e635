"""Stage 2 (IRNet's make_cam): multi-scale + flip CAMs of every image of a split (METHOD §2), on a Ray Data actor
pool (one GPU per actor when ray.use_gpu).

Output: `<out_dir>/cams/<id>.npz` (arrays `keys` int64 K, `cam` K x ceil(H/4) x ceil(W/4), `high_res` K x H x W,
stored as `cam.dtype`, float16 by default; see `vwe.cam.save_cam`) and `<out_dir>/cams/manifest.parquet`, one row
per id with its status and stats. Only ids without a complete CAM file (right shapes for the image, the image's
classes as keys) are processed, so a re-run resumes.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from vwe.accelerator import Accelerator
from vwe.cam import batched_cams, cam_is_complete, save_cam
from vwe.checkpoint import read_export
from vwe.config import Config
from vwe.data.voc import image_size
from vwe.ray.cluster import quiet_worker
from vwe.ray.data import Actors, Tasks, finish_manifest, map_items, read_images
from vwe.run_folder import RunFolder
from vwe.stages.stage import Stage, split_items
from vwe.stages.train_cam import load_trained_classifier

log = logging.getLogger(__name__)


class CamPredictor:
    """Loads the trained classifier once; each call computes, saves and summarises the CAMs of a batch."""

    def __init__(self, cfg: Config):
        quiet_worker(cfg.ray.cpus_per_worker, cfg.out_dir, "make_cam")
        self.cfg, self.run = cfg, RunFolder.of(cfg)
        self.accel = Accelerator.of(cfg.cam, "cuda" if cfg.ray.use_gpu else "cpu")
        model, _ = load_trained_classifier(self.run.classifier_at(cfg.cam.classifier_epoch))
        self.model = self.accel.prepare(model)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        good = [i for i, error in enumerate(batch["error"]) if not error]
        results = batched_cams(self.model, [batch["image"][i] for i in good], [batch["labels"][i] for i in good],
                               self.cfg.cam.scales, self.accel.device, self.accel.dtype, self.accel.channels_last,
                               resize_on_device=self.accel.on_device(self.cfg.cam.resize))
        for i, result in zip(good, results):
            save_cam(self.run.cam(batch["id"][i]), result, self.cfg.cam.dtype)
        seconds = (time.perf_counter() - start) / max(1, len(good))
        return {
            "id": batch["id"], "path": batch["path"], "error": batch["error"],
            "num_classes": np.array([len(np.flatnonzero(labels)) for labels in batch["labels"]]),
            "height": np.array([image.shape[0] for image in batch["image"]]),
            "width": np.array([image.shape[1] for image in batch["image"]]),
            "seconds": np.full(len(batch["id"]), seconds),
        }


def cam_done(run: RunFolder, item: dict[str, Any]) -> bool:
    """Whether the item's CAM file is complete and fits its image (size) and its labels (keys)."""
    return cam_is_complete(run.cam(item["id"]), image_size(item["path"]), np.flatnonzero(item["labels"]))


def make_cams(cfg: Config, split: str | None = None) -> dict[str, Any]:
    """CAMs of every image of `split` (default data.cam_split) that has no complete one yet (`vwe make-cam`)."""
    run = RunFolder.of(cfg)
    split = split or cfg.data.cam_split
    todo, done = split_items(cfg, split, lambda item: cam_done(run, item))
    if todo:
        # a missing or truncated model.pth is named here, not in an actor
        read_export(run.classifier_at(cfg.cam.classifier_epoch), "train-cam")
    batch = cfg.cam.batch_size
    rows = map_items(todo, [Tasks(read_images, batch),
                            Actors(CamPredictor, batch, {"cfg": cfg}, cfg.cam.num_actors, cfg.ray.use_gpu)],
                     cfg.ray, f"make-cam {split}", len(done))
    return {"split": split, **finish_manifest("make-cam", rows, len(done), run.manifest(run.cams), cfg.data.skip_bad)}


def splits(cfg: Config) -> list[str]:
    """CAMs for the pseudo labels (train split) and for the evaluation splits, where the final model is compared
    with the CAMs themselves."""
    return list(dict.fromkeys([cfg.data.train_split, cfg.data.cam_split, cfg.data.eval_split]))


def run(cfg: Config) -> dict[str, Any]:
    results = [make_cams(cfg, split) for split in splits(cfg)]
    return {"splits": results, "images": sum(r["processed"] for r in results)}


def is_complete(cfg: Config) -> bool:
    run_folder = RunFolder.of(cfg)
    return all(not split_items(cfg, split, lambda item: cam_done(run_folder, item))[0] for split in splits(cfg))


STAGE = Stage(
    name="make_cam", run=run, is_complete=is_complete,
    outputs=lambda cfg: [RunFolder.of(cfg).cams],
    depends_on=("data.train_split", "data.cam_split", "data.eval_split", "data.labels_from", "cam.scales", "cam.dtype",
                "cam.amp", "cam.channels_last"))
