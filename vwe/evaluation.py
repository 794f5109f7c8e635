"""Evaluation shared by the stages: per-image confusion matrices of label PNGs and of CAMs at every background
score (IRNet's eval_cam, METHOD §2), their summaries and the mIoU reports (JSON + CSV).

mIoU is the mean over classes present in the ground truth (`vwe.metrics`); ground truth is
`SegmentationClassAug/<id>.png` when present, else `SegmentationClass/<id>.png`, its 255 pixels left out.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vwe import storage
from vwe.cam import batched_cams, load_cam
from vwe.data.voc import CLASSES, IGNORE, NUM_CLASSES, VOCDataset, read_classes, read_image, read_mask
from vwe.errors import DataError
from vwe.io import write_json, write_text
from vwe.metrics import ConfusionMatrix, confusion, sweep_confusions

CLASS_NAMES = ("background", *CLASSES)


def gt_mask(voc: VOCDataset, image_id: str) -> np.ndarray:
    path = voc.mask_path(image_id)
    if path is None:
        raise DataError(f"{voc.root}: no ground-truth mask for {image_id} (SegmentationClassAug or SegmentationClass)")
    return read_mask(path)


def eval_items(root: str | Path, split: str, label_dir: str | Path, hint: str) -> list[dict[str, str]]:
    """{"id", "mask", "pred"} for every id of `split`; a missing mask or label PNG is a DataError naming it (and
    saying `hint`, how to make the missing labels)."""
    voc = VOCDataset(root)
    present = set(storage.listdir(label_dir))  # one listing, not a request per id (slow in an object store)
    items, no_mask, no_pred = [], [], []
    for image_id in voc.split_ids(split):
        mask = voc.mask_path(image_id)
        pred = storage.join(label_dir, f"{image_id}.png")
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
        raise DataError(f"{label_dir}: {len(no_pred)} label files missing for split {split!r}, e.g. {no_pred[0]} "
                        f"({hint})")
    return items


def image_confusion(pred_path: str | Path, mask_path: str | Path, num_classes: int,
                    unsure_as_background: bool = False) -> np.ndarray:
    """num_classes x num_classes confusion (rows ground truth) of one label PNG against its mask.

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


def class_names(root: str | Path) -> tuple[str, ...]:
    """"background" and the class names of the dataset folder `root` (VOC's, or COCO's after prepare-coco)."""
    return ("background", *read_classes(root))


def summarize(matrix: np.ndarray, names: Sequence[str] = CLASS_NAMES) -> dict[str, Any]:
    """mIoU, pixel accuracy, per-class IoU (None for classes absent from the ground truth, keyed by `names`) and the
    matrix."""
    scores = ConfusionMatrix(len(matrix), matrix).compute()
    return {"miou": scores.miou, "pixel_accuracy": scores.pixel_accuracy, "iou": _per_class(scores.iou, names),
            "confusion": np.asarray(matrix).tolist()}


def cam_confusions(cam_file: str | Path, gt: np.ndarray, thresholds: list[float],
                   num_classes: int = NUM_CLASSES) -> np.ndarray:
    """T x C x C confusions (C = num_classes + 1) of one image's CAM labels at each background score."""
    result = load_cam(cam_file)
    if result.high_res.shape[1:] != gt.shape:
        raise DataError(f"{cam_file}: CAM size {result.high_res.shape[1:]} differs from its mask {gt.shape}")
    return sweep_confusions(result.high_res, result.keys, gt, thresholds, num_classes + 1)


BEST_NOTE = ("best_*: the best background score of the sweep, chosen on the evaluated split itself: an optimistic "
             "number, not the protocol's (the papers report at a background score fixed beforehand)")


def cam_scores(confusions: np.ndarray, background_score: float, sweep: list[float],
               names: Sequence[str] = CLASS_NAMES) -> dict[str, Any]:
    """The CAM mIoU at the config's fixed `background_score` (the headline: "miou", "iou") and along the `sweep`,
    with the sweep's best beside it ("best_threshold", "best_miou", "best_iou": optimistic, see BEST_NOTE).

    `confusions` is (1 + T) x C x C: at `background_score`, then at each of the T scores of `sweep`.
    """
    scores = [ConfusionMatrix(len(c), c).compute() for c in confusions]
    curve = [float(s.miou) for s in scores[1:]]
    best = int(np.nanargmax(curve))
    return {"background_score": background_score, "miou": float(scores[0].miou),
            "iou": _per_class(scores[0].iou, names),
            "sweep": {"thresholds": list(sweep), "miou": curve}, "best_threshold": sweep[best],
            "best_miou": curve[best], "best_iou": _per_class(scores[1 + best].iou, names),
            "note": BEST_NOTE}


