"""Training loops as Ray Train workloads: DDP over `ray.num_workers` workers (NCCL on GPUs, gloo on CPU).

Checkpoints go through `ray.train.report` to `<ray storage>/<name>/`; a worker that dies is replaced and the group
resumes from the last checkpoint (FailureConfig); running again with the same storage resumes the run.

A ConfigError or DataError raised by the loop (a corrupt image, a missing file) would fail the same way again, so
it is not retried: the failing worker records it in the run folder before it raises, Ray Train restarts the group
as it does after any failure, and the restarted workers return at once with the recorded error, which `fit`
raises here.
"""
from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer, get_device, prepare_model
from torch import nn

from vwe import storage
from vwe.checkpoint import load_state, save_state
from vwe.config import Config
from vwe.errors import ConfigError, DataError, VweError
from vwe.io import write_json
from vwe.ray.cluster import init_ray, quiet_worker, verbose
from vwe.run_folder import RunFolder

log = logging.getLogger(__name__)
USER_ERROR = "user_error.json"  # in the run's folder: the VweError that ended it
Loop = Callable[..., dict[str, Any]]  # loop(cfg, session, fault=None) -> rank 0's result


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


def _worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    cfg: Config = loop_config["cfg"]
    rank = ray.train.get_context().get_world_rank()
    quiet_worker(cfg.ray.cpus_per_worker, cfg.out_dir, f"{loop_config['name']}-rank{rank}")
    recorded = storage.join(loop_config["run_dir"], USER_ERROR)
    if storage.is_file(recorded):
        return {"user_error": json.loads(storage.read_text(recorded))}
    try:
        return loop_config["loop"](cfg, RaySession(), fault=loop_config.get("fault"))
    except VweError as err:
        # `attempts` stays 1 unless a restarted group ran the loop again (what the record is there to prevent)
        write_json(recorded, {"type": type(err).__name__, "message": str(err), "attempts": _attempts(recorded) + 1})
        raise


def _attempts(recorded: str | Path) -> int:
    return json.loads(storage.read_text(recorded))["attempts"] if storage.is_file(recorded) else 0


def checkpoint_dirs(run_dir: str | Path) -> list[str | Path]:
    """The run's checkpoint folders (Ray names them checkpoint_<timestamp>), oldest first; a folder or URI."""
    folders = [storage.join(run_dir, name) for name in storage.listdir(run_dir) if name.startswith("checkpoint_")]
    return [folder for folder in folders if storage.is_file(storage.join(folder, "state.pt"))]


def fit(cfg: Config, name: str, loop: Loop, *, num_workers: int = 0, resume: bool = False, restart: bool = False,
        fault: dict[str, Any] | None = None, callbacks: list[ray.train.UserCallback] | None = None) -> dict[str, Any]:
    """Runs `loop` on `num_workers` Ray Train workers (0: ray.num_workers) as the run `name` (resumed when it has
    checkpoints); returns rank 0's result.

    `resume=True` insists on an existing run; `restart=True` deletes it first. `fault` is the loop's test hook.
    `callbacks` go to the run (a Tune trial passes `TuneReportCallback`).
    """
    run_dir = RunFolder.of(cfg).train_run(name)
    if restart and storage.exists(run_dir):
        log.info("--restart: deleting %s", run_dir)
        storage.delete(run_dir)
    elif checkpoint_dirs(run_dir):
        log.info("resuming the run in %s (pass --restart to start over)", run_dir)
    elif resume:
        raise ConfigError(f"--resume: no checkpoint to resume in {run_dir}")
    storage.delete(storage.join(run_dir, USER_ERROR))  # an error of an earlier command, since fixed
    init_ray(cfg.ray)
    log.info("%s: starting %d Ray Train worker(s)", name, num_workers or cfg.ray.num_workers)
    resources = {"CPU": cfg.ray.cpus_per_worker}
    if cfg.ray.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"cfg": cfg, "loop": loop, "name": name, "run_dir": str(run_dir), "fault": fault},
        torch_config=TorchConfig(backend="nccl" if cfg.ray.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=num_workers or cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu,
                                     resources_per_worker=resources,
                                     placement_strategy=cfg.ray.placement_strategy),
        run_config=RunConfig(name=name, storage_path=str(RunFolder.of(cfg).train_runs),
                             failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2), callbacks=callbacks,
                             # Ray Train's own INFO lines (a dict per report, a banner per checkpoint) stay in its
                             # log files unless -v; warnings and vwe's step lines still reach the console
                             logging_config=LoggingConfig(log_level="INFO" if verbose() else "WARNING")),
    )
    try:
        result = trainer.fit().return_value
    except ray.train.TrainingFailedError:
        result = {}
        if not storage.is_file(storage.join(run_dir, USER_ERROR)):
            raise
    recorded = storage.join(run_dir, USER_ERROR)
    if storage.is_file(recorded):
        error = json.loads(storage.read_text(recorded))
        raise (ConfigError if error["type"] == "ConfigError" else DataError)(error["message"])
    return result
