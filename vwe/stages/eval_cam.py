"""CAM evaluation (IRNet's eval_cam, METHOD §2): the mIoU of CAM labels at the config's fixed background score
(`cam.background_score`, the protocol's number) and at every score of `cam.sweep`, whose best is reported beside it
as the optimistic number it is; one pass over the CAM files (per-batch confusion sums on CPU tasks, added up on the
driver).

Output: `<out_dir>/eval_cam/<split>.json`, `<split>_classes.csv` and `<split>_curve.csv`.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from vwe import storage
from vwe.config import Config
from vwe.data.voc import VOCDataset, read_mask
from vwe.errors import DataError
from vwe.evaluation import cam_confusions, cam_scores, format_table, write_report
from vwe.ray.data import Tasks, sum_batches
from vwe.run_folder import RunFolder
from vwe.stages.stage import Stage

log = logging.getLogger(__name__)


def sweep_batch(batch: dict[str, np.ndarray], thresholds: list[float], num_classes: int) -> dict[str, np.ndarray]:
    """A task step: the T x C x C confusions of a batch of {"cam", "mask"} rows, summed, and the image count."""
    total = sum(cam_confusions(cam, read_mask(mask), thresholds, num_classes)
                for cam, mask in zip(batch["cam"], batch["mask"]))
    return {"confusions": total[None], "images": np.array([len(batch["cam"])])}


def evaluate_cams(cfg: Config, split: str | None = None) -> dict[str, Any]:
    """mIoU of the CAM labels of `split` (default data.cam_split) at cam.background_score and along cam.sweep
    (`vwe eval-cam`)."""
    run = RunFolder.of(cfg)
    split = split or cfg.data.cam_split
    voc = VOCDataset(cfg.data.root)
    items = []
    for image_id in voc.split_ids(split):
        mask = voc.mask_path(image_id)
        if mask is None:
            raise DataError(f"{voc.split_path(split)}: {image_id} has no ground-truth mask; "
                            "evaluate a split with masks")
        items.append({"id": image_id, "mask": str(mask), "cam": str(run.cam(image_id))})
    present = set(storage.listdir(run.cams))
    no_cam = [item["id"] for item in items if f"{item['id']}.npz" not in present]
    if no_cam:
        raise DataError(f"eval-cam: {len(no_cam)} image(s) have no CAM file in {run.cams}, e.g. {no_cam[0]}: "
                        f"run `vwe make-cam --split {split}` first")
    thresholds = [cfg.cam.background_score, *cfg.cam.sweep]
    totals = sum_batches(items, Tasks(sweep_batch, 8, {"thresholds": thresholds,
                                                       "num_classes": cfg.data.num_classes}),
                         ("confusions",), cfg.ray, f"eval-cam {split}")
    summary = {"split": split, "images": int(totals["images"]),
               **cam_scores(totals["confusions"], cfg.cam.background_score, list(cfg.cam.sweep),
                           ("background", *voc.classes))}
    files = write_report(run.cam_scores, split, summary)
    return {**summary, "files": {k: str(v) for k, v in files.items()}}


def splits(cfg: Config) -> list[str]:
    return list(dict.fromkeys([cfg.data.cam_split, cfg.data.eval_split]))


def run(cfg: Config) -> dict[str, Any]:
    results = {}
    for split in splits(cfg):
        summary = evaluate_cams(cfg, split)
        log.info("CAM mIoU on %s: %.1f at background score %.2f (the sweep's best, optimistic: %.1f at %.2f)", split,
                 100 * summary["miou"], summary["background_score"], 100 * summary["best_miou"],
                 summary["best_threshold"])
        log.debug("per class:\n%s", format_table(summary))
        results[split] = {k: summary[k] for k in ("images", "background_score", "miou", "best_threshold",
                                                  "best_miou")}
    return results


STAGE = Stage(
    name="eval_cam", run=run,
    is_complete=lambda cfg: all(storage.is_file(storage.join(RunFolder.of(cfg).cam_scores, f"{split}.json"))
                                for split in splits(cfg)),
    outputs=lambda cfg: [RunFolder.of(cfg).cam_scores],
    depends_on=("data.cam_split", "data.eval_split", "data.num_classes", "cam.background_score", "cam.sweep"))
