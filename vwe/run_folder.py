"""The run folder: every path a stage writes or reads under `out_dir`, named in one place, and its lock.

`out_dir` may be a local or NFS folder or an object-store URI (`vwe.storage`); so may `ray.storage_path`, where
Ray Train keeps its runs (default `<out_dir>/ray`).
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from vwe import storage
from vwe.errors import ConfigError

PathLike = str | Path


@dataclass(frozen=True)
class RunFolder:
    root: PathLike
    ray_storage: PathLike = ""  # ray.storage_path; "" = <root>/ray

    @classmethod
    def of(cls, cfg) -> "RunFolder":
        return cls(cfg.out_dir, cfg.ray.storage_path)

    def _path(self, *parts: str) -> PathLike:
        return storage.join(self.root, *parts)

    # the run itself
    @property
    def config(self) -> PathLike:
        return self._path("config.yaml")

    @property
    def stages(self) -> PathLike:
        return self._path("stages.json")

    @property
    def lock(self) -> PathLike:
        return self._path(".vwe.lock")

    @property
    def data_check(self) -> PathLike:
        return self._path("data_check.json")

    def metrics(self, stage: str) -> PathLike:
        """A training stage's reports (loss terms, LR, images/s, epoch-end CAM mIoU) as CSV, one row per report."""
        return self._path("metrics", f"{stage}.csv")

    @property
    def logs(self) -> PathLike:
        """The log files of the Ray workers and actors of this run's commands, one per process."""
        return self._path("logs")

    # Ray Train's runs: checkpoints of each training stage
    @property
    def train_runs(self) -> PathLike:
        return self.ray_storage or self._path("ray")

    def train_run(self, stage: str) -> PathLike:
        return storage.join(self.train_runs, stage)

    # stage 1: the classifier
    @property
    def classifier(self) -> PathLike:
        return self._path("classifier")

    def classifier_at(self, epoch: int) -> PathLike:
        """The classifier exported after `epoch` epochs (cam.classifier_epoch); 0 = the final one."""
        return storage.join(self.classifier, f"epoch_{epoch}") if epoch else self.classifier

    # stage 2: CAMs and their scores
    @property
    def cams(self) -> PathLike:
        return self._path("cams")

    def cam(self, image_id: str) -> PathLike:
        return storage.join(self.cams, f"{image_id}.npz")

    @property
    def cam_scores(self) -> PathLike:
        return self._path("eval_cam")

    # stage 3: pseudo labels and their scores
    @property
    def pseudo_labels(self) -> PathLike:
        return self._path("pseudo_labels")

    def pseudo_label(self, image_id: str) -> PathLike:
        return storage.join(self.pseudo_labels, f"{image_id}.png")

    @property
    def pseudo_label_scores(self) -> PathLike:
        return self._path("eval_labels")

    # stage 3 with pseudo.method = irnet: IRNet's boundary network and its semantic labels
    @property
    def irn(self) -> PathLike:
        return self._path("irn")

    @property
    def sem_seg_labels(self) -> PathLike:
        return self._path("sem_seg_labels")

    def sem_seg_label(self, image_id: str) -> PathLike:
        return storage.join(self.sem_seg_labels, f"{image_id}.png")

    @property
    def sem_seg_label_scores(self) -> PathLike:
        return self._path("eval_sem_seg")

    # stages 4-5: DeepLab, its predictions and their scores
    @property
    def deeplab(self) -> PathLike:
        return self._path("deeplab")

    def predictions(self, split: str, crf: bool) -> PathLike:
        return self._path("seg_crf" if crf else "seg", split)

    def prediction(self, split: str, crf: bool, image_id: str) -> PathLike:
        return storage.join(self.predictions(split, crf), f"{image_id}.png")

    @property
    def prediction_roots(self) -> list[PathLike]:
        return [self._path("seg"), self._path("seg_crf")]

    @property
    def seg_scores(self) -> PathLike:
        return self._path("eval_seg")

    @staticmethod
    def seg_score_name(split: str, crf: bool) -> str:
        return f"{split}_crf" if crf else split

    def voc_server_archive(self, split: str, crf: bool) -> PathLike:
        return self._path("voc_server", f"{self.seg_score_name(split, crf)}.tar.gz")

    # `vwe ablate`: a run folder per (variant, seed) below, the table and figure
    @property
    def ablation(self) -> PathLike:
        return self._path("ablation")

    # the report
    @property
    def report(self) -> PathLike:
        return self._path("report.html")

    @property
    def report_pictures(self) -> PathLike:
        return self._path("report")

    @staticmethod
    def manifest(folder: PathLike) -> PathLike:
        return storage.join(folder, "manifest.parquet")


class RunLock:
    """An exclusive lock on a run folder for one command: a second `vwe run` or stage on the same folder is refused
    with the holder's pid and host.

    A local folder uses `flock` (released by the OS when the holder dies, so a crash never leaves it locked); an
    object store has no such primitive, so there the lock is a file that a finished command deletes.
    """

    def __init__(self, folder: RunFolder):
        self.path = folder.lock
        self._file: IO[str] | None = None

    def __enter__(self) -> "RunLock":
        holder = {"pid": os.getpid(), "host": socket.gethostname()}
        if storage.is_uri(self.path):
            if storage.is_file(self.path):
                raise ConfigError(f"{self.path}: this run folder is in use by {_holder(storage.read_text(self.path))}; "
                                  "wait for it, or delete the lock file if that command is gone")
            storage.write_bytes(self.path, json.dumps(holder).encode())
            return self
        import fcntl

        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            file = open(self.path, "a+")
        except OSError as err:
            raise ConfigError(f"out_dir {Path(self.path).parent}: cannot write there ({err.strerror})") from None
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.seek(0)
            text = file.read()
            file.close()
            raise ConfigError(f"{Path(self.path).parent}: this run folder is in use by {_holder(text)}; "
                              "wait for it to finish or stop it first") from None
        file.seek(0)
        file.truncate()
        file.write(json.dumps(holder))
        file.flush()
        self._file = file
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the flock
            self._file = None
        elif storage.is_uri(self.path):
            storage.delete(self.path)


def _holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']}"
    except (ValueError, KeyError, TypeError):
        return "another vwe command"
