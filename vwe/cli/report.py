"""`vwe report`: (re)build a run folder's browsable report.html."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="build RUN_DIR/report.html: scores, timings, CAM curve, examples, "
                                                  "visual words (one self-contained file)")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of `vwe run`")
    parser.add_argument("--examples", type=_positive, default=6, help="images in the example grid (default 6)")
    parser.add_argument("--words", type=_positive, default=16, help="visual words in the codebook figure (default 16)")
    parser.add_argument("--patches", type=_positive, default=8, help="patches per visual word (default 8)")
    parser.set_defaults(handler=_main)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _main(args: argparse.Namespace) -> int:
    from vwe.report import build_report

    path = build_report(args.run_dir, num_examples=args.examples, num_words=args.words,
                        patches_per_word=args.patches)
    print(f"report: {path}")  # already absolute for a local run folder
    return 0
