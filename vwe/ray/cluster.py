"""Connecting to Ray (a cluster when an address is given, otherwise a private local Ray started in-process), and
how loud it is.

By default a run prints vwe's own lines only: Ray Train's per-report dicts and checkpoint banners and Ray Data's
progress tables stay out (`vwe -v` brings them back, as VWE_VERBOSE=1). Every worker and actor of a stage also
logs to its own file under `<out_dir>/logs/`.
"""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from vwe import storage
from vwe.config import RayConfig

log = logging.getLogger(__name__)

# Quieter, faster local runs; a value the user set in the environment wins. The private local Ray listens on this
# host only, so it needs no token (and writes none to ~/.ray).
_LOCAL_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}
VERBOSE = "VWE_VERBOSE"  # "1": Ray's own output too
# Ray's loggers that speak for every report, block and checkpoint; warnings and errors still pass
_CHATTY = ("ray.train", "ray.tune", "ray.data")
_LOG_FORMAT = "%(asctime)s %(name)s: %(message)s"


def verbose() -> bool:
    return os.environ.get(VERBOSE) == "1"


def _quiet_ray_loggers() -> None:
    if verbose():
        return
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    # some of Ray's modules name their logger after their file path, e.g. Train's per-report line
    for name in list(logging.root.manager.loggerDict):
        if f"{os.sep}ray{os.sep}train{os.sep}" in name:
            logging.getLogger(name).setLevel(logging.WARNING)
    # "progress bars disabled": the stages report their own progress
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def quiet_worker(threads: float, out_dir: str | Path, role: str) -> None:
    """Settings of a process that runs stage work for Ray (a Train worker, a Data actor): the torch thread count
    fixed to its CPU share, so its numbers do not depend on what else runs on the node; Ray's chatty loggers
    quietened; and a log file of its own, `<out_dir>/logs/<role>-<pid>.log` (a local or NFS run folder only)."""
    import ray.data
    import torch

    torch.set_num_threads(max(1, int(threads)))
    logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT, datefmt="%H:%M:%S")
    ray.data.DataContext.get_current().enable_progress_bars = verbose()  # a trial that runs data stages itself
    _quiet_ray_loggers()
    if storage.is_uri(out_dir):
        return
    folder = Path(out_dir) / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / f"{role}-{os.getpid()}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def init_ray(ray_cfg: RayConfig, num_cpus: int | None = None) -> None:
    """Starts or joins Ray once per process. `ray.address` (or RAY_ADDRESS) joins a cluster; empty starts a local one.

    The local one is private (`address="local"`): it never attaches to another Ray already running on the host.
    """
    import ray
    import ray.data

    if ray.is_initialized():
        return
    address = ray_cfg.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        # a cluster's workers have their own environment: `jobs/submit.py --env VWE_VERBOSE=1` for Ray's output
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        for key, value in _LOCAL_ENV.items():
            os.environ.setdefault(key, value)
        port = _free_port()
        # Ray Train's placement-group cleaner asks the State API, which finds "the" dashboard of the host: with
        # another Ray running here that may be the wrong one (a traceback each time); name ours. Set before the
        # start, since the workers inherit this environment (VWE_VERBOSE too).
        os.environ.setdefault("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{port}")
        log.info("starting a local Ray in this process")
        ray.init(address="local", num_cpus=num_cpus, log_to_driver=True, dashboard_port=port)
    ray.data.DataContext.get_current().enable_progress_bars = verbose()
    _quiet_ray_loggers()
