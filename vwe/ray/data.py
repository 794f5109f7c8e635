"""Per-image stages as Ray Data pipelines: CAM inference in an actor pool, CRF pseudo labels as CPU tasks, and
evaluation with per-image confusion matrices summed on the driver (the CAM threshold sweep, and `score_labels` for
label maps: pseudo labels and DeepLab predictions).

Every stage first lists the ids whose output is missing or incomplete and processes only those, so re-running a
stage resumes it. Outputs are written by the workers (atomically) and summarised in a Parquet manifest.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.data

from vwe import storage
from vwe.config import Config
from vwe.errors import DataError
from vwe.io import update_manifest
from vwe.ray.cluster import init_ray
from vwe.data.voc import VOCDataset
from vwe.stages import eval_seg, evaluate, make_cams, make_pseudo_labels

log = logging.getLogger(__name__)


def _inference_actors(cfg: Config, requested: int | None = None) -> int:
    """`requested` (default cam.num_actors) when > 0, else one per GPU (ray.use_gpu) or one on CPU."""
    requested = cfg.cam.num_actors if requested is None else requested
    if requested > 0:
        return requested
    if cfg.ray.use_gpu:
        return max(1, int(ray.cluster_resources().get("GPU", 0)))
    return 1


def _finish(cfg: Config, stage: str, rows: list[dict[str, Any]], done: int, manifest: str | Path) -> dict[str, Any]:
    """Writes the manifest, reports bad inputs by id and file, and fails unless data.skip_bad."""
    bad = [row for row in rows if row["error"]]
    for row in bad:
        log.warning("%s: skipped %s: %s", stage, row["id"], row["error"])
    total = update_manifest(manifest, rows) if rows else done
    summary = {"processed": len(rows) - len(bad), "already_done": done, "bad": len(bad), "manifest": str(manifest),
               "manifest_rows": total}
    if bad and not cfg.data.skip_bad:
        listing = "; ".join(f"{row['id']} ({row['error']})" for row in bad[:5])
        raise DataError(f"{stage}: {len(bad)} input(s) could not be read: {listing}"
                        f"{' ...' if len(bad) > 5 else ''} -- the others are saved; fix or remove these ids, "
                        f"or set data.skip_bad=true to go on without them (listed in {manifest})")
    return summary


def run_make_cams(cfg: Config, split: str | None = None) -> dict[str, Any]:
    """CAMs of every image of `split` (default cfg.data.cam_split) that has none yet."""
    cfg = cfg.resolved()
    split = split or cfg.data.cam_split
    todo, done = make_cams.split_items(cfg, split, make_cams.cam_path, make_cams.cam_is_complete)
    log.info("make-cam on %s: %d to do, %d already done", split, len(todo), len(done))
    rows: list[dict[str, Any]] = []
    if todo:
        init_ray(cfg.ray)
        actors = _inference_actors(cfg)
        dataset = ray.data.from_items(todo, override_num_blocks=max(1, min(len(todo) // cfg.cam.batch_size, 200)))
        dataset = dataset.map_batches(make_cams.read_images, batch_size=cfg.cam.batch_size, batch_format="numpy")
        dataset = dataset.map_batches(
            make_cams.CamPredictor, fn_constructor_kwargs={"cfg": cfg.to_dict(), "use_gpu": cfg.ray.use_gpu},
            batch_size=cfg.cam.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=1 if cfg.ray.use_gpu else 0, num_cpus=1)
        rows = [_plain(row) for row in dataset.iter_rows()]
    manifest = storage.join(cfg.out_dir, make_cams.CAM_DIR, "manifest.parquet")
    return {"split": split, **_finish(cfg, "make-cam", rows, len(done), manifest)}


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """Arrow/numpy scalars -> Python values, for the Parquet manifest."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()}


def run_make_pseudo(cfg: Config, split: str | None = None) -> dict[str, Any]:
    """Pseudo labels of every image of `split` (default cfg.data.train_split) from its CAMs; CRF as CPU tasks."""
    cfg = cfg.resolved()
    split = split or cfg.data.train_split
    todo, done = make_cams.split_items(cfg, split, make_pseudo_labels.label_path, make_pseudo_labels.label_is_complete)
    _require_cams(cfg, [item["id"] for item in todo], "make-pseudo")
    log.info("make-pseudo on %s (%s): %d to do, %d already done", split, cfg.pseudo.method, len(todo), len(done))
    rows: list[dict[str, Any]] = []
    if todo:
        init_ray(cfg.ray)
        items = [{"id": item["id"], "path": item["path"]} for item in todo]
        # one image per task and one core each: the CRF is single-threaded, so this scales with the cluster's CPUs.
        # The CPU nodes' custom resource is a marker (a tiny amount per task): their CPUs set the concurrency.
        placement = {"resources": {cfg.ray.crf_resource: 0.001}} if cfg.ray.crf_resource else {}
        dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 1000)))
        dataset = dataset.map_batches(make_pseudo_labels.make_labels, fn_kwargs={"cfg": cfg.to_dict()},
                                      batch_size=1, batch_format="numpy", num_cpus=1, **placement)
        rows = [_plain(row) for row in dataset.iter_rows()]
    manifest = storage.join(cfg.out_dir, make_pseudo_labels.LABEL_DIR, "manifest.parquet")
    return {"split": split, **_finish(cfg, "make-pseudo", rows, len(done), manifest)}


