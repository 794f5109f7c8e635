"""Stage 3 (IRNet's cam_to_ir_label): CAMs -> pseudo labels for DeepLab, one single-core CRF task per image (or,
with crf.backend torch, or auto and ray.use_gpu, batches of images on actors with `vwe.dense_crf`), as palette PNGs
in `<out_dir>/pseudo_labels/<id>.png` (0 background, 1..20 classes, 255 unsure) with a Parquet manifest; then
their mIoU on data.cam_split (unsure pixels counted as background) in `<out_dir>/eval_labels/`.

`pseudo.method: confident` takes the CAM argmax at two background scores (0.30 keeps confident foreground, 0.05
confident background), refines both with a dense CRF over the image's classes + background only, and marks 255
where they disagree (METHOD §3); `irnet` (the default) makes the same labels, to train IRNet's boundary network on
(`vwe.stages.train_irn`). `threshold` takes the CAM argmax at `cam.background_score`, optionally refined by the
CRF.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from vwe.cam import CamResult, cam_is_complete, cam_to_label, load_cam
from vwe.config import Config
from vwe.crf import confident_pseudo_labels, crf_labels_many, resolve_backend
from vwe.data.voc import IGNORE, read_image, write_mask
from vwe.errors import DataError
from vwe.ray.cluster import quiet_worker
from vwe.ray.data import Actors, Tasks, finish_manifest, map_items, objects, read_images, writable
from vwe.run_folder import RunFolder
from vwe.stages.eval_seg import write_label_scores
from vwe.stages.stage import Stage, label_done, split_items

log = logging.getLogger(__name__)


def pseudo_labels(cfg: Config, images: list[np.ndarray], cams: list[CamResult],
                  device: str | torch.device = "cpu") -> list[np.ndarray]:
    """The pseudo labels of images from their saved CAMs; with the torch CRF, every CRF of the batch in one call."""
    pseudo = cfg.pseudo
    backend = resolve_backend(pseudo.crf, gpu=torch.device(device).type == "cuda")
    if pseudo.method in ("confident", "irnet"):  # IRNet trains on the confident labels
        return confident_pseudo_labels(images, [c.high_res for c in cams], [c.keys for c in cams],
                                       pseudo.fg_background_score, pseudo.bg_background_score, pseudo.crf, backend,
                                       device)
    labels = [cam_to_label(c.high_res, c.keys, cfg.cam.background_score) for c in cams]
    if not pseudo.crf.enabled:
        return labels
    # CRF over each image's classes + background only: indices 0..K, mapped back to class labels after
    classes = [np.concatenate([[0], c.keys + 1]).astype(np.uint8) for c in cams]
    refined = crf_labels_many(images, [np.searchsorted(c, label) for c, label in zip(classes, labels)],
                              [len(c) for c in classes], pseudo.crf, backend, device)
    return [c[label] for c, label in zip(classes, refined)]


def label_batch(batch: dict[str, np.ndarray], cfg: Config, device: str | torch.device = "cpu") -> dict[str, np.ndarray]:
    """A step: the pseudo labels of a batch of {"id", "path"} (and "image", "error" when `read_images` decoded them
    already), written as PNGs; one manifest row per id."""
    start = time.perf_counter()
    run = RunFolder.of(cfg)
    errors = list(batch["error"]) if "error" in batch else [""] * len(batch["id"])
    images: dict[int, np.ndarray] = {}
    cams: dict[int, CamResult] = {}
    for i, (image_id, path) in enumerate(zip(batch["id"], batch["path"])):
        if errors[i]:
            continue
        try:
            images[i] = writable(batch["image"][i]) if "image" in batch else read_image(path)
            cams[i] = load_cam(run.cam(image_id))
            if cams[i].high_res.shape[1:] != images[i].shape[:2]:
                raise DataError(f"{run.cam(image_id)}: CAM size {cams[i].high_res.shape[1:]} differs from the image "
                                f"{images[i].shape[:2]}")
        except DataError as err:
            errors[i] = str(err)
            cams.pop(i, None)
    good = sorted(cams)
    foreground, unsure = np.zeros(len(errors)), np.zeros(len(errors))
    for i, label in zip(good, pseudo_labels(cfg, [images[i] for i in good], [cams[i] for i in good], device)):
        write_mask(run.pseudo_label(batch["id"][i]), label)
        foreground[i] = float(np.mean((label > 0) & (label != IGNORE)))
        unsure[i] = float(np.mean(label == IGNORE))
    seconds = (time.perf_counter() - start) / max(1, len(errors))
    return {"id": objects(list(batch["id"])), "path": objects(list(batch["path"])), "error": objects(errors),
            "foreground": foreground, "unsure": unsure, "seconds": np.full(len(errors), seconds)}


class CrfLabeler:
    """make-pseudo with the torch CRF: an actor (on a GPU with ray.use_gpu) that refines a whole batch of images in
    one call."""

    def __init__(self, cfg: Config):
        quiet_worker(cfg.ray.cpus_per_worker, cfg.out_dir, "make_pseudo")
        self.cfg = cfg
        self.device = torch.device("cuda" if cfg.ray.use_gpu else "cpu")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return label_batch(batch, self.cfg, self.device)


def uses_crf_actors(cfg: Config) -> bool:
    """Whether the CRFs run batched on actors: the CRF is on and its backend is torch (auto: with ray.use_gpu)."""
    return cfg.pseudo.crf.enabled and resolve_backend(cfg.pseudo.crf, cfg.ray.use_gpu) == "torch"


def make_pseudo_labels(cfg: Config, split: str | None = None) -> dict[str, Any]:
    """Pseudo labels of every image of `split` (default data.train_split) from its CAMs (`vwe make-pseudo`)."""
    run = RunFolder.of(cfg)
    split = split or cfg.data.train_split
    todo, done = split_items(cfg, split, label_done(run.pseudo_label))
    no_cam = [item["id"] for item in todo if not cam_is_complete(run.cam(item["id"]))]
    if no_cam:
        raise DataError(f"make-pseudo: {len(no_cam)} image(s) have no CAM file in {run.cams}, e.g. {no_cam[0]}: "
                        f"run `vwe make-cam --split {split}` first")
    items = [{"id": item["id"], "path": item["path"]} for item in todo]
    if uses_crf_actors(cfg):
        batch = cfg.pseudo.batch_size
        steps = [Tasks(read_images, batch),
                 Actors(CrfLabeler, batch, {"cfg": cfg}, cfg.pseudo.num_actors, cfg.ray.use_gpu)]
    else:
        # one image per task and one core each: pydensecrf is single-threaded, so this scales with the CPUs
        steps = [Tasks(label_batch, 1, {"cfg": cfg}, cfg.ray.crf_resource)]
    rows = map_items(items, steps, cfg.ray, f"make-pseudo {split} ({cfg.pseudo.method})", len(done))
    manifest = run.manifest(run.pseudo_labels)
    return {"split": split, **finish_manifest("make-pseudo", rows, len(done), manifest, cfg.data.skip_bad)}


def score_pseudo_labels(cfg: Config, split: str) -> dict[str, Any]:
    """mIoU of the pseudo labels of `split` against its masks, unsure pixels (255) counted as background.

    Writes `<out_dir>/eval_labels/pseudo_<split>.json` and `pseudo_<split>_classes.csv`.
    """
    run = RunFolder.of(cfg)
    return write_label_scores(cfg, split, run.pseudo_labels, "make the pseudo labels of this split first",
                              run.pseudo_label_scores, f"pseudo_{split}", unsure_as_background=True,
                              labels=str(run.pseudo_labels))


def run(cfg: Config) -> dict[str, Any]:
    result = make_pseudo_labels(cfg, cfg.data.train_split)
    scores = score_pseudo_labels(cfg, cfg.data.cam_split)
    log.info("pseudo-label mIoU on %s: %.1f", cfg.data.cam_split, 100 * scores["miou"])
    return {**result, "images": result["processed"], "miou": scores["miou"]}


def is_complete(cfg: Config) -> bool:
    return not split_items(cfg, cfg.data.train_split, label_done(RunFolder.of(cfg).pseudo_label))[0]


STAGE = Stage(
    name="make_pseudo", run=run, is_complete=is_complete,
    outputs=lambda cfg: [RunFolder.of(cfg).pseudo_labels, RunFolder.of(cfg).pseudo_label_scores],
    depends_on=("data.train_split", "data.cam_split", "pseudo", "cam.background_score"))
