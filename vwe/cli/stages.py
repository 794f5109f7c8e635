"""Sub-commands of the classifier, CAM and pseudo-label stages: train-cam, make-cam, eval-cam, make-pseudo."""
from __future__ import annotations

import argparse
import json
import logging

from vwe.cli.common import add_config_args, add_ray_args, config_from_args, locked

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser("train-cam", help="train the VWE classifier on Ray Train (stage 1)")
    add_config_args(train)
    add_ray_args(train)
    group = train.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the existing run (an error if there is none)")
    group.add_argument("--restart", action="store_true", help="delete the existing run's checkpoints and start over")
    train.set_defaults(handler=_train_cam)

    make_cam = subparsers.add_parser("make-cam", help="multi-scale CAMs of a split on Ray Data (stage 2)")
    add_config_args(make_cam)
    add_ray_args(make_cam)
    make_cam.add_argument("--split", help="default: data.train_split (the pseudo labels need train_aug's CAMs)")
    make_cam.set_defaults(handler=_make_cam)

    eval_cam = subparsers.add_parser("eval-cam", help="CAM mIoU for every background threshold, per-class table")
    add_config_args(eval_cam)
    add_ray_args(eval_cam)
    eval_cam.add_argument("--split", help="default: data.cam_split")
    eval_cam.set_defaults(handler=_eval_cam)

    pseudo = subparsers.add_parser("make-pseudo", help="pseudo labels from CAMs (dense CRF on CPU tasks, stage 3)")
    add_config_args(pseudo)
    add_ray_args(pseudo)
    pseudo.add_argument("--split", help="default: data.train_split")
    pseudo.add_argument("--eval-split", help="score the labels of this split against its masks "
                                             "(default: data.cam_split, when its labels were made)")
    pseudo.set_defaults(handler=_make_pseudo)


def _train_cam(args: argparse.Namespace) -> int:
    from vwe.run_folder import RunFolder
    from vwe.stages.train_cam import train_classifier

    cfg = config_from_args(args)
    with locked(cfg):
        result = train_classifier(cfg, resume=args.resume, restart=args.restart)
    result.pop("history")
    print(json.dumps(result, indent=2))
    print(f"classifier weights: {RunFolder.of(cfg).classifier}/model.pth")
    return 0


def _make_cam(args: argparse.Namespace) -> int:
    from vwe.stages.make_cam import make_cams

    cfg = config_from_args(args)
    with locked(cfg):
        print(json.dumps(make_cams(cfg, args.split), indent=2))
    return 0


def _eval_cam(args: argparse.Namespace) -> int:
    from vwe.evaluation import format_table
    from vwe.stages.eval_cam import evaluate_cams

    cfg = config_from_args(args)
    with locked(cfg):
        summary = evaluate_cams(cfg, args.split)
    print(format_table(summary))
    print(f"CAM mIoU {100 * summary['miou']:.1f} at background score {summary['background_score']:.2f} on "
          f"{summary['split']} ({summary['images']} images); best background threshold {summary['best_threshold']:.2f} "
          f"of the sweep: {100 * summary['best_miou']:.1f} (optimistic: chosen on this split)")
    print("\n".join(f"{kind}: {path}" for kind, path in summary["files"].items()))
    return 0


def _make_pseudo(args: argparse.Namespace) -> int:
    from vwe.errors import DataError
    from vwe.evaluation import format_table
    from vwe.stages.make_pseudo import make_pseudo_labels, score_pseudo_labels

    cfg = config_from_args(args)
    eval_split = args.eval_split or cfg.data.cam_split
    with locked(cfg):
        print(json.dumps(make_pseudo_labels(cfg, args.split), indent=2))
        try:
            summary = score_pseudo_labels(cfg, eval_split)
        except DataError as err:
            if args.eval_split:
                raise
            log.info("pseudo labels not scored: %s", err)
            return 0
    print(format_table(summary))
    print(f"pseudo labels vs ground truth on {eval_split}: mIoU {100 * summary['miou']:.1f} "
          "(unsure pixels counted as background)")
    return 0
