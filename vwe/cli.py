"""The `vwe` command. Each stage module registers its own sub-commands; heavy imports happen in the handlers."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from vwe.config import Config, load_config
from vwe.errors import VweError

# Modules with a `register(subparsers)` function, in the order their commands are listed in --help.
COMMAND_MODULES = [
    "vwe.pipeline",
    "vwe.data.commands",
    "vwe.commands.stages",
    "vwe.commands.tune",
    "vwe.commands.report",
    "vwe.commands.segmentation",
]


def add_config_args(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """The options every stage takes: a YAML config and dotted overrides."""
    parser.add_argument("--config", default=default, help="YAML config (default: the built-in paper defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", nargs="+",
                        help="override a config value, e.g. --set train.batch_size=8 model.num_words=128")


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = [item for group in args.overrides for item in group]
    return load_config(args.config, overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vwe", description="Weakly-supervised semantic segmentation with visual words, on Ray.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.handler(args) or 0
    except VweError as err:
        # User errors (bad config, bad data): one clear line, no traceback. --verbose shows the traceback.
        if args.verbose:
            raise
        print(f"vwe {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
