"""Segmentation scores (METHOD §2): confusion matrices and mIoU, shared by the CAM, pseudo-label and DeepLab evals.

Confusion rows are ground truth, columns predictions. Pixels whose ground truth is 255 (or any value outside
0..num_classes-1) are dropped. IoU_c = TP / (GT_c + Pred_c - TP); mIoU averages the classes present in the ground
truth (the VWE protocol; IRNet's chainercv instead also counts classes that are only predicted, as IoU 0).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int = 21) -> np.ndarray:
    """num_classes x num_classes int64 confusion of one label map pair (rows GT, columns prediction)."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    valid = (gt >= 0) & (gt < num_classes)
    truth = gt[valid].astype(np.int64)
    guess = pred[valid].astype(np.int64)
    if guess.size and (guess.min() < 0 or guess.max() >= num_classes):
        raise ValueError(f"predictions must lie in 0..{num_classes - 1} where the ground truth is valid, "
                         f"got {guess.min()}..{guess.max()}")
    counts = np.bincount(truth * num_classes + guess, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


@dataclass(frozen=True)
class SegmentationScores:
    """Scores from a confusion matrix.

    Attributes:
        iou: per-class IoU, nan for classes absent from the ground truth.
        miou: mean of `iou` over the classes present in the ground truth (nan if none).
        pixel_accuracy: correct pixels / valid pixels.
    """

    iou: np.ndarray
    miou: float
    pixel_accuracy: float


class ConfusionMatrix:
    """Accumulates a confusion matrix over images and turns it into IoU scores."""

    def __init__(self, num_classes: int = 21, matrix: np.ndarray | None = None) -> None:
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        if matrix is not None:
            self.add(matrix)

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """Adds one image: `gt` and `pred` are label maps of the same shape."""
        self.matrix += confusion(gt, pred, self.num_classes)

    def add(self, other: ConfusionMatrix | np.ndarray) -> ConfusionMatrix:
        """Adds another matrix (a ConfusionMatrix or a raw array) in place; returns self."""
        counts = other.matrix if isinstance(other, ConfusionMatrix) else np.asarray(other)
        if counts.shape != self.matrix.shape:
            raise ValueError(f"cannot add a {counts.shape} confusion matrix to a {self.matrix.shape} one")
        self.matrix += counts.astype(np.int64)
        return self

    def compute(self) -> SegmentationScores:
        counts = self.matrix.astype(np.float64)
        tp = np.diag(counts)
        gt_count = counts.sum(axis=1)
        pred_count = counts.sum(axis=0)
        present = gt_count > 0
        iou = np.full(self.num_classes, np.nan)
        np.divide(tp, gt_count + pred_count - tp, out=iou, where=present)
        miou = float(iou[present].mean()) if present.any() else float("nan")
        total = counts.sum()
        accuracy = float(tp.sum() / total) if total > 0 else float("nan")
        return SegmentationScores(iou=iou, miou=miou, pixel_accuracy=accuracy)


def sweep_confusions(
    high_res: np.ndarray,
    keys: np.ndarray,
    gt: np.ndarray,
    thresholds: Sequence[float],
    num_classes: int = 21,
) -> np.ndarray:
    """T x C x C confusions of `cam_to_label(high_res, keys, t)` against `gt`, for every background threshold t.

    One pass over the CAM: a pixel with best score s and best class k is labelled k for the thresholds below s and
    background for the others (s == t is background, the tie rule of `cam_to_label`; compared in float32).
    """
    scores = np.asarray(high_res, dtype=np.float32)
    keys = np.asarray(keys, dtype=np.int64)
    gt = np.asarray(gt)
    if scores.ndim != 3 or scores.shape[0] != len(keys) or scores.shape[1:] != gt.shape:
        raise ValueError(f"high_res {scores.shape} must be K x H x W with K = {len(keys)} and H x W = {gt.shape}")
    if len(keys) and (keys.min() < 0 or keys.max() + 1 >= num_classes):
        raise ValueError(f"keys must lie in 0..{num_classes - 2}, got {keys.tolist()}")
    levels = np.asarray(thresholds, dtype=np.float32)
    if levels.ndim != 1 or not np.isfinite(levels).all():
        raise ValueError(f"thresholds must be a 1-d list of finite numbers, got {thresholds!r}")
    valid = (gt >= 0) & (gt < num_classes)
    truth = gt[valid].astype(np.int64)
    if len(keys):
        planes = scores[:, valid]
        best = planes.argmax(axis=0)
        top = np.take_along_axis(planes, best[None], axis=0)[0]
        label = keys[best] + 1
    else:
        top = np.full(truth.shape, -np.inf, dtype=np.float32)
        label = np.zeros_like(truth)
    order = np.argsort(levels, kind="stable")
    n_levels, c = len(levels), num_classes
    # below[i] = how many thresholds lie strictly under pixel i's best score: it is foreground for exactly those.
    below = np.searchsorted(levels[order], top, side="left")
    fg = np.bincount((below * c + truth) * c + label, minlength=(n_levels + 1) * c * c).reshape(n_levels + 1, c, c)
    bg = np.bincount(below * c + truth, minlength=(n_levels + 1) * c).reshape(n_levels + 1, c)
    sweep = np.cumsum(fg[::-1], axis=0)[::-1][1:]  # sorted threshold j: pixels with below > j
    sweep[:, :, 0] += np.cumsum(bg, axis=0)[:-1]  # sorted threshold j: pixels with below <= j
    result = np.empty_like(sweep)
    result[order] = sweep
    return result
