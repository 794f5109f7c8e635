"""`vwe tune`: a Ray Tune sweep of the classifier (codebook size, HSPP gamma, ...) ranked by held-out CAM mIoU."""
from __future__ import annotations

import argparse
import json

from vwe.cli.common import add_config_args, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tune", help="Ray Tune sweep over classifier settings, ranked by CAM mIoU")
    add_config_args(parser)
    parser.add_argument("--space", required=True, help="YAML search space, e.g. tune/space_voc.yaml")
    parser.add_argument("--name", help="sweep name (default: the space file's name); results in "
                                       "<out_dir>/sweeps/<name>/")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted sweep of that name; finished trials are kept")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray in-process)")
    parser.add_argument("--max-concurrent", type=int, help="trials at once (default: the space file's "
                                                           "max_concurrent_trials, else what the cluster holds)")
    parser.add_argument("--num-samples", type=int, help="grid: repeats of the grid; random: trials")
    parser.add_argument("--scheduler", choices=["fifo", "asha"], help="early stopping (default: the space file's)")
    parser.set_defaults(handler=_tune)


def _tune(args: argparse.Namespace) -> int:
    from vwe.ray.tune import run_sweep

    cfg = config_from_args(args)
    overrides = {"max_concurrent_trials": args.max_concurrent, "num_samples": args.num_samples,
                 "scheduler": args.scheduler}
    summary = run_sweep(cfg, args.space, name=args.name, resume=args.resume, overrides=overrides)
    print(json.dumps(summary, indent=2))
    return 0
