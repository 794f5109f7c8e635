"""Connecting to Ray: a cluster when an address is given, otherwise a private local Ray started in-process."""
from __future__ import annotations

import logging
import os

from vwe.config import RayConfig

log = logging.getLogger(__name__)

# Quieter, faster local runs; a value the user set in the environment wins.
_LOCAL_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}


def quiet_worker(threads: float) -> None:
    """Settings of a process that runs stage work for Ray (a Train worker, a Data actor or task): the torch thread
    count fixed to its CPU share, so its numbers do not depend on what else runs on the node, and log lines."""
    import torch

    torch.set_num_threads(max(1, int(threads)))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def init_ray(ray_cfg: RayConfig, num_cpus: int | None = None) -> None:
    """Starts or joins Ray once per process. `ray.address` (or RAY_ADDRESS) joins a cluster; empty starts a local one.

    The local one is private (`address="local"`): it never attaches to another Ray already running on the host.
    """
    import ray

    if ray.is_initialized():
        return
    address = ray_cfg.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
        return
    for key, value in _LOCAL_ENV.items():
        os.environ.setdefault(key, value)
    log.info("starting a local Ray in this process")
    ray.init(address="local", num_cpus=num_cpus, log_to_driver=True)
