"""Sub-commands of the pipeline stages (`vwe train-cam`, ...). Each handler imports its stage lazily."""
from __future__ import annotations

import argparse
import json
import logging

from vwe.cli import add_config_args, config_from_args

log = logging.getLogger(__name__)


def add_ray_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray in-process)")
    parser.add_argument("--num-workers", type=int, help="data-parallel workers (sets ray.num_workers)")
    parser.add_argument("--gpu", action="store_true", default=None, help="one GPU per worker (sets ray.use_gpu)")


def ray_overrides(args: argparse.Namespace) -> dict:
    overrides = {}
    if args.address:
        overrides["ray.address"] = args.address
    if args.num_workers is not None:
        overrides["ray.num_workers"] = args.num_workers
    if args.gpu:
        overrides["ray.use_gpu"] = True
    return overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser("train-cam", help="train the VWE classifier on Ray Train (stage 1)")
    add_config_args(train)
    add_ray_args(train)
    group = train.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the existing run (an error if there is none)")
    group.add_argument("--restart", action="store_true", help="delete the existing run's checkpoints and start over")
    train.set_defaults(handler=_train_cam)

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


def _train_cam(args: argparse.Namespace) -> int:
    from vwe.ray.train import fit_classifier

    cfg = config_from_args(args).with_overrides(ray_overrides(args))
    result = fit_classifier(cfg, resume=args.resume, restart=args.restart)
    result.pop("history", None)
    print(json.dumps(result, indent=2))
    print(f"classifier weights: {cfg.out_dir}/classifier/model.pth")
    return 0


def _bench_train(args: argparse.Namespace) -> int:
    from vwe.bench import bench_train, print_table

    rows = bench_train(backbones=args.backbones, batch_size=args.batch_size, size=args.size, steps=args.steps,
                       loader_workers=args.loader_workers, data_root=args.data_root)
    print_table(rows)
    if args.json:
        from vwe.io import write_json

        write_json(args.json, rows)
    return 0
