"""`vwe run` (the whole pipeline) and `vwe ablate` (the CAM ablation of the paper's four variants)."""
from __future__ import annotations

import argparse
import json
from typing import Any

from vwe.cli.common import add_config_args, config_from_args

DEFAULT_CONFIG = "synthetic"  # the demo: the synthetic benchmark on a local Ray, minutes on a CPU
STAGE_LIST = (
    "data, train_cam, make_cam, eval_cam, make_pseudo, train_irn, make_sem_seg, train_seg, infer_seg, eval_seg, report")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="the whole pipeline (skips stages whose outputs are complete)")
    add_config_args(parser, default=DEFAULT_CONFIG)
    parser.add_argument("--out", dest="run_folder", help="run folder (sets out_dir)")
    parser.add_argument("--force", nargs="+", default=[], metavar="STAGE",
                        help=f"re-run these stages even if complete: {STAGE_LIST}")
    parser.add_argument("--until", metavar="STAGE", help="stop after this stage (default: run them all)")
    parser.set_defaults(handler=_run)

    parser = subparsers.add_parser("ablate", help="CAM mIoU of baseline / vwe / hspp / vwe+hspp on the same data, "
                                                  "over seeds, with diagnostics")
    add_config_args(parser, default=DEFAULT_CONFIG)
    parser.add_argument("--out", dest="run_folder",
                        help="run folder (sets out_dir); runs go to OUT/ablation/<variant>/seed_<s>")
    parser.add_argument("--variants", nargs="+", default=["baseline", "vwe", "hspp", "vwe+hspp"],
                        help="default: the paper's four; the first is the one the others are compared with")
    parser.add_argument("--seeds", type=int, default=1,
                        help="training seeds per variant (train.seed = 1..N; 3 or more for a spread)")
    parser.set_defaults(handler=_ablate)


def _ablate(args: argparse.Namespace) -> int:
    from vwe.ablation import ablate
    from vwe.cli.bench import print_table
    from vwe.errors import ConfigError
    from vwe.models import VARIANTS

    cfg = config_from_args(args)
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"--variants: unknown variant {unknown[0]!r} (known: {', '.join(VARIANTS)})")
    result = ablate(cfg, tuple(args.variants), args.seeds)
    print(f"CAM mIoU (%) on {cfg.data.cam_split} at cam.background_score {cfg.cam.background_score:g}: mean and "
          f"sample SD over {args.seeds} seed(s), and the paired difference from {args.variants[0]} (same seeds) "
          "with its 95 % interval; diagnostics are means over the seeds; paper: VOC 2012 train, ResNet-50")
    print_table(result["rows"])
    print("\n".join(f"{kind}: {path}" for kind, path in result["files"].items()))
    return 0


def _run(args: argparse.Namespace) -> int:
    from vwe import pipeline, storage
    from vwe.run_folder import RunFolder

    cfg = config_from_args(args)
    records = pipeline.run(cfg, force=tuple(args.force), until=args.until)
    print(results_text(cfg))
    print("stages:")
    for name, record in records.items():
        state = "skipped (complete)" if record.get("skipped") else f"{record.get('seconds', 0):.1f} s"
        print(f"  {name:12s} {state}")
    print(f"run folder: {cfg.out_dir}")
    report = RunFolder.of(cfg).report
    if storage.is_file(report):
        print(f"report: {report}")
    return 0


def results_text(cfg: Any) -> str:
    """The run's scores (what exists of them) next to the trivial baselines, and the final per-class table."""
    from vwe import storage
    from vwe.data.voc import VOCDataset
    from vwe.report import all_background_miou
    from vwe.run_folder import RunFolder
    from vwe.stages.eval_seg import scores_file

    def load(path: Any) -> dict[str, Any] | None:
        return json.loads(storage.read_text(path)) if storage.is_file(path) else None

    def percent(value: float | None) -> str:
        return "   -" if value is None else f"{100 * value:5.1f}"

    run = RunFolder.of(cfg)
    voc = VOCDataset(cfg.data.root)
    lines = ["results (mIoU %):"]
    cam_split, eval_split = cfg.data.cam_split, cfg.data.eval_split
    final = load(scores_file(cfg))
    for split in dict.fromkeys([cam_split, eval_split]):
        cams = load(storage.join(run.cam_scores, f"{split}.json"))
        pseudo = load(storage.join(run.pseudo_label_scores, f"pseudo_{split}.json"))
        irnet = load(storage.join(run.sem_seg_label_scores, f"{split}.json"))
        lines.append(f"  {split}: all background {percent(all_background_miou(voc, voc.split_ids(split)))}"
                     f" | CAMs {percent(cams and cams['miou'])} (best of sweep {percent(cams and cams['best_miou'])})"
                     + (f" | CRF pseudo labels {percent(pseudo['miou'])}" if pseudo else "")
                     + (f" | IRNet labels {percent(irnet['miou'])}" if irnet else "")
                     + (f" | final model {percent(final['miou'])}" if final and split == eval_split else ""))
    if final:
        cams = load(storage.join(run.cam_scores, f"{eval_split}.json")) or {"iou": {}}
        lines.append(f"  per class on {eval_split}: {'class':<12} {'CAMs':>6} {'final':>6}")
        for name in ("background", *voc.classes):
            if final["iou"].get(name) is not None:
                lines.append(f"  {'':>{len(eval_split) + 13}}{name:<12} {percent(cams['iou'].get(name)):>6} "
                             f"{percent(final['iou'][name]):>6}")
    return "\n".join(lines)
