"""Sub-commands of the classifier, CAM and pseudo-label stages: train-cam, make-cam, eval-cam, make-pseudo, and
IRNet's train-irn and make-sem-seg."""
from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable

from vwe.cli.common import (add_config_args, add_ray_args, add_training_parser, config_from_args, locked,
                            run_training)

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    add_training_parser(subparsers, "train-cam", "train the VWE classifier on Ray Train (stage 1)", _train_cam)

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

    add_training_parser(subparsers, "train-irn", "train IRNet's boundary network on the confident pseudo labels, on "
                                                 "Ray Train (pseudo.method = irnet)", _train_irn)

    sem_seg = subparsers.add_parser("make-sem-seg", help="IRNet's semantic labels: the CAMs walked over the boundary "
                                                         "network's affinities, on Ray Data (pseudo.method = irnet)")
    add_config_args(sem_seg)
    add_ray_args(sem_seg)
    sem_seg.add_argument("--split", help="default: data.train_split (DeepLab's training labels)")
    sem_seg.add_argument("--eval-split", help="score the labels of this split against its masks "
                                              "(default: data.cam_split, when its labels were made)")
    sem_seg.set_defaults(handler=_make_sem_seg)


def _train_cam(args: argparse.Namespace) -> int:
    from vwe.stages.train_cam import train_classifier

    return run_training(args, train_classifier, "classifier", lambda run: run.classifier)


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
    from vwe.stages.make_pseudo import make_pseudo_labels, score_pseudo_labels

    return _make_labels(args, make_pseudo_labels, score_pseudo_labels,
                        "pseudo labels", " (unsure pixels counted as background)")


def _train_irn(args: argparse.Namespace) -> int:
    from vwe.stages.train_irn import train_irn

    return run_training(args, train_irn, "boundary network", lambda run: run.irn)


def _make_sem_seg(args: argparse.Namespace) -> int:
    from vwe.stages.make_sem_seg import make_sem_seg_labels, score_sem_seg_labels

    return _make_labels(args, make_sem_seg_labels, score_sem_seg_labels, "IRNet labels", "")


def _make_labels(args: argparse.Namespace, make: Callable, score: Callable, what: str, note: str) -> int:
    """make-pseudo / make-sem-seg: the labels of a split, then their scores on the evaluation split when its labels
    were made (or when --eval-split insists)."""
    from vwe.errors import DataError
    from vwe.evaluation import format_table

    cfg = config_from_args(args)
    eval_split = args.eval_split or cfg.data.cam_split
    with locked(cfg):
        print(json.dumps(make(cfg, args.split), indent=2))
        try:
            summary = score(cfg, eval_split)
        except DataError as err:
            if args.eval_split:
                raise
            log.info("%s not scored: %s", what, err)
            return 0
    print(format_table(summary))
    print(f"{what} vs ground truth on {eval_split}: mIoU {100 * summary['miou']:.1f}{note}")
    return 0
