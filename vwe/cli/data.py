"""`vwe data synth | check | prepare | prepare-coco`: build the synthetic benchmark, validate a VOC folder, build
train_aug, convert COCO-2014 into the same layout."""
from __future__ import annotations

import argparse
import os

from vwe.cli.common import add_config_args, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="synthesise, check or prepare VOC-format data")
    actions = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    synth = actions.add_parser("synth", help="write the synthetic VOC-format benchmark")
    add_config_args(synth)
    synth.add_argument("--root", help="VOC2012 folder to write (default: data.root)")
    synth.add_argument("--num", type=_positive, metavar="N",
                       help="N train_aug images (train = the first N/5 of them), N/5 val and N/20 test images "
                            "(default: synth.splits)")
    synth.add_argument("--size", type=_size, metavar="HxW", help="image size (default: synth.height x synth.width)")
    synth.add_argument("--seed", type=int, help="default: synth.seed")
    synth.add_argument("--num-classes", type=int, metavar="C",
                       help="use the first C VOC classes (default: synth.num_classes)")
    synth.add_argument("--workers", type=_positive, default=os.cpu_count() or 1, help="processes (default: all cores)")
    synth.add_argument("--check", action="store_true", help="read the written dataset back and validate it")
    synth.set_defaults(handler=_synth)

    check = actions.add_parser("check", help="validate a VOC2012 folder and count the ids per split")
    add_config_args(check)
    check.add_argument("--root", help="VOC2012 folder (default: data.root)")
    check.add_argument("--sbd", help="SBD dataset/ folder with train.txt and val.txt (default: data.sbd_root)")
    check.add_argument("--skip-bad", action="store_true",
                       help="record bad files in vwe_bad_files.json and go on (default: data.skip_bad)")
    check.add_argument("--report-dir", help="where to write the bad-files report (default: the root)")
    check.set_defaults(handler=_check)

    prepare = actions.add_parser("prepare", help="build ImageSets/Segmentation/train_aug.txt and the labels cache")
    add_config_args(prepare)
    prepare.add_argument("--root", help="VOC2012 folder (default: data.root)")
    prepare.add_argument("--sbd", help="SBD dataset/ folder with train.txt and val.txt (default: data.sbd_root)")
    prepare.set_defaults(handler=_prepare)

    coco = actions.add_parser("prepare-coco", help="convert COCO-2014 (train2014/, val2014/, annotations/) into a "
                                                   "VOC-format folder: class-index masks, split lists, label caches")
    add_config_args(coco)
    coco.add_argument("--root", help="the COCO folder (default: data.coco_root)")
    coco.add_argument("--out", help="the VOC-format folder to write (default: data.root)")
    coco.add_argument("--link", choices=("symlink", "hardlink", "copy"), default="symlink",
                      help="how JPEGImages/ refers to the COCO images (default: symlink)")
    coco.add_argument("--workers", type=_positive, help="processes drawing masks (default: the cores, at most 8)")
    coco.set_defaults(handler=_prepare_coco)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 375x500, got {text!r}") from None
    return height, width


def _print_counts(counts: dict[str, int], notes: list[str] = ()) -> None:
    for split, count in counts.items():
        print(f"  {split:<12}{count:>8,}")
    for note in notes:
        print(note)


def _synth(args: argparse.Namespace) -> int:
    from vwe.data.synth import generate

    cfg = config_from_args(args)
    height, width = args.size or (cfg.synth.height, cfg.synth.width)
    if args.num is not None:
        n = args.num
        splits = {"train_aug": n, "train": max(1, n // 5), "val": max(1, n // 5), "test": max(1, n // 20)}
    else:
        splits = cfg.synth.splits
    root = args.root or cfg.data.root
    summary = generate(root, splits, height, width,
                       num_classes=args.num_classes if args.num_classes is not None else cfg.synth.num_classes,
                       seed=args.seed if args.seed is not None else cfg.synth.seed,
                       part_scale=cfg.synth.part_scale, context_bias=cfg.synth.context_bias, workers=args.workers,
                       check=args.check)
    if summary["reused"]:
        print(f"{root}: already holds this synthetic benchmark; nothing written")
    else:
        print(f"wrote {summary['images']:,} images ({height}x{width}, {len(summary['classes'])} classes, "
              f"seed {summary['seed']}) to {root} in {summary['seconds']:.1f} s ({summary['images_per_s']} images/s)")
    _print_counts(summary.get("check") or summary["splits"])
    if args.check:
        print("check: ok")
    return 0


def _check(args: argparse.Namespace) -> int:
    from vwe.data.voc import VOCDataset

    cfg = config_from_args(args)
    root = args.root or cfg.data.root
    report = VOCDataset(root).check(skip_bad=args.skip_bad or cfg.data.skip_bad,
                                    sbd_root=args.sbd or cfg.data.sbd_root or None, report_dir=args.report_dir)
    print(f"{root}: ids per split")
    _print_counts(report.counts, report.notes)
    if report.report_path is not None:
        print(f"{len(report.bad)} bad ids recorded in {report.report_path}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from vwe.data.voc import VOCDataset, count_notes

    cfg = config_from_args(args)
    root = args.root or cfg.data.root
    counts = VOCDataset(root).prepare(sbd_root=args.sbd or cfg.data.sbd_root or None)
    print(f"{root}: wrote ImageSets/Segmentation/train_aug.txt and the labels cache; ids per split")
    _print_counts(counts, count_notes(counts))
    return 0


def _prepare_coco(args: argparse.Namespace) -> int:
    from vwe.data.coco import SKIPPED_REPORT, prepare_coco

    cfg = config_from_args(args)
    out = args.out or cfg.data.root
    summary = prepare_coco(args.root or cfg.data.coco_root, out, link=args.link, workers=args.workers)
    for split, counts in summary["splits"].items():
        print(f"  {split:<12}{counts['images']:>8,} images: {counts['written']:,} masks written, "
              f"{counts['reused']:,} kept, {counts['skipped']:,} without annotations (listed in {SKIPPED_REPORT})")
    print(f"{out}: a VOC-format COCO folder in {summary['seconds']:.1f} s; use it with --config coco")
    return 0
