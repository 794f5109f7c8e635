"""Training state on disk, and the single-process training session (no Ray).

A training loop talks to a *session* (`rank`, `world_size`, `device`, `wrap_model`, `load_checkpoint`, `report`):
`LocalSession` below runs it in this process; `vwe.ray.train.RaySession` runs it in Ray Train workers.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from vwe import storage
from vwe.errors import DataError
from vwe.io import atomic_path, write_text

STATE_FILE = "state.pt"
log = logging.getLogger(__name__)


def save_state(directory: str | Path, state: dict[str, Any]) -> Path:
    """Writes a training state dict (tensors, numbers, strings, nested dicts/lists) as `<directory>/state.pt`."""
    path = Path(directory) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def load_state(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as err:
        raise DataError(f"{path}: checkpoint file is missing") from err
    except Exception as err:  # truncated or foreign files raise many types
        raise DataError(f"{path}: not a readable checkpoint ({err})") from err


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def export_model(model: nn.Module, cfg: Any, directory: str | Path) -> str | Path:
    """Writes a trained network as `model.pth` (a plain state dict) with the `config.yaml` that made it, in
    `directory` (a folder or URI); returns the weights path."""
    weights = storage.join(directory, "model.pth")
    write_text(storage.join(directory, "config.yaml"), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    with atomic_path(weights) as tmp:
        torch.save(unwrap(model).state_dict(), tmp)
    return weights


def read_export(directory: str | Path, command: str) -> tuple[dict[str, torch.Tensor], Any]:
    """The (state dict, Config) of an `export_model` folder. A missing export says to run `vwe <command>`; an
    unreadable one (a truncated copy, a foreign file) is a DataError naming the file."""
    from vwe.config import Config

    config_path, weights = storage.join(directory, "config.yaml"), storage.join(directory, "model.pth")
    if not (storage.is_file(config_path) and storage.is_file(weights)):
        raise DataError(f"{directory}: no trained model there (model.pth + config.yaml); run `vwe {command}` first")
    cfg = Config.from_dict(yaml.safe_load(storage.read_text(config_path)), source=str(config_path))
    try:
        with storage.local_copy(weights) as local:
            state = torch.load(local, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or foreign files raise many types
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(f"{weights}: not a readable weights file ({first_line}); run `vwe {command}` again") from err
    return state, cfg


class LocalSession:
    """Runs a training loop in this process; checkpoints go to `<directory>/step_<n>/state.pt`, newest `keep` kept."""

    rank = 0
    world_size = 1

    def __init__(self, directory: str | Path, device: str | torch.device = "cpu", keep: int = 2):
        self.directory = Path(directory)
        self.device = torch.device(device)
        self.keep = keep
        self.reports: list[dict[str, Any]] = []

    def wrap_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def checkpoints(self) -> list[Path]:
        found = [p for p in self.directory.glob("step_*") if (p / STATE_FILE).is_file()]
        return sorted(found, key=lambda p: int(p.name.split("_")[1]))

    def load_checkpoint(self) -> dict[str, Any] | None:
        found = self.checkpoints()
        return load_state(found[-1]) if found else None

    def report(self, metrics: dict[str, Any], checkpoint: dict[str, Any] | None = None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"step_{checkpoint['step']:08d}"
        tmp = Path(tempfile.mkdtemp(prefix=".tmp_step_", dir=self.directory))
        try:
            save_state(tmp, checkpoint)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for old in self.checkpoints()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
