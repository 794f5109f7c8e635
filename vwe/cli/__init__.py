"""The `vwe` command: one module per group of sub-commands, each with a `register(subparsers)`; the handlers
import the stages lazily, so `--help` and a refused config answer at once."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from vwe.cli import bench, data, report, run, segmentation, stages, tune
from vwe.errors import user_error
from vwe.ray.cluster import VERBOSE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vwe", description="Weakly-supervised semantic segmentation with visual "
                                                             "words, on Ray.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, Ray's own output (reports, progress tables) and tracebacks of errors")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (run, data, stages, segmentation, tune, report, bench):
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        os.environ[VERBOSE] = "1"  # before Ray starts: its local workers inherit it
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.handler(args) or 0
    except Exception as err:  # noqa: BLE001 - only user errors are answered here; the rest is re-raised
        # A bad config or bad data, here or in a Ray worker: one line naming the key or file, exit status 2.
        found = user_error(err)
        if found is None or args.verbose:
            raise
        print(f"vwe {args.command}: error: {found}", file=sys.stderr)
        return 2
