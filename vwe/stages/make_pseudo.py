"""Stage 3 (IRNet's cam_to_ir_label): CAMs -> pseudo labels for DeepLab, one single-core CRF task per image, as
palette PNGs in `<out_dir>/pseudo_labels/<id>.png` (0 background, 1..20 classes, 255 unsure) with a Parquet
manifest; then their mIoU on data.cam_split (unsure pixels counted as background) in `<out_dir>/eval_labels/`.

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

from vwe.cam import cam_is_complete, cam_to_label, load_cam
from vwe.config import Config
from vwe.crf import confident_pseudo_label, crf_labels
from vwe.data.voc import IGNORE, read_image, write_mask
from vwe.errors import DataError
from vwe.ray.data import Tasks, finish_manifest, map_items, objects
from vwe.run_folder import RunFolder
from vwe.stages.eval_seg import write_label_scores
from vwe.stages.stage import Stage, label_done, split_items

log = logging.getLogger(__name__)


def pseudo_label(cfg: Config, image: np.ndarray, cam_file: str) -> np.ndarray:
    """The pseudo label of one image from its saved CAMs."""
    result = load_cam(cam_file)
    if result.high_res.shape[1:] != image.shape[:2]:
        raise DataError(f"{cam_file}: CAM size {result.high_res.shape[1:]} differs from the image {image.shape[:2]}")
    pseudo = cfg.pseudo
    if pseudo.method in ("confident", "irnet"):  # IRNet trains on the confident labels
        return confident_pseudo_label(image, result.high_res, result.keys, pseudo.fg_background_score,
                                      pseudo.bg_background_score, pseudo.crf)
    label = cam_to_label(result.high_res, result.keys, cfg.cam.background_score)
    if not pseudo.crf.enabled or len(result.keys) == 0:
        return label
    # CRF over the image's classes + background only: indices 0..K, mapped back to class labels after
    classes = np.concatenate([[0], result.keys + 1]).astype(np.uint8)
    refined = crf_labels(image, np.searchsorted(classes, label), len(classes), pseudo.crf)
    return classes[refined]


def label_batch(batch: dict[str, np.ndarray], cfg: Config) -> dict[str, np.ndarray]:
    """A task step: the pseudo labels of a batch of {"id", "path"}, written as PNGs; one manifest row per id."""
    run = RunFolder.of(cfg)
    rows: dict[str, list] = {"id": [], "path": [], "error": [], "foreground": [], "unsure": [], "seconds": []}
    for image_id, path in zip(batch["id"], batch["path"]):
        start = time.perf_counter()
        error, foreground, unsure = "", 0.0, 0.0
        try:
            label = pseudo_label(cfg, read_image(path), str(run.cam(image_id)))
            write_mask(run.pseudo_label(image_id), label)
            foreground = float(np.mean((label > 0) & (label != IGNORE)))
            unsure = float(np.mean(label == IGNORE))
        except DataError as err:
            error = str(err)
        for key, value in zip(rows, (image_id, path, error, foreground, unsure, time.perf_counter() - start)):
            rows[key].append(value)
    return {key: objects(values) if key in ("id", "path", "error") else np.array(values)
            for key, values in rows.items()}


def make_pseudo_labels(cfg: Config, split: str | None = None) -> dict[str, Any]:
    """Pseudo labels of every image of `split` (default data.train_split) from its CAMs (`vwe make-pseudo`)."""
    run = RunFolder.of(cfg)
    split = split or cfg.data.train_split
    todo, done = split_items(cfg, split, label_done(run.pseudo_label))
    no_cam = [item["id"] for item in todo if not cam_is_complete(run.cam(item["id"]))]
    if no_cam:
        raise DataError(f"make-pseudo: {len(no_cam)} image(s) have no CAM file in {run.cams}, e.g. {no_cam[0]}: "
                        f"run `vwe make-cam --split {split}` first")
    # one image per task and one core each: the CRF is single-threaded, so this scales with the cluster's CPUs
    items = [{"id": item["id"], "path": item["path"]} for item in todo]
    rows = map_items(items, [Tasks(label_batch, 1, {"cfg": cfg}, cfg.ray.crf_resource)], cfg.ray,
                     f"make-pseudo {split} ({cfg.pseudo.method})", len(done))
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
