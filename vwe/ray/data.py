"""Per-image stages as Ray Data pipelines: CAM inference in an actor pool, CRF pseudo labels as CPU tasks, and
evaluation with per-image confusion matrices summed on the driver.

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

from vwe.config import Config
from vwe.errors import DataError
from vwe.io import update_manifest
from vwe.ray.cluster import init_ray
from vwe.stages import make_cams

log = logging.getLogger(__name__)


def _inference_actors(cfg: Config) -> int:
    if cfg.cam.num_actors > 0:
        return cfg.cam.num_actors
    if cfg.ray.use_gpu:
        return max(1, int(ray.cluster_resources().get("GPU", 0)))
    return 1


def _finish(cfg: Config, stage: str, rows: list[dict[str, Any]], done: int, manifest: Path) -> dict[str, Any]:
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
    manifest = Path(cfg.out_dir) / make_cams.CAM_DIR / "manifest.parquet"
    return {"split": split, **_finish(cfg, "make-cam", rows, len(done), manifest)}


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """Arrow/numpy scalars -> Python values, for the Parquet manifest."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()}
