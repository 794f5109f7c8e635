"""Segmentation mIoU of label PNGs (DeepLab predictions, pseudo labels) against a split's masks (METHOD §2): one
confusion matrix per image, summed; IoU per class, mIoU over the classes present in the ground truth; a JSON + CSV
report.

Ground truth is `SegmentationClassAug/<id>.png` when present, else `SegmentationClass/<id>.png`; its 255 pixels
are left out. `vwe.ray.data.score_labels` runs `batch_confusion` as Ray Data tasks, for eval-seg and for the
pseudo-label score of make-pseudo.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vwe import storage
from vwe.data.voc import CLASSES, IGNORE, VOCDataset, read_mask
from vwe.errors import DataError
from vwe.metrics import ConfusionMatrix, confusion

EVAL_DIR = "eval_seg"


def class_names(num_classes: int) -> list[str]:
    """Names of the label values: background, then the first `num_classes` VOC classes."""
    return ["background", *CLASSES[:num_classes]]


def eval_items(root: str | Path, split: str, pred_dir: str | Path, hint: str) -> list[dict[str, str]]:
    """{"id", "mask", "pred"} for every id of `split`; a missing mask or prediction is a DataError naming it (and
    saying `hint`, how to make the missing predictions)."""
    voc = VOCDataset(root)
    present = set(storage.listdir(pred_dir))  # one listing, not a request per id (slow in an object store)
    items, no_mask, no_pred = [], [], []
    for image_id in voc.split_ids(split):
        mask = voc.mask_path(image_id)
        pred = storage.join(pred_dir, f"{image_id}.png")
        if mask is None:
            no_mask.append(image_id)
        elif f"{image_id}.png" not in present:
            no_pred.append(pred)
        else:
            items.append({"id": image_id, "mask": str(mask), "pred": str(pred)})
    if no_mask:
        raise DataError(f"{voc.split_path(split)}: {len(no_mask)} ids have no ground-truth mask, e.g. {no_mask[0]}; "
                        "evaluate a split with masks")
    if no_pred:
        raise DataError(f"{pred_dir}: {len(no_pred)} label files missing for split {split!r}, e.g. {no_pred[0]} "
                        f"({hint})")
    return items


def image_confusion(pred_path: str | Path, mask_path: str | Path, num_classes: int,
                    unsure_as_background: bool = False) -> np.ndarray:
    """num_classes x num_classes confusion (rows ground truth) of one prediction PNG against its mask.

    `unsure_as_background`: 255 in the prediction (a pseudo label's unsure pixel) counts as background.
    """
    pred = read_mask(pred_path)
    gt = read_mask(mask_path)
    if pred.shape != gt.shape:
        raise DataError(f"{pred_path}: prediction size {pred.shape[1]}x{pred.shape[0]} (WxH) differs from its mask "
                        f"{mask_path} ({gt.shape[1]}x{gt.shape[0]})")
    if unsure_as_background:
        pred = np.where(pred == IGNORE, 0, pred)
    try:
        return confusion(gt, pred, num_classes)
    except ValueError as err:
        raise DataError(f"{pred_path}: {err}") from err


def batch_confusion(batch: dict[str, np.ndarray], num_classes: int,
                    unsure_as_background: bool = False) -> dict[str, np.ndarray]:
    """One summed confusion matrix per batch of {"pred", "mask"} rows (1 x C x C), and the image count."""
    total = np.zeros((num_classes, num_classes), np.int64)
    for pred, mask in zip(batch["pred"], batch["mask"]):
        total += image_confusion(pred, mask, num_classes, unsure_as_background)
    return {"confusion": total[None], "images": np.array([len(batch["pred"])])}


def summarize(matrix: np.ndarray, names: list[str]) -> dict[str, Any]:
    """mIoU, pixel accuracy, per-class IoU (None for classes absent from the ground truth) and the matrix."""
    scores = ConfusionMatrix(len(names), matrix).compute()
    return {"miou": scores.miou, "pixel_accuracy": scores.pixel_accuracy,
            "iou": {name: None if np.isnan(v) else float(v) for name, v in zip(names, scores.iou)},
            "confusion": np.asarray(matrix).tolist()}
