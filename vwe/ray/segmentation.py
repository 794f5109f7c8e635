"""DeepLab inference and segmentation evaluation as Ray Data pipelines.

infer-seg: decode (tasks) -> fused multi-scale logits at 1/8 size (an actor pool, one GPU per actor when
ray.use_gpu) -> upsample, optional dense CRF, PNG (CPU tasks, one core each: the CRF is single-threaded and the
GPU never waits for it). Only ids without a valid PNG are processed, so a re-run resumes.
eval-seg: `vwe.ray.data.score_labels`, as for the pseudo labels (one summed confusion matrix per batch, CPU tasks).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ray
import ray.data

from vwe import storage
from vwe.config import Config
from vwe.ray.cluster import init_ray
from vwe.ray.data import _finish, _inference_actors, _plain, score_labels
from vwe.stages import eval_seg, evaluate, infer_seg, make_cams

log = logging.getLogger(__name__)


def run_infer_seg(cfg: Config, split: str | None = None, crf: bool | None = None) -> dict[str, Any]:
    """Predictions of every image of `split` (default data.eval_split) that has none yet; `crf` defaults to seg.crf."""
    cfg = cfg.resolved()
    split = split or cfg.data.eval_split
    crf = cfg.seg.crf if crf is None else crf
    todo, done = make_cams.split_items(cfg, split, lambda out, i: infer_seg.prediction_path(out, split, crf, i),
                                       infer_seg.prediction_is_complete)
    log.info("infer-seg on %s%s: %d to do, %d already done", split, " with CRF" if crf else "", len(todo), len(done))
    rows: list[dict[str, Any]] = []
    if todo:
        init_ray(cfg.ray)
        batch = cfg.seg.infer_batch_size
        items = [{"id": item["id"], "path": item["path"]} for item in todo]
        dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // batch, 200)))
        dataset = dataset.map_batches(make_cams.read_images, batch_size=batch, batch_format="numpy")
        dataset = dataset.map_batches(
            infer_seg.SegPredictor, fn_constructor_kwargs={"cfg": cfg.to_dict(), "use_gpu": cfg.ray.use_gpu},
            batch_size=batch, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=_inference_actors(cfg, cfg.seg.num_actors)),
            num_gpus=1 if cfg.ray.use_gpu else 0, num_cpus=1)
        # the CRF takes seconds per image: one image per task spreads it over every core of the cluster (on the CPU
        # nodes when ray.crf_resource marks them, as for make-pseudo)
        placement = {"resources": {cfg.ray.crf_resource: 0.001}} if crf and cfg.ray.crf_resource else {}
        dataset = dataset.map_batches(infer_seg.write_labels, batch_size=1 if crf else batch, batch_format="numpy",
                                      fn_kwargs={"cfg": cfg.to_dict(), "split": split, "crf": crf}, num_cpus=1,
                                      **placement)
        rows = [_plain(row) for row in dataset.iter_rows()]
    manifest = storage.join(infer_seg.prediction_dir(cfg.out_dir, split, crf), "manifest.parquet")
    summary = _finish(cfg, "infer-seg", rows, len(done), manifest)
    return {"split": split, "crf": crf, "predictions": str(infer_seg.prediction_dir(cfg.out_dir, split, crf)),
            **summary}


def run_eval_seg(cfg: Config, split: str | None = None, crf: bool | None = None,
                 pred_dir: str | Path | None = None) -> dict[str, Any]:
    """mIoU of the predictions of `split` (default data.eval_split; those of infer-seg unless `pred_dir`).

    Writes `<out_dir>/eval_seg/<split>[_crf].json` and `..._classes.csv` (named after `pred_dir` when given).
    """
    cfg = cfg.resolved()
    split = split or cfg.data.eval_split
    crf = cfg.seg.crf if crf is None else crf
    name = f"{split}_crf" if crf else split
    if pred_dir is None:
        pred_dir = infer_seg.prediction_dir(cfg.out_dir, split, crf)
    else:
        name = f"{split}_{storage.name(pred_dir)}"
    scores = score_labels(cfg, split, pred_dir, "run `vwe infer-seg` on this split first")
    summary = {**scores, "crf": crf, "predictions": str(pred_dir)}
    files = evaluate.write_report(storage.join(cfg.out_dir, eval_seg.EVAL_DIR), name, summary)
    return {**summary, "files": {kind: str(path) for kind, path in files.items()}}
