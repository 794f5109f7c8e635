"""`vwe bench all | train | cam | deeplab | crf | irn`: throughput benchmarks (speed lives here, never in the
tests)."""
from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="throughput benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="WHAT")
    bench_all = bench_sub.add_parser("all", help="every benchmark in one process, at the paper's sizes on a GPU "
                                                 "(under 8 minutes) and tiny ones on a CPU, into one JSON file")
    bench_all.add_argument("--out", required=True, help="the JSON file (rewritten after each benchmark)")
    size = bench_all.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", default=None, help="tiny sizes (the default without a GPU)")
    size.add_argument("--full", dest="quick", action="store_false", help="the paper's sizes (the default on a GPU)")
    bench_all.set_defaults(handler=_bench_all)
    bench_train = bench_sub.add_parser("train", help="images/s of the classifier training step: fp32 and fast, "
                                                     "eager and compiled, model alone and with the input pipeline")
    bench_train.add_argument("--backbones", nargs="+", help="default: resnet50 resnet101 on GPU, resnet-tiny on CPU")
    bench_train.add_argument("--batch-size", type=int, help="per device (default 16 on GPU, 4 on CPU)")
    bench_train.add_argument("--size", type=int, help="crop size (default 512 on GPU, 64 on CPU)")
    bench_train.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    bench_train.add_argument("--loader-workers", type=int, help="DataLoader processes for the full step")
    bench_train.add_argument("--data-root", help="a VOC2012 folder (default: a synthetic one made for the run)")
    bench_train.add_argument("--no-compile", dest="compile", action="store_false", help="skip the compiled rows")
    bench_train.add_argument("--json", help="also write the table as JSON here")
    bench_train.set_defaults(handler=_bench_train)
    bench_cam = bench_sub.add_parser("cam", help="images/s of multi-scale CAM inference: reference, batched, fast")
    bench_cam.add_argument("--backbones", nargs="+", help="default: resnet50 resnet101 on GPU, resnet-tiny on CPU")
    bench_cam.add_argument("--images", type=int, help="images to time (default 128 on GPU, 8 on CPU)")
    bench_cam.add_argument("--batch-size", type=int, default=16)
    bench_cam.add_argument("--json", help="also write the table as JSON here")
    bench_cam.set_defaults(handler=_bench_cam)
    bench_deeplab = bench_sub.add_parser("deeplab", help="images/s of the DeepLab v2 training step, fp32 and fast")
    bench_deeplab.add_argument("--backbone", help="default: resnet101 on GPU, resnet-tiny on CPU")
    bench_deeplab.add_argument("--batch-size", type=int, help="default 10 on GPU, 4 on CPU")
    bench_deeplab.add_argument("--size", type=int, help="crop size (default 321 on GPU, 64 on CPU)")
    bench_deeplab.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    bench_deeplab.add_argument("--json", help="also write the table as JSON here")
    bench_deeplab.set_defaults(handler=_bench_deeplab)
    bench_crf = bench_sub.add_parser("crf", help="dense CRF s/image of both backends (pydensecrf on one core and "
                                                 "all cores, torch on CPU and GPU) and their label agreement")
    bench_crf.add_argument("--images", type=int, help="images per measurement (default 2 per core)")
    bench_crf.add_argument("--size", default="375x500", help="HxW (default 375x500, VOC's usual size)")
    bench_crf.add_argument("--labels", type=int, nargs="+", default=[3, 21], help="CRF label counts to time")
    bench_crf.add_argument("--batch-size", type=int, default=8, help="images per batched GPU call")
    bench_crf.add_argument("--json", help="also write the table as JSON here")
    bench_crf.set_defaults(handler=_bench_crf)
    bench_irn = bench_sub.add_parser("irn", help="images/s and peak memory of IRNet's random walk, sparse vs dense")
    bench_irn.add_argument("--sizes", nargs="+", default=["375x500", "640x480"], help="HxW image sizes")
    bench_irn.add_argument("--batch-size", type=int, help="images per sparse walk (default 16 on GPU, 2 on CPU)")
    bench_irn.add_argument("--batches", type=int, default=2, help="timed sparse walks per size")
    bench_irn.add_argument("--exp-times", type=int, default=8, help="the walk takes 2^exp_times steps (default 8)")
    bench_irn.add_argument("--dense-max-nodes", type=int,
                           help="estimate, not run, a dense walk over more cells (default: 4096 on CPU, none on GPU)")
    bench_irn.add_argument("--devices", nargs="+", help="default: cuda and cpu when there is a GPU, else cpu")
    bench_irn.add_argument("--json", help="also write the table as JSON here")
    bench_irn.set_defaults(handler=_bench_irn)


def _bench_all(args: argparse.Namespace) -> int:
    from vwe.bench import bench_all

    report = bench_all(args.out, quick=args.quick)
    for name, rows in report["sections"].items():
        print(f"\n## {name} ({report['seconds'][name]} s)")
        print_table(rows)
    for name, error in report["errors"].items():
        print(f"\n## {name}: FAILED: {error}")
    print(f"\n{report['device']}, {report['total_seconds']} s in all; written to {args.out}")
    return 1 if report["errors"] else 0


def _bench_train(args: argparse.Namespace) -> int:
    from vwe.bench import bench_train

    return _table(args, bench_train(backbones=args.backbones, batch_size=args.batch_size, size=args.size,
                                    steps=args.steps, loader_workers=args.loader_workers, data_root=args.data_root,
                                    compile=args.compile))


def _bench_deeplab(args: argparse.Namespace) -> int:
    from vwe.bench import bench_deeplab

    return _table(args, bench_deeplab(backbone=args.backbone, batch_size=args.batch_size, size=args.size,
                                      steps=args.steps))


def _bench_cam(args: argparse.Namespace) -> int:
    from vwe.bench import bench_cam

    return _table(args, bench_cam(backbones=args.backbones, images=args.images, batch_size=args.batch_size))


def _bench_crf(args: argparse.Namespace) -> int:
    from vwe.bench import bench_crf

    height, _, width = args.size.partition("x")
    return _table(args, bench_crf(images=args.images, height=int(height), width=int(width),
                                  labels=tuple(args.labels), batch_size=args.batch_size))


def _bench_irn(args: argparse.Namespace) -> int:
    from vwe.bench import bench_irn

    sizes = tuple(tuple(int(side) for side in size.split("x")) for size in args.sizes)
    return _table(args, bench_irn(sizes=sizes, batch_size=args.batch_size, batches=args.batches,
                                  exp_times=args.exp_times, dense_max_nodes=args.dense_max_nodes,
                                  devices=args.devices))


def print_table(rows: list[dict[str, Any]]) -> None:
    """Rows of same-keyed dicts as an aligned text table."""
    if not rows:
        return
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns))


def _table(args: argparse.Namespace, rows: list[dict]) -> int:
    from vwe.io import write_json

    print_table(rows)
    if args.json:
        write_json(args.json, rows)
    return 0
