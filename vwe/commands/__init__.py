"""Sub-commands of the pipeline stages (`vwe train-cam`, ...), one module per area. Handlers import lazily."""
from __future__ import annotations

import argparse


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
