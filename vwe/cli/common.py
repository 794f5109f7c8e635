"""What the `vwe` sub-commands share: the config options, the Ray options and the run-folder lock."""
from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vwe.config import Config, load_config, packaged_configs
from vwe.run_folder import RunFolder, RunLock


def add_config_args(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """The options every stage takes: a YAML config and dotted overrides."""
    shown = f"the packaged {default!r}" if default else "the paper's defaults (vwe/config.py)"
    parser.add_argument("--config", default=default,
                        help=f"a YAML file, or a packaged config: {', '.join(packaged_configs())} (default: {shown})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", nargs="+",
                        help="override a config value, e.g. --set train.batch_size=8 model.num_words=128")


def add_ray_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray in-process)")
    parser.add_argument("--num-workers", type=int, help="data-parallel workers (sets ray.num_workers)")
    parser.add_argument("--gpu", action="store_true", default=None, help="one GPU per worker (sets ray.use_gpu)")


def add_training_parser(subparsers: argparse._SubParsersAction, name: str, help: str,
                        handler: Callable[[argparse.Namespace], int]) -> None:
    """A training command (train-cam, train-irn, train-seg): config and Ray options, --resume or --restart."""
    parser = subparsers.add_parser(name, help=help)
    add_config_args(parser)
    add_ray_args(parser)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the existing run (an error if there is none)")
    group.add_argument("--restart", action="store_true", help="delete the existing run's checkpoints and start over")
    parser.set_defaults(handler=handler)


def run_training(args: argparse.Namespace, train: Callable[..., dict[str, Any]], network: str,
                 folder: Callable[[RunFolder], str | Path]) -> int:
    """A training command's body: trains in the locked run folder, prints the last metrics and where the weights
    of `network` are (`folder` of the run folder)."""
    cfg = config_from_args(args)
    with locked(cfg):
        result = train(cfg, resume=args.resume, restart=args.restart)
    result.pop("history")
    print(json.dumps(result, indent=2))
    print(f"{network} weights: {folder(RunFolder.of(cfg))}/model.pth")
    return 0


def config_from_args(args: argparse.Namespace) -> Config:
    """The command's config: its file, then --set, then the flags that stand for config keys (--out of run and
    ablate, --address, --num-workers, --gpu), checked and resolved once."""
    overrides = [item for group in args.overrides for item in group]
    flags = {"out_dir": getattr(args, "run_folder", None), "ray.address": getattr(args, "address", None),
             "ray.num_workers": getattr(args, "num_workers", None),
             "ray.use_gpu": getattr(args, "gpu", None) or None}
    overrides += [f"{key}={value}" for key, value in flags.items() if value is not None]
    return load_config(args.config, overrides)


@contextlib.contextmanager
def locked(cfg: Config) -> Iterator[None]:
    """Holds the run folder's lock while a stage command works in it."""
    with RunLock(RunFolder.of(cfg)):
        yield