def _per_class(iou: np.ndarray, names: Sequence[str]) -> dict[str, float | None]:
    return {name: (None if np.isnan(v) else float(v)) for name, v in zip(names[:len(iou)], iou)}


def write_report(directory: str | Path, name: str, summary: dict[str, Any]) -> dict[str, str | Path]:
    """`<name>.json` (everything), `<name>_classes.csv` (per-class IoU % and mIoU, the layout of the authors'
    README table: one row, and for CAMs a second with the sweep's best) and, for CAMs, `<name>_curve.csv`
    (background score, mIoU %)."""
    paths = {"json": storage.join(directory, f"{name}.json"), "classes": storage.join(directory, f"{name}_classes.csv")}
    write_json(paths["json"], summary)
    rows = [[*summary["iou"], "mIoU"], _row(summary["iou"], summary["miou"])]
    if "sweep" in summary:
        rows = [["", *rows[0]], [f"at {summary['background_score']:g}", *rows[1]],
                [f"best {summary['best_threshold']:g} (optimistic)", *_row(summary["best_iou"], summary["best_miou"])]]
        sweep = summary["sweep"]
        paths["curve"] = storage.join(directory, f"{name}_curve.csv")
        write_text(paths["curve"], _csv([["threshold", "mIoU"],
                                         *([t, _percent(m)] for t, m in zip(sweep["thresholds"], sweep["miou"]))]))
    write_text(paths["classes"], _csv(rows))
    return paths


def _row(iou: dict[str, float | None], miou: float) -> list[str]:
    return [*(_percent(v) for v in iou.values()), _percent(miou)]


def write_rows(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """A list of same-keyed dicts as CSV."""
    write_text(path, _csv([list(rows[0]), *([row[k] for k in rows[0]] for row in rows)]) if rows else "")


def format_table(summary: dict[str, Any]) -> str:
    """The per-class IoU table as aligned text, for the terminal; CAM scores get a second column, the sweep's
    (optimistic) best."""
    names = [*summary["iou"], "mIoU"]
    columns = [_row(summary["iou"], summary["miou"])]
    header = ""
    if "sweep" in summary:
        columns.append(_row(summary["best_iou"], summary["best_miou"]))
        header = f"at {summary['background_score']:g}", f"best {summary['best_threshold']:g} (optimistic)"
    width = max(len(n) for n in names)
    lines = [f"{'':<{width}}  " + "  ".join(f"{h:>8}" for h in header)] if header else []
    lines += [f"{n:<{width}}  " + "  ".join(f"{column[i]:>8}" for column in columns) for i, n in enumerate(names)]
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "" if value is None or np.isnan(value) else f"{100 * value:.1f}"


def _csv(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def model_cam_scores(model: nn.Module, root: str | Path, split: str, background_score: float, sweep: list[float], *,
                     num_images: int = 0, scales: Sequence[float] = (1.0,), batch_size: int = 8,
                     dtype: torch.dtype = torch.float32, num_classes: int = NUM_CLASSES,
                     labels_from: str = "xml") -> dict[str, Any]:
    """CAM mIoU of `model` (in memory, no CAM files) on the first `num_images` images of `split` (0: all of them),
    `cam_scores` plus the image count. Used between training epochs."""
    thresholds = [background_score, *sweep]
    voc = VOCDataset(root)
    ids = voc.split_ids(split)
    ids = ids[:num_images] if num_images > 0 else ids
    labels = voc.image_labels(num_classes=num_classes, labels_from=labels_from)
    total = np.zeros((len(thresholds), num_classes + 1, num_classes + 1), np.int64)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(ids), batch_size):
            chunk = ids[start:start + batch_size]
            images = [read_image(voc.image_path(i)) for i in chunk]
            results = batched_cams(model, images, [labels[i] for i in chunk], scales, dtype=dtype)
            for image_id, result in zip(chunk, results):
                total += sweep_confusions(result.high_res, result.keys, gt_mask(voc, image_id), thresholds,
                                          num_classes + 1)
    finally:
        model.train(was_training)
    return {"split": split, "images": len(ids),
            **cam_scores(total, background_score, sweep, ("background", *voc.classes))}
