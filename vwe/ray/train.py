"""Training stages as Ray Train workloads: DDP over `ray.num_workers` workers (NCCL on GPUs, gloo on CPU).

Checkpoints go through `ray.train.report` to `<storage_path>/<stage>/`; a worker that dies is replaced and the
group resumes from the last checkpoint (FailureConfig); running again with the same storage resumes the run.
"""
from __future__ import annotations

import importlib
import logging
import tempfile
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer, get_device, prepare_model
from torch import nn

from vwe import storage
from vwe.checkpoint import load_state, save_state
from vwe.config import Config
from vwe.errors import ConfigError
from vwe.ray.cluster import init_ray

log = logging.getLogger(__name__)
# stage name -> module whose `train(cfg, session, fault)` is the per-worker loop
LOOPS = {"train_cam": "vwe.stages.train_classifier", "train_seg": "vwe.stages.train_deeplab"}
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


class RaySession:
    """The training-loop session inside a Ray Train worker."""

    def __init__(self) -> None:
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = torch.device(get_device())

    def wrap_model(self, model: nn.Module) -> nn.Module:
        return prepare_model(model)

    def load_checkpoint(self) -> dict[str, Any] | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return load_state(directory)

    def report(self, metrics: dict[str, Any], checkpoint: dict[str, Any] | None = None) -> None:
        # every rank must call report (it is a barrier); only rank 0 passes a checkpoint
        with tempfile.TemporaryDirectory() as directory:
            ray_checkpoint = None
            if checkpoint is not None:
                save_state(directory, checkpoint)
                ray_checkpoint = Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=ray_checkpoint)


def _worker_loop(loop_config: dict[str, Any]) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    cfg = Config.from_dict(loop_config["cfg"])
    loop = importlib.import_module(LOOPS[loop_config["stage"]])
    return loop.train(cfg, RaySession(), fault=loop_config.get("fault"))


def checkpoint_dirs(run_dir: str | Path) -> list[str | Path]:
    """The run's checkpoint folders (Ray names them checkpoint_<timestamp>), oldest first; a folder or URI."""
    folders = [storage.join(run_dir, name) for name in storage.listdir(run_dir) if name.startswith("checkpoint_")]
    return [folder for folder in folders if storage.is_file(storage.join(folder, "state.pt"))]


def storage_path(cfg: Config) -> str:
    """Where Ray Train keeps runs and checkpoints: ray.storage_path, else <out_dir>/ray (a path or a URI)."""
    return cfg.ray.storage_path or str(storage.join(cfg.out_dir, "ray"))


def fit_classifier(cfg: Config, **kwargs: Any) -> dict[str, Any]:
    """Stage 1 on Ray Train; see `fit`."""
    return fit("train_cam", cfg, **kwargs)


def fit(stage: str, cfg: Config, *, resume: bool = False, restart: bool = False,
        fault: dict[str, Any] | None = None, callbacks: list[ray.train.UserCallback] | None = None) -> dict[str, Any]:
    """Runs the training stage `stage` (a key of LOOPS) on Ray Train; returns rank 0's result. A run is resumed.

    `resume=True` insists on an existing run; `restart=True` deletes it first. `fault` is the loop's test hook.
    `callbacks` go to the run (a Tune trial passes `TuneReportCallback`).
    """
    cfg = cfg.resolved()  # workers change directory
    run_dir = storage.join(storage_path(cfg), stage)
    if restart and storage.exists(run_dir):
        log.info("--restart: deleting %s", run_dir)
        storage.delete(run_dir)
    elif checkpoint_dirs(run_dir):
        log.info("resuming the run in %s (pass --restart to start over)", run_dir)
    elif resume:
        raise ConfigError(f"--resume: no checkpoint to resume in {run_dir}")
    if cfg.ray.num_workers < 1:
        raise ConfigError(f"ray.num_workers must be at least 1, got {cfg.ray.num_workers}")
    if cfg.ray.placement_strategy not in PLACEMENT_STRATEGIES:
        raise ConfigError(f"ray.placement_strategy must be one of {', '.join(PLACEMENT_STRATEGIES)}, "
                          f"got {cfg.ray.placement_strategy!r}")
    init_ray(cfg.ray)
    resources = {"CPU": cfg.ray.cpus_per_worker}
    if cfg.ray.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"stage": stage, "cfg": cfg.to_dict(), "fault": fault},
        torch_config=TorchConfig(backend="nccl" if cfg.ray.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu,
                                     resources_per_worker=resources,
                                     placement_strategy=cfg.ray.placement_strategy),
        run_config=RunConfig(name=stage, storage_path=storage_path(cfg),
                             failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2), callbacks=callbacks),
    )
    result = trainer.fit()
    return result.return_value
