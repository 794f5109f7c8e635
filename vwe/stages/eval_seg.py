"""Segmentation evaluation: the mIoU of label PNGs against a split's masks (METHOD §2), for DeepLab's predictions
(`vwe eval-seg`) and the pseudo labels: one summed confusion matrix per batch of 8 images (CPU tasks), added up on
the driver.

Output: `<out_dir>/eval_seg/<split>[_crf].json` and `..._classes.csv`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from vwe import storage
from vwe.config import Config
from vwe.evaluation import batch_confusion, class_names, eval_items, summarize, write_report
from vwe.ray.data import Tasks, sum_batches
from vwe.run_folder import RunFolder
from vwe.stages.stage import Stage


def score_labels(cfg: Config, split: str, label_dir: str | Path, hint: str,
                 unsure_as_background: bool = False) -> dict[str, Any]:
    """mIoU of the `<id>.png` label maps in `label_dir` against the masks of `split` (background + data.num_classes
    classes). Returns {"split", "images", "miou", "pixel_accuracy", "iou", "confusion"}. A missing mask or label
    file is a DataError naming it; `hint` says how to make the missing labels."""
    num_classes = cfg.data.num_classes + 1
    items = eval_items(cfg.data.root, split, label_dir, hint)
    totals = sum_batches(items, Tasks(batch_confusion, 8, {"num_classes": num_classes,
                                                           "unsure_as_background": unsure_as_background}),
                         ("confusion",), cfg.ray, f"score {storage.name(label_dir)} on {split}")
    return {"split": split, "images": int(totals["images"]),
            **summarize(totals["confusion"], class_names(cfg.data.root))}


def write_label_scores(cfg: Config, split: str, label_dir: str | Path, hint: str, scores_dir: str | Path, name: str,
                       unsure_as_background: bool = False, **fields: Any) -> dict[str, Any]:
    """`score_labels` of `label_dir` with `fields` added, written as `<scores_dir>/<name>.json` and
    `<name>_classes.csv`; returns the summary with the paths of those files."""
    scores = score_labels(cfg, split, label_dir, hint, unsure_as_background)
    summary = {**scores, **fields}
    files = write_report(scores_dir, name, summary)
    return {**summary, "files": {kind: str(path) for kind, path in files.items()}}


def evaluate_predictions(cfg: Config, split: str | None = None, crf: bool | None = None,
                         pred_dir: str | Path | None = None) -> dict[str, Any]:
    """mIoU of the predictions of `split` (default data.eval_split; those of infer-seg unless `pred_dir`).

    Writes `<out_dir>/eval_seg/<split>[_crf].json` and `..._classes.csv` (named after `pred_dir` when given).
    """
    run = RunFolder.of(cfg)
    split = split or cfg.data.eval_split
    crf = cfg.seg.crf.enabled if crf is None else crf
    name = run.seg_score_name(split, crf)
    if pred_dir is None:
        pred_dir = run.predictions(split, crf)
    else:
        name = f"{split}_{storage.name(pred_dir)}"
    return write_label_scores(cfg, split, pred_dir, "run `vwe infer-seg` on this split first", run.seg_scores, name,
                              crf=crf, predictions=str(pred_dir))


def scores_file(cfg: Config) -> str | Path:
    run = RunFolder.of(cfg)
    return storage.join(run.seg_scores, f"{run.seg_score_name(cfg.data.eval_split, cfg.seg.crf.enabled)}.json")


def run(cfg: Config) -> dict[str, Any]:
    summary = evaluate_predictions(cfg, cfg.data.eval_split)
    return {k: summary[k] for k in ("split", "crf", "images", "miou")}


STAGE = Stage(
    name="eval_seg", run=run,
    is_complete=lambda cfg: storage.is_file(scores_file(cfg)),
    outputs=lambda cfg: [RunFolder.of(cfg).seg_scores],
    depends_on=("data.eval_split", "data.num_classes", "seg.crf.enabled"))
