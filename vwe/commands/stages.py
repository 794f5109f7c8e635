"""Sub-commands of the classifier, CAM and pseudo-label stages, and the benchmarks."""
from __future__ import annotations

import argparse
import json
import logging

from vwe.cli import add_config_args, config_from_args
from vwe.commands import add_ray_args, ray_overrides

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

    bench = subparsers.add_parser("bench", help="throughput benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="WHAT")
    bench_train = bench_sub.add_parser("train", help="images/s of the classifier training step")
    bench_train.add_argument("--backbones", nargs="+", help="default: resnet50 resnet101 on GPU, resnet-tiny on CPU")
    bench_train.add_argument("--batch-size", type=int, help="per device (default 16 on GPU, 4 on CPU)")
    bench_train.add_argument("--size", type=int, help="crop size (default 512 on GPU, 64 on CPU)")
    bench_train.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    bench_train.add_argument("--loader-workers", type=int, help="DataLoader processes for the full step")
    bench_train.add_argument("--data-root", help="a VOC2012 folder (default: a synthetic one made for the run)")
    bench_train.add_argument("--json", help="also write the table as JSON here")
    bench_train.set_defaults(handler=_bench_train)
    bench_cam = bench_sub.add_parser("cam", help="images/s of multi-scale CAM inference, reference vs batched")
    bench_cam.add_argument("--backbones", nargs="+", help="default: resnet50 resnet101 on GPU, resnet-tiny on CPU")
    bench_cam.add_argument("--images", type=int, help="images to time (default 128 on GPU, 8 on CPU)")
    bench_cam.add_argument("--batch-size", type=int, default=16)
    bench_cam.add_argument("--json", help="also write the table as JSON here")
    bench_cam.set_defaults(handler=_bench_cam)
    bench_crf = bench_sub.add_parser("crf", help="dense CRF s/image on one core and the speedup on all cores")
    bench_crf.add_argument("--images", type=int, help="images per measurement (default 2 per core)")
    bench_crf.add_argument("--size", default="375x500", help="HxW (default 375x500, VOC's usual size)")
    bench_crf.add_argument("--labels", type=int, nargs="+", default=[3, 21], help="CRF label counts to time")
    bench_crf.add_argument("--json", help="also write the table as JSON here")
    bench_crf.set_defaults(handler=_bench_crf)


def _train_cam(args: argparse.Namespace) -> int:
    from vwe.ray.train import fit_classifier

    cfg = config_from_args(args).with_overrides(ray_overrides(args))
    result = fit_classifier(cfg, resume=args.resume, restart=args.restart)
    result.pop("history", None)
    print(json.dumps(result, indent=2))
    print(f"classifier weights: {cfg.out_dir}/classifier/model.pth")
    return 0


def _make_cam(args: argparse.Namespace) -> int:
    from vwe.ray.data import run_make_cams

    cfg = config_from_args(args).with_overrides(ray_overrides(args))
    print(json.dumps(run_make_cams(cfg, args.split), indent=2))
    return 0


def _eval_cam(args: argparse.Namespace) -> int:
    from vwe.ray.data import run_eval_cams
    from vwe.stages.evaluate import format_table

    cfg = config_from_args(args).with_overrides(ray_overrides(args))
    summary = run_eval_cams(cfg, args.split)
    print(format_table(summary))
    print(f"best background threshold {summary['best_threshold']:.2f}: mIoU {100 * summary['best_miou']:.1f} "
          f"on {summary['split']} ({summary['images']} images)")
    print("\n".join(f"{kind}: {path}" for kind, path in summary["files"].items()))
    return 0


def _make_pseudo(args: argparse.Namespace) -> int:
    from vwe.errors import DataError
    from vwe.ray.data import run_eval_labels, run_make_pseudo
    from vwe.stages.evaluate import format_table
    from vwe.stages.make_pseudo_labels import LABEL_DIR

    cfg = config_from_args(args).with_overrides(ray_overrides(args))
    print(json.dumps(run_make_pseudo(cfg, args.split), indent=2))
    eval_split = args.eval_split or cfg.data.cam_split
    try:
        summary = run_eval_labels(cfg, f"{cfg.resolved().out_dir}/{LABEL_DIR}", eval_split, f"pseudo_{eval_split}")
    except DataError as err:
        if args.eval_split:
            raise
        log.info("pseudo labels not scored: %s", err)
        return 0
    print(format_table(summary))
    print(f"pseudo labels vs ground truth on {eval_split}: mIoU {100 * summary['miou']:.1f} "
          "(unsure pixels counted as background)")
    return 0


def _bench_train(args: argparse.Namespace) -> int:
    from vwe.bench import bench_train

    return _table(args, bench_train(backbones=args.backbones, batch_size=args.batch_size, size=args.size,
                                    steps=args.steps, loader_workers=args.loader_workers, data_root=args.data_root))


def _bench_cam(args: argparse.Namespace) -> int:
    from vwe.bench import bench_cam

    return _table(args, bench_cam(backbones=args.backbones, images=args.images, batch_size=args.batch_size))


def _bench_crf(args: argparse.Namespace) -> int:
    from vwe.bench import bench_crf

    height, _, width = args.size.partition("x")
    return _table(args, bench_crf(images=args.images, height=int(height), width=int(width),
                                  labels=tuple(args.labels)))


def _table(args: argparse.Namespace, rows: list[dict]) -> int:
    from vwe.bench import print_table
    from vwe.io import write_json

    print_table(rows)
    if args.json:
        write_json(args.json, rows)
    return 0
