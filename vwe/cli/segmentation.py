"""Sub-commands of the DeepLab stage: train-seg, infer-seg, eval-seg, export-voc."""
from __future__ import annotations

import argparse
import json

from vwe.cli.common import add_config_args, add_ray_args, add_training_parser, config_from_args, locked, run_training


def register(subparsers: argparse._SubParsersAction) -> None:
    add_training_parser(subparsers, "train-seg", "train DeepLab v2 on the pseudo labels on Ray Train (stage 4)",
                        _train_seg)

    infer = subparsers.add_parser("infer-seg", help="DeepLab predictions of a split on Ray Data (MS fusion, CRF)")
    _add_prediction_args(infer, "data.eval_split")
    infer.set_defaults(handler=_infer_seg)

    evaluate = subparsers.add_parser("eval-seg", help="mIoU of the predictions of a split with masks, per class")
    _add_prediction_args(evaluate, "data.eval_split")
    evaluate.add_argument("--pred-dir", help="a folder of <id>.png to score instead of infer-seg's predictions")
    evaluate.set_defaults(handler=_eval_seg)

    export = subparsers.add_parser("export-voc", help="pack test predictions for the VOC evaluation server")
    _add_prediction_args(export, "seg.test_split", ray=False)
    export.add_argument("--out", help="the tar.gz to write (default: <out_dir>/voc_server/<split>[_crf].tar.gz)")
    export.set_defaults(handler=_export_voc)


def _add_prediction_args(parser: argparse.ArgumentParser, default_split: str, ray: bool = True) -> None:
    add_config_args(parser)
    if ray:
        add_ray_args(parser)
    parser.add_argument("--split", help=f"default: {default_split}")
    parser.add_argument("--crf", action=argparse.BooleanOptionalAction, default=None,
                        help="dense CRF on the softmax (default: seg.crf.enabled)")


def _train_seg(args: argparse.Namespace) -> int:
    from vwe.stages.train_seg import train_deeplab

    return run_training(args, train_deeplab, "DeepLab", lambda run: run.deeplab)


def _infer_seg(args: argparse.Namespace) -> int:
    from vwe.stages.infer_seg import predict_split

    cfg = config_from_args(args)
    with locked(cfg):
        print(json.dumps(predict_split(cfg, args.split, args.crf), indent=2))
    return 0


def _eval_seg(args: argparse.Namespace) -> int:
    from vwe.evaluation import format_table
    from vwe.stages.eval_seg import evaluate_predictions

    cfg = config_from_args(args)
    with locked(cfg):
        summary = evaluate_predictions(cfg, args.split, args.crf, args.pred_dir)
    print(format_table(summary))
    print(f"mIoU {100 * summary['miou']:.2f} on {summary['split']} ({summary['images']} images"
          f"{', CRF' if summary['crf'] else ''})")
    print("\n".join(f"{kind}: {path}" for kind, path in summary["files"].items()))
    return 0


def _export_voc(args: argparse.Namespace) -> int:
    from vwe.run_folder import RunFolder
    from vwe.stages.export_voc import export_voc

    cfg = config_from_args(args)
    run = RunFolder.of(cfg)
    split = args.split or cfg.seg.test_split
    crf = cfg.seg.crf.enabled if args.crf is None else args.crf
    archive = args.out or run.voc_server_archive(split, crf)
    result = export_voc(cfg.data.root, split, run.predictions(split, crf), archive, cfg.data.num_classes)
    print(json.dumps(result, indent=2))
    return 0
