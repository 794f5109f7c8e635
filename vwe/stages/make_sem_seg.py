"""Stage 3c (IRNet's make_sem_seg_labels): the CAMs walked over the boundary network's affinities, as DeepLab's
training labels, on a Ray Data actor pool (one GPU per actor when ray.use_gpu); used when pseudo.method = irnet.

Per image (METHOD §3): the edge map of the image and its flip (sigmoid of the mean logits) on the stride-4 grid,
affinities along paths of `irn.radius` (5), T = A^beta (beta 10) column-normalised, the stride-4 CAMs times
(1 - edge) walked 2^exp_times (256) steps, upsampled x4, divided by the largest value, argmax against a background
plane of 0.25. The walk is `vwe.affinity.random_walk`: sparse steps for a whole batch at once instead of the
reference's dense HW x HW matrix power, and every image at its own size (the reference pads to 512 and crops
larger images). Output: `<out_dir>/sem_seg_labels/<id>.png` (0 background, 1..20 classes) with a manifest; their
mIoU on data.cam_split in `<out_dir>/eval_sem_seg/<split>.json`.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import numpy as np
import torch

from vwe.accelerator import Accelerator
from vwe.affinity import random_walk, walk_to_label
from vwe.cam import cam_is_complete, load_cam, normalize_image
from vwe.checkpoint import read_export
from vwe.config import Config
from vwe.data.voc import write_mask
from vwe.errors import DataError
from vwe.models.irnet import BoundaryNet
from vwe.ray.cluster import quiet_worker
from vwe.ray.data import Actors, Tasks, finish_manifest, map_items, read_images
from vwe.run_folder import RunFolder
from vwe.stages.eval_seg import write_label_scores
from vwe.stages.stage import Stage, label_done, split_items
from vwe.stages.train_irn import load_trained_irn, uses_irnet

log = logging.getLogger(__name__)


@torch.no_grad()
def edge_maps(model: BoundaryNet, images: Sequence[np.ndarray], device: torch.device,
              dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Each image's ceil(H/4) x ceil(W/4) edge probabilities: sigmoid of the mean of the edge logits of the image
    and of its flip (flipped back). Images of one size share a forward pass."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(image.shape[:2], []).append(i)
    edges: dict[int, torch.Tensor] = {}
    for members in groups.values():
        x = torch.stack([normalize_image(images[i]) for i in members]).to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = model(torch.cat([x, x.flip(-1)])).float()[:, 0]
        n = len(members)
        edges.update(zip(members, torch.sigmoid((logits[:n] + logits[n:].flip(-1)) / 2)))
    return [edges[i] for i in range(len(images))]


class SemSegLabeler:
    """Loads the trained boundary network once; each call writes the semantic labels of a batch of images."""

    def __init__(self, cfg: Config):
        quiet_worker(cfg.ray.cpus_per_worker, cfg.out_dir, "make_sem_seg")
        self.cfg, self.run = cfg, RunFolder.of(cfg)
        self.accel = Accelerator.of(cfg.irn, "cuda" if cfg.ray.use_gpu else "cpu")
        self.device, self.dtype = self.accel.device, self.accel.dtype
        self.model, _ = load_trained_irn(self.run.irn, self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        errors = list(batch["error"])
        cams = {}
        for i, image_id in enumerate(batch["id"]):
            if errors[i]:
                continue
            try:
                cams[i] = load_cam(self.run.cam(image_id))
                if cams[i].high_res.shape[1:] != batch["image"][i].shape[:2]:
                    raise DataError(f"{self.run.cam(image_id)}: CAM size {cams[i].high_res.shape[1:]} differs from "
                                    f"the image {batch['image'][i].shape[:2]}")
            except DataError as err:
                errors[i] = str(err)
                cams.pop(i, None)
        good = sorted(cams)
        irn = self.cfg.irn
        edges = edge_maps(self.model, [batch["image"][i] for i in good], self.device, self.dtype)
        walked = random_walk([torch.from_numpy(cams[i].cam).to(self.device) for i in good], edges,
                             irn.radius, irn.beta, irn.exp_times)
        foreground = np.zeros(len(errors))
        for i, maps in zip(good, walked):
            label = walk_to_label(maps, cams[i].keys, cams[i].high_res.shape[1:], irn.background_score)
            write_mask(self.run.sem_seg_label(batch["id"][i]), label)
            foreground[i] = float(np.mean(label > 0))
        seconds = (time.perf_counter() - start) / max(1, len(good))
        return {"id": batch["id"], "path": batch["path"], "error": np.array(errors, dtype=object),
                "foreground": foreground, "seconds": np.full(len(errors), seconds)}


def make_sem_seg_labels(cfg: Config, split: str | None = None) -> dict[str, Any]:
    """IRNet's semantic labels of every image of `split` (default data.train_split) that has none yet
    (`vwe make-sem-seg`)."""
    run = RunFolder.of(cfg)
    split = split or cfg.data.train_split
    todo, done = split_items(cfg, split, label_done(run.sem_seg_label))
    no_cam = [item["id"] for item in todo if not cam_is_complete(run.cam(item["id"]))]
    if no_cam:
        raise DataError(f"make-sem-seg: {len(no_cam)} image(s) have no CAM file in {run.cams}, e.g. {no_cam[0]}: "
                        f"run `vwe make-cam --split {split}` first")
    if todo:
        read_export(run.irn, "train-irn")  # a missing or truncated model.pth is named here, not in an actor
    batch = cfg.irn.infer_batch_size
    rows = map_items(todo, [Tasks(read_images, batch),
                            Actors(SemSegLabeler, batch, {"cfg": cfg}, cfg.irn.num_actors, cfg.ray.use_gpu)],
                     cfg.ray, f"make-sem-seg {split}", len(done))
    manifest = run.manifest(run.sem_seg_labels)
    return {"split": split, **finish_manifest("make-sem-seg", rows, len(done), manifest, cfg.data.skip_bad)}


def score_sem_seg_labels(cfg: Config, split: str) -> dict[str, Any]:
    """mIoU of the semantic labels of `split` against its masks; writes `<out_dir>/eval_sem_seg/<split>.json` and
    `<split>_classes.csv`."""
    run = RunFolder.of(cfg)
    return write_label_scores(cfg, split, run.sem_seg_labels, "run `vwe make-sem-seg` on this split first",
                              run.sem_seg_label_scores, split, labels=str(run.sem_seg_labels))


def run(cfg: Config) -> dict[str, Any]:
    result = make_sem_seg_labels(cfg, cfg.data.train_split)
    scores = score_sem_seg_labels(cfg, cfg.data.cam_split)
    log.info("IRNet label mIoU on %s: %.1f", cfg.data.cam_split, 100 * scores["miou"])
    return {**result, "images": result["processed"], "miou": scores["miou"]}


def is_complete(cfg: Config) -> bool:
    return not split_items(cfg, cfg.data.train_split, label_done(RunFolder.of(cfg).sem_seg_label))[0]


STAGE = Stage(
    name="make_sem_seg", run=run, is_complete=is_complete, used=uses_irnet,
    outputs=lambda cfg: [RunFolder.of(cfg).sem_seg_labels, RunFolder.of(cfg).sem_seg_label_scores],
    depends_on=("irn.radius", "irn.beta", "irn.exp_times", "irn.background_score", "irn.amp"))
