import os

# Before Ray starts: loopback-only test clusters, no auth token, fast Train health checks.
for key, value in {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_DEDUP_LOGS": "0",
    # oneDNN's avx512_core_bf16 convolution kernels corrupt the heap on AMD Zen 4 (torch 2.13 CPU build, seen on
    # this project's 2-core VMs: "free(): invalid next size"); the tests run bf16 on the CPU only to exercise the
    # GPU branch's autocast path, which the AVX-512 kernels without native bf16 compute just as well
    "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
}.items():
    os.environ.setdefault(key, value)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


def _local_ray():
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
                 object_store_memory=256 * 1024**2)
    return ray


@pytest.fixture(scope="module")
def ray_local():
    """A private 2-CPU local Ray, started by the first module that needs it and kept for the next ones (Ray stops
    at exit). A module that needs other settings (test_tune.py) shuts it down and starts its own."""
    return _local_ray()


TINY_COCO_IRNET = ["data.dataset=coco", "data.num_classes=80", "data.train_split=train", "data.cam_split=train",
                   "pseudo.method=irnet"]


@pytest.fixture(scope="session")
def coco_irnet_run(tmp_path_factory):
    """One tiny `vwe run` shared by test_irnet.py and test_coco_pipeline.py (a run costs most of a minute): the
    synthetic benchmark in COCO's format, an 80-class head, IRNet's labels, so all 11 stages; its config."""
    from vwe.cli import main
    from vwe.config import load_config

    _local_ray()
    out = tmp_path_factory.mktemp("coco_irnet_run")
    assert main(["run", "--config", "tiny", "--out", str(out), "--set", *TINY_COCO_IRNET]) == 0
    return load_config("tiny", [f"out_dir={out}", *TINY_COCO_IRNET])


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic VOC2012 folder shared by the tests that only read it."""
    from vwe.data.synth import generate

    root = tmp_path_factory.mktemp("synth") / "VOC2012"
    generate(root, {"train_aug": 96, "train": 32, "val": 32, "test": 8}, 64, 64, num_classes=20, seed=0)
    return root


@pytest.fixture(scope="module")
def one_thread():  # type: ignore[no-untyped-def]
    """One torch thread for the module: on 2 shared cores one thread is faster than two fighting other processes,
    and the runs are reproducible."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
