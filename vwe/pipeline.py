"""`vwe run`: the whole pipeline, stage after stage, each skipped when its outputs are complete.

Like IRNet's run_sample.py, but a stage decides from its outputs on disk whether it still has work, so an
interrupted run is re-run cheaply with the same command (per-image stages also resume image by image). Once a
stage has run, every later stage runs afresh: its old outputs came from the old inputs. Stage wall times and
throughput go to `<out_dir>/stages.json`. out_dir (and data.root) may be a local or NFS path or an object-store
URI such as s3://bucket/run: every stage reads and writes through `vwe.storage`.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vwe import storage
from vwe.config import Config
from vwe.errors import ConfigError
from vwe.io import write_json

log = logging.getLogger(__name__)


@dataclass
class Stage:
    name: str
    is_complete: Callable[[Config], bool]
    run: Callable[[Config], dict[str, Any]]
    outputs: Callable[[Config], list[str | Path]]  # deleted before the stage runs afresh


def _done(cfg: Config, *parts: str) -> bool:
    return storage.is_file(storage.join(cfg.out_dir, *parts))


def _data_complete(cfg: Config) -> bool:
    return _done(cfg, "data_check.json")


def _data(cfg: Config) -> dict[str, Any]:
    from vwe.data.synth import generate
    from vwe.data.voc import VOCDataset

    summary: dict[str, Any] = {}
    if cfg.synth.enabled:
        synth = cfg.synth
        summary["synth"] = generate(cfg.data.root, synth.splits, synth.height, synth.width,
                                    num_classes=synth.num_classes, seed=synth.seed)
        summary["synth"].pop("classes", None)
    report = VOCDataset(cfg.data.root).check(skip_bad=cfg.data.skip_bad, sbd_root=cfg.data.sbd_root or None)
    for note in report.notes:
        log.info("%s", note)
    summary["counts"] = report.counts
    summary["bad_files"] = len(report.bad)
    write_json(storage.join(cfg.out_dir, "data_check.json"), summary)
    return summary


def _classifier_complete(cfg: Config) -> bool:
    return _done(cfg, "classifier", "model.pth")


def _classifier(cfg: Config) -> dict[str, Any]:
    from vwe.ray.train import fit_classifier

    result = fit_classifier(cfg)
    result.pop("history")
    return {**result, "images": cfg.train.batch_size * (result["step"] - result["resumed_from"])}


def _all_done(cfg: Config, split: str, path: Callable, is_complete: Callable) -> bool:
    from vwe.data.voc import VOCDataset

    return all(is_complete(path(cfg.out_dir, i)) for i in VOCDataset(cfg.data.root).split_ids(split))


def _cam_splits(cfg: Config) -> list[str]:
    """CAMs for the pseudo labels (train split) and for the evaluation split, where the final model is compared
    with the CAMs themselves."""
    return list(dict.fromkeys([cfg.data.train_split, cfg.data.cam_split, cfg.data.eval_split]))


def _cams_complete(cfg: Config) -> bool:
    from vwe.stages.make_cams import cam_is_complete, cam_path

    return all(_all_done(cfg, split, cam_path, cam_is_complete) for split in _cam_splits(cfg))


def _cams(cfg: Config) -> dict[str, Any]:
    from vwe.ray.data import run_make_cams

    results = [run_make_cams(cfg, split) for split in _cam_splits(cfg)]
    return {"splits": results, "images": sum(r["processed"] for r in results)}


def _eval_cam_splits(cfg: Config) -> list[str]:
    return list(dict.fromkeys([cfg.data.cam_split, cfg.data.eval_split]))


def _eval_cam_complete(cfg: Config) -> bool:
    return all(_done(cfg, "eval_cam", f"{split}.json") for split in _eval_cam_splits(cfg))


def _eval_cam(cfg: Config) -> dict[str, Any]:
    from vwe.ray.data import run_eval_cams
    from vwe.stages.evaluate import format_table

    results = {}
    for split in _eval_cam_splits(cfg):
        summary = run_eval_cams(cfg, split)
        log.info("CAM mIoU on %s per class, at the best background threshold %.2f:\n%s", split,
                 summary["best_threshold"], format_table(summary))
        results[split] = {k: summary[k] for k in ("images", "best_threshold", "best_miou")}
    return results


def _pseudo_complete(cfg: Config) -> bool:
    from vwe.stages.make_pseudo_labels import label_is_complete, label_path

    return _all_done(cfg, cfg.data.train_split, label_path, label_is_complete)


def _pseudo(cfg: Config) -> dict[str, Any]:
    from vwe.ray.data import run_eval_labels, run_make_pseudo
    from vwe.stages.make_pseudo_labels import LABEL_DIR

    result = run_make_pseudo(cfg, cfg.data.train_split)
    scores = run_eval_labels(cfg, storage.join(cfg.out_dir, LABEL_DIR), cfg.data.cam_split,
                             f"pseudo_{cfg.data.cam_split}")
    log.info("pseudo-label mIoU on %s: %.1f", cfg.data.cam_split, 100 * scores["miou"])
    return {**result, "images": result["processed"], "miou": scores["miou"]}


def _train_seg_complete(cfg: Config) -> bool:
    return _done(cfg, "deeplab", "model.pth")


def _train_seg(cfg: Config) -> dict[str, Any]:
    from vwe.ray.train import fit

    result = fit("train_seg", cfg)
    result.pop("history")
    return {**result, "images": cfg.seg.batch_size * (result["step"] - result["resumed_from"])}


def _infer_seg_complete(cfg: Config) -> bool:
    from vwe.stages.infer_seg import prediction_is_complete, prediction_path

    split, crf = cfg.data.eval_split, cfg.seg.crf
    return _all_done(cfg, split, lambda out, i: prediction_path(out, split, crf, i), prediction_is_complete)


def _infer_seg(cfg: Config) -> dict[str, Any]:
    from vwe.ray.segmentation import run_infer_seg

    result = run_infer_seg(cfg, cfg.data.eval_split)
    return {**result, "images": result["processed"]}


def _eval_seg_name(cfg: Config) -> str:
    return f"{cfg.data.eval_split}_crf" if cfg.seg.crf else cfg.data.eval_split


def _eval_seg_complete(cfg: Config) -> bool:
    return _done(cfg, "eval_seg", f"{_eval_seg_name(cfg)}.json")


def _eval_seg(cfg: Config) -> dict[str, Any]:
    from vwe.ray.segmentation import run_eval_seg

    summary = run_eval_seg(cfg, cfg.data.eval_split)
    return {k: summary[k] for k in ("split", "crf", "images", "miou")}


def _seg_outputs(cfg: Config) -> list[str | Path]:
    from vwe.ray.train import storage_path

    return [storage.join(cfg.out_dir, "deeplab"), storage.join(storage_path(cfg), "train_seg")]


def _report_complete(cfg: Config) -> bool:
    return _done(cfg, "report.html")


def _report(cfg: Config) -> dict[str, Any]:
    from vwe.report import build_report

    return {"report": str(build_report(cfg.out_dir))}


def _classifier_outputs(cfg: Config) -> list[str | Path]:
    from vwe.ray.train import storage_path

    return [storage.join(cfg.out_dir, "classifier"), storage.join(storage_path(cfg), "train_cam")]


def _under(*names: str) -> Callable[[Config], list[str | Path]]:
    return lambda cfg: [storage.join(cfg.out_dir, name) for name in names]


STAGES = [
    Stage("data", _data_complete, _data, _under("data_check.json")),
    Stage("train_cam", _classifier_complete, _classifier, _classifier_outputs),
    Stage("make_cam", _cams_complete, _cams, _under("cams")),
    Stage("eval_cam", _eval_cam_complete, _eval_cam, _under("eval_cam")),
    Stage("make_pseudo", _pseudo_complete, _pseudo, _under("pseudo_labels", "eval_labels")),
    Stage("train_seg", _train_seg_complete, _train_seg, _seg_outputs),
    Stage("infer_seg", _infer_seg_complete, _infer_seg, _under("seg", "seg_crf")),
    Stage("eval_seg", _eval_seg_complete, _eval_seg, _under("eval_seg")),
    Stage("report", _report_complete, _report, _under("report.html", "report")),
]


def run(cfg: Config, force: tuple[str, ...] = (), until: str | None = None) -> dict[str, Any]:
    """Runs every stage whose outputs are incomplete (or named in `force`), up to and including `until`;
    returns the per-stage records."""
    cfg = cfg.resolved()
    names = [stage.name for stage in STAGES]
    if until is not None and until not in names:
        raise ConfigError(f"unknown stage {until!r} to run until (stages: {', '.join(names)})")
    planned = STAGES[:names.index(until) + 1 if until else len(STAGES)]
    storage.makedirs(cfg.out_dir)
    cfg.dump(storage.join(cfg.out_dir, "config.yaml"))
    records_path = storage.join(cfg.out_dir, "stages.json")
    records: dict[str, Any] = json.loads(storage.read_text(records_path)) if storage.is_file(records_path) else {}
    fresh = False  # set once a stage runs: later stages must not keep outputs made from older inputs
    for stage in planned:
        if not fresh and stage.name not in force and stage.is_complete(cfg):
            log.info("stage %s: outputs complete, skipped", stage.name)
            records.setdefault(stage.name, {})["skipped"] = True
            continue
        if fresh or stage.name in force:
            for path in stage.outputs(cfg):
                storage.delete(path)
        fresh = True
        log.info("stage %s: running", stage.name)
        start = time.perf_counter()
        result = stage.run(cfg)
        seconds = time.perf_counter() - start
        record = {"seconds": round(seconds, 2), "skipped": False, "result": result}
        if result.get("images"):
            record["images_per_s"] = round(result["images"] / seconds, 2)
        records[stage.name] = record
        write_json(records_path, records)
        log.info("stage %s: done in %.1f s", stage.name, seconds)
    write_json(records_path, records)
    return records


# The paper's CAM ablation (mIoU %, VOC 2012 train, ResNet-50), METHOD §7
PAPER_ABLATION = {"baseline": 48.3, "vwe": 51.1, "hspp": 50.6, "vwe+hspp": 52.9}


def ablate(cfg: Config, variants: tuple[str, ...] = tuple(PAPER_ABLATION)) -> list[dict[str, Any]]:
    """Trains each variant on the same data and seed up to the CAM evaluation; one row per variant.

    Runs go to `<out_dir>/ablation/<variant>/`, the data is made (or checked) once; the table is written to
    `<out_dir>/ablation/ablation.json` and `.csv`.
    """
    from vwe.stages.evaluate import write_rows

    cfg = cfg.resolved()
    base = storage.join(cfg.out_dir, "ablation")
    rows = []
    for variant in variants:
        variant_out = str(storage.join(base, variant.replace("+", "_")))
        variant_cfg = cfg.with_overrides({"model.variant": variant, "out_dir": variant_out, "data.root": cfg.data.root})
        run(variant_cfg, until="eval_cam")
        summary = json.loads(storage.read_text(storage.join(variant_out, "eval_cam", f"{cfg.data.cam_split}.json")))
        rows.append({"variant": variant, "cam_miou": round(100 * summary["best_miou"], 1),
                     "best_threshold": summary["best_threshold"], "paper_voc_train": PAPER_ABLATION.get(variant)})
    write_json(storage.join(base, "ablation.json"), rows)
    write_rows(storage.join(base, "ablation.csv"), rows)
    return rows


def register(subparsers: argparse._SubParsersAction) -> None:
    from vwe.cli import add_config_args

    parser = subparsers.add_parser("run", help="the whole pipeline (skips stages whose outputs are complete)")
    add_config_args(parser, default="configs/synthetic.yaml")
    parser.add_argument("--out", help="run folder (sets out_dir)")
    parser.add_argument("--force", nargs="+", default=[], metavar="STAGE",
                        help=f"re-run these stages even if complete: {', '.join(s.name for s in STAGES)}")
    parser.add_argument("--until", metavar="STAGE", help="stop after this stage (default: run them all)")
    parser.set_defaults(handler=_main)

    parser = subparsers.add_parser("ablate", help="CAM mIoU of baseline / vwe / hspp / vwe+hspp on the same data")
    add_config_args(parser, default="configs/synthetic.yaml")
    parser.add_argument("--out", help="run folder (sets out_dir); variants go to OUT/ablation/<variant>")
    parser.add_argument("--variants", nargs="+", default=list(PAPER_ABLATION), help="default: the paper's four")
    parser.set_defaults(handler=_ablate)


def _ablate(args: argparse.Namespace) -> int:
    from vwe.bench import print_table
    from vwe.cli import config_from_args

    cfg = config_from_args(args)
    if args.out:
        cfg = cfg.with_overrides({"out_dir": args.out})
    rows = ablate(cfg, tuple(args.variants))
    print(f"CAM mIoU (%) on {cfg.data.cam_split} at each variant's best background threshold; "
          "paper: VOC 2012 train, ResNet-50")
    print_table(rows)
    return 0


def _main(args: argparse.Namespace) -> int:
    from vwe.cli import config_from_args

    cfg = config_from_args(args)
    if args.out:
        cfg = cfg.with_overrides({"out_dir": args.out})
    unknown = set(args.force) - {s.name for s in STAGES}
    if unknown:
        raise SystemExit(f"vwe run: unknown stage(s) in --force: {', '.join(sorted(unknown))}")
    records = run(cfg, force=tuple(args.force), until=args.until)
    cfg = cfg.resolved()
    print(results_text(cfg))
    print("stages:")
    for name, record in records.items():
        state = "skipped (complete)" if record.get("skipped") else f"{record.get('seconds', 0):.1f} s"
        print(f"  {name:12s} {state}")
    report = storage.join(cfg.out_dir, "report.html")
    print(f"run folder: {cfg.out_dir}")
    if storage.is_file(report):
        print(f"report: {report}")
    return 0


def results_text(cfg: Config) -> str:
    """The run's scores (what exists of them) next to the trivial baselines, and the final per-class table."""
    from vwe.data.voc import VOCDataset
    from vwe.report import all_background_miou
    from vwe.stages.evaluate import CLASS_NAMES

    def load(*parts: str) -> dict[str, Any] | None:
        path = storage.join(cfg.out_dir, *parts)
        return json.loads(storage.read_text(path)) if storage.is_file(path) else None

    def percent(value: float | None) -> str:
        return "   -" if value is None else f"{100 * value:5.1f}"

    voc = VOCDataset(cfg.data.root)
    lines = ["results (mIoU %):"]
    cam_split, eval_split = cfg.data.cam_split, cfg.data.eval_split
    final = load("eval_seg", f"{_eval_seg_name(cfg)}.json")
    for split in dict.fromkeys([cam_split, eval_split]):
        cams, pseudo = load("eval_cam", f"{split}.json"), load("eval_labels", f"pseudo_{split}.json")
        lines.append(f"  {split}: all background {percent(all_background_miou(voc, voc.split_ids(split)))}"
                     f" | CAMs (best threshold) {percent(cams and cams['best_miou'])}"
                     + (f" | pseudo labels {percent(pseudo['miou'])}" if pseudo else "")
                     + (f" | final model {percent(final['miou'])}" if final and split == eval_split else ""))
    if final:
        cams = load("eval_cam", f"{eval_split}.json") or {"iou": {}}
        lines.append(f"  per class on {eval_split}: {'class':<12} {'CAMs':>6} {'final':>6}")
        for name in CLASS_NAMES:
            if final["iou"].get(name) is not None:
                lines.append(f"  {'':>{len(eval_split) + 13}}{name:<12} {percent(cams['iou'].get(name)):>6} "
                             f"{percent(final['iou'][name]):>6}")
    return "\n".join(lines)