def _require_cams(cfg: Config, ids: list[str], stage: str) -> None:
    missing = [i for i in ids if not make_cams.cam_is_complete(make_cams.cam_path(cfg.out_dir, i))]
    if missing:
        folder = storage.join(cfg.out_dir, make_cams.CAM_DIR)
        raise DataError(f"{stage}: {len(missing)} image(s) have no CAM file in {folder}, e.g. {missing[0]}: "
                        "run `vwe make-cam` on their split first")


def _sweep_batch(batch: dict[str, np.ndarray], thresholds: list[float], num_classes: int) -> dict[str, np.ndarray]:
    total = sum(evaluate.cam_sweep(cam, evaluate.read_mask(mask), thresholds, num_classes)
                for cam, mask in zip(batch["cam"], batch["mask"]))
    return {"confusions": total[None], "images": np.array([len(batch["cam"])])}


def _eval_items(cfg: Config, split: str) -> list[dict[str, str]]:
    voc = VOCDataset(cfg.data.root)
    items = []
    for image_id in voc.split_ids(split):
        mask = voc.mask_path(image_id)
        if mask is None:
            raise DataError(f"{voc.split_path(split)}: {image_id} has no ground-truth mask; evaluate a split with masks")
        items.append({"id": image_id, "mask": str(mask)})
    return items


def run_eval_cams(cfg: Config, split: str | None = None) -> dict[str, Any]:
    """mIoU of CAM labels on `split` (default cfg.data.cam_split) for every threshold of cfg.cam.sweep, in one pass.

    Writes `<out_dir>/eval_cam/<split>.json`, `<split>_classes.csv` and `<split>_curve.csv`.
    """
    cfg = cfg.resolved()
    split = split or cfg.data.cam_split
    items = _eval_items(cfg, split)
    _require_cams(cfg, [item["id"] for item in items], "eval-cam")
    for item in items:
        item["cam"] = str(make_cams.cam_path(cfg.out_dir, item["id"]))
    init_ray(cfg.ray)
    thresholds = list(cfg.cam.sweep)
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // 8, 200)))
    num_classes = cfg.data.num_classes
    dataset = dataset.map_batches(_sweep_batch, fn_kwargs={"thresholds": thresholds, "num_classes": num_classes},
                                  batch_size=8, batch_format="numpy", num_cpus=1)
    total = np.zeros((len(thresholds), num_classes + 1, num_classes + 1), np.int64)
    images = 0
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        total += batch["confusions"].sum(axis=0)
        images += int(batch["images"].sum())
    summary = {"split": split, "images": images, **evaluate.sweep_summary(total, thresholds)}
    files = evaluate.write_report(storage.join(cfg.out_dir, "eval_cam"), split, summary)
    summary["files"] = {k: str(v) for k, v in files.items()}
    return summary


def score_labels(cfg: Config, split: str, label_dir: str | Path, hint: str,
                 unsure_as_background: bool = False) -> dict[str, Any]:
    """mIoU of the `<id>.png` label maps in `label_dir` against the masks of `split` (background + data.num_classes
    classes): a summed confusion matrix per batch of 8 images (CPU tasks), added up here.

    Returns {"split", "images", "miou", "pixel_accuracy", "iou", "confusion"}. A missing mask or label file is a
    DataError naming it; `hint` says how to make the missing labels.
    """
    cfg = cfg.resolved()
    num_classes = cfg.data.num_classes + 1
    items = eval_seg.eval_items(cfg.data.root, split, label_dir, hint)
    init_ray(cfg.ray)
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // 8, 200)))
    dataset = dataset.map_batches(
        eval_seg.batch_confusion, fn_kwargs={"num_classes": num_classes, "unsure_as_background": unsure_as_background},
        batch_size=8, batch_format="numpy", num_cpus=1)
    total = np.zeros((num_classes, num_classes), np.int64)
    images = 0
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        total += batch["confusion"].sum(axis=0)
        images += int(batch["images"].sum())
    return {"split": split, "images": images, **eval_seg.summarize(total, eval_seg.class_names(cfg.data.num_classes))}


def run_eval_labels(cfg: Config, label_dir: str | Path, split: str, name: str) -> dict[str, Any]:
    """mIoU of the pseudo labels in `label_dir` on `split`, unsure pixels (255) counted as background.

    Writes `<label_dir>/../eval_labels/<name>.json` and `<name>_classes.csv` (`vwe.stages.evaluate.write_report`).
    """
    scores = score_labels(cfg, split, label_dir, "make the pseudo labels of this split first",
                          unsure_as_background=True)
    summary = {**scores, "labels": str(label_dir)}
    files = evaluate.write_report(storage.join(storage.parent(label_dir), "eval_labels"), name, summary)
    return {**summary, "files": {k: str(v) for k, v in files.items()}}
