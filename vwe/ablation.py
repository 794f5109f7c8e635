"""`vwe ablate`: the paper's CAM ablation (baseline, + visual words, + HSPP, both) over several training seeds.

Each (variant, seed) is the pipeline up to the CAM evaluation in `<out_dir>/ablation/<variant>/seed_<s>/`, on the
same data; the runs go side by side as the cluster holds them (Ray Tune trials), and a re-run skips the complete
ones. Per run: the CAM mIoU of data.cam_split at cam.background_score (the headline) and at the sweep's best, and
the diagnostics of `vwe.diagnostics`. Per variant: mean and sample standard deviation over the seeds, and the
paired difference from the baseline on the same seeds with its 95 % confidence interval (Student's t), which says
whether the variant beats the baseline beyond the seed spread. Written to `<out_dir>/ablation/ablation.json`,
`ablation.csv` (one row per variant), `runs.csv` (one row per run) and `ablation.png`. The first variant is the
baseline the others are compared with.
"""
from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import numpy as np

from vwe import storage
from vwe.cam import load_cam, normalize_image
from vwe.config import Config
from vwe.data.voc import VOCDataset, read_image, read_mask
from vwe.diagnostics import CamMass, word_diagnostics
from vwe.evaluation import write_rows
from vwe.io import write_json
from vwe.ray.cluster import quiet_worker
from vwe.ray.tune import run_side_by_side
from vwe.run_folder import RunFolder

log = logging.getLogger(__name__)

# The paper's CAM ablation (mIoU %, VOC 2012 train, ResNet-50), METHOD §7
PAPER_ABLATION = {"baseline": 48.3, "vwe": 51.1, "hspp": 50.6, "vwe+hspp": 52.9}
RECORD = "ablation_record.json"  # in each run's folder: its scores and diagnostics
# two-sided 95 % quantiles of Student's t by degrees of freedom (1..10); the normal's beyond
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def folder(cfg: Config) -> str:
    return str(RunFolder.of(cfg).ablation)


def run_configs(cfg: Config, variants: tuple[str, ...], seeds: int) -> list[Config]:
    """One config per (variant, seed), seeds 1..N (train.seed), each with its own run folder."""
    return [cfg.with_overrides({"model.variant": variant, "train.seed": seed,
                                "out_dir": str(storage.join(folder(cfg), variant.replace("+", "_"), f"seed_{seed}"))})
            for variant in variants for seed in range(1, seeds + 1)]


def ablation_run(cfg: Config) -> dict[str, Any]:
    """One (variant, seed): the pipeline up to eval_cam (complete stages skipped), then its diagnostics; the record
    is kept in the run folder."""
    from vwe.pipeline import run

    quiet_worker(cfg.ray.cpus_per_worker, cfg.out_dir, "ablation")  # a Tune trial's process: vwe's lines only
    run(cfg, until="eval_cam")
    split = cfg.data.cam_split
    summary = json.loads(storage.read_text(storage.join(RunFolder.of(cfg).cam_scores, f"{split}.json")))
    record = {"variant": cfg.model.variant, "seed": cfg.train.seed, "cam_miou": summary["miou"],
              "best_cam_miou": summary["best_miou"], "best_threshold": summary["best_threshold"],
              **diagnose(cfg, split)}
    write_json(storage.join(cfg.out_dir, RECORD), record)
    return record


def diagnose(cfg: Config, split: str) -> dict[str, Any]:
    """`vwe.diagnostics` of the run's classifier on `split`: the word branch on the images at scale 1, and the CAM
    mass shares of the saved CAMs where the data has part masks."""
    from vwe.stages.train_cam import load_trained_classifier

    model, _ = load_trained_classifier(RunFolder.of(cfg).classifier_at(cfg.cam.classifier_epoch))
    voc = VOCDataset(cfg.data.root)
    ids = voc.split_ids(split)
    images = (normalize_image(read_image(voc.image_path(i)))[None] for i in ids)
    found = word_diagnostics(model, images)
    if all(voc.part_path(i) is not None for i in ids):
        mass = CamMass()
        for image_id in ids:
            cam = load_cam(RunFolder.of(cfg).cam(image_id))
            mass.add(cam.high_res, cam.keys, read_mask(voc.mask_path(image_id)), read_mask(voc.part_path(image_id)))
        found.update(mass.shares())
    return found


def paired(values: list[float], baseline: list[float]) -> dict[str, float | None]:
    """Mean, sample SD and 95 % confidence half-width of the per-seed differences values - baseline."""
    differences = np.asarray(values) - np.asarray(baseline)
    n = len(differences)
    sd = float(differences.std(ddof=1)) if n > 1 else None
    half = _T95[n - 2] * sd / math.sqrt(n) if sd is not None and n - 1 <= len(_T95) else (
        1.96 * sd / math.sqrt(n) if sd is not None else None)
    return {"mean": float(differences.mean()), "sd": sd, "ci95": half}


def verdict(difference: dict[str, float | None]) -> str:
    if difference["ci95"] is None:
        return "one seed: no spread"
    if difference["mean"] - difference["ci95"] > 0:
        return "better"
    if difference["mean"] + difference["ci95"] < 0:
        return "worse"
    return "within the seed spread"


def summarize(records: list[dict[str, Any]], baseline: str = "baseline") -> list[dict[str, Any]]:
    """One row per variant (in the records' order): the CAM mIoU's mean and SD (in %), the per-seed values, the
    paired difference from `baseline` and its verdict, the diagnostics' means and the paper's number."""
    by_variant: dict[str, dict[int, dict[str, Any]]] = {}
    for record in records:
        by_variant.setdefault(record["variant"], {})[record["seed"]] = record
    reference = by_variant.get(baseline, {})
    rows = []
    for variant, runs in by_variant.items():
        seeds = sorted(runs)
        scores = [100 * runs[s]["cam_miou"] for s in seeds]
        row: dict[str, Any] = {
            "variant": variant, "seeds": len(seeds), "cam_miou_mean": round(float(np.mean(scores)), 2),
            "cam_miou_sd": round(float(np.std(scores, ddof=1)), 2) if len(scores) > 1 else None,
            "cam_miou_per_seed": " / ".join(f"{v:.1f}" for v in scores),
            "best_cam_miou_mean": round(100 * float(np.mean([runs[s]["best_cam_miou"] for s in seeds])), 2)}
        shared = [s for s in seeds if s in reference]
        if variant != baseline and shared:
            difference = paired([100 * runs[s]["cam_miou"] for s in shared],
                                [100 * reference[s]["cam_miou"] for s in shared])
            row.update(vs_baseline=round(difference["mean"], 2),
                       vs_baseline_ci95=None if difference["ci95"] is None else round(difference["ci95"], 2),
                       verdict=verdict(difference))
        else:
            row.update(vs_baseline=None, vs_baseline_ci95=None, verdict="")
        for key in ("codebook_used", "word_label_accuracy", "word_label_f1", "cam_on_part", "cam_on_body",
                    "cam_elsewhere", "cam_part_of_object"):
            values = [runs[s][key] for s in seeds if key in runs[s]]
            row[key] = round(float(np.mean(values)), 3) if values else None
        row["paper_voc_train"] = PAPER_ABLATION.get(variant)
        rows.append(row)
    return rows


def ablate(cfg: Config, variants: tuple[str, ...] = tuple(PAPER_ABLATION), seeds: int = 1) -> dict[str, Any]:
    """Every variant with `seeds` training seeds on the same data, side by side as the cluster allows; returns
    {"rows": one per variant, "runs": one per run, "files": ...}."""
    from vwe.pipeline import run
    from vwe.report import build_report
    from vwe.report.plots import plot_ablation

    run(cfg, until="data")  # the benchmark is written (or checked) once, before the runs read it
    configs = run_configs(cfg, variants, seeds)
    log.info("ablation: %d variant(s) x %d seed(s) = %d runs in %s", len(variants), seeds, len(configs), folder(cfg))
    run_side_by_side(ablation_run, configs, name=f"ablation_{time.strftime('%Y%m%d_%H%M%S')}",
                     storage_path=str(storage.join(RunFolder.of(cfg).train_runs, "ablation")))
    records = [json.loads(storage.read_text(storage.join(c.out_dir, RECORD))) for c in configs]
    rows = summarize(records, baseline=variants[0])
    base = folder(cfg)
    files = {"json": storage.join(base, "ablation.json"), "csv": storage.join(base, "ablation.csv"),
             "runs": storage.join(base, "runs.csv"), "figure": storage.join(base, "ablation.png")}
    write_json(files["json"], {"split": cfg.data.cam_split, "background_score": cfg.cam.background_score,
                               "rows": rows, "runs": records})
    write_rows(files["csv"], rows)
    write_rows(files["runs"], _same_keys(records))
    plot_ablation(rows, records, files["figure"], cfg.data.cam_split, cfg.cam.background_score)
    files["report"] = build_report(cfg.out_dir)  # the figure and the table in the run folder's report
    return {"rows": rows, "runs": records, "files": {k: str(v) for k, v in files.items()}}


def _same_keys(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with every key of any row (None where a row lacks it), for one CSV table."""
    keys = list(dict.fromkeys(key for row in rows for key in row))
    return [{key: row.get(key) for key in keys} for row in rows]
