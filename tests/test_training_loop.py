"""The shared training loop (vwe.training.run) in this process, on a toy regression."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from vwe.checkpoint import LocalSession
from vwe import training


class Points(Dataset):
    """y = 3x on 32 fixed points."""

    def __init__(self) -> None:
        self.x = torch.linspace(-1, 1, 32)[:, None]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[index], "y": 3 * self.x[index]}


def step(model: nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer):
    loss = ((model(batch["x"]) - batch["y"]) ** 2).mean()
    return training.optimize(optimizer, loss, {})


def train(lr: float, directory: Path) -> dict:
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for group in optimizer.param_groups:
        group["lr_mult"] = 1.0
    schedule = training.Schedule(batch_size=8, total_steps=40, lr=lr, poly_power=0.9, seed=0, log_every=4,
                                 checkpoint_every=1000, loader_workers=0)
    return training.run(LocalSession(directory), model, optimizer, Points(), step, schedule, {})


def test_loss_falls_on_a_sane_learning_rate(tmp_path: Path) -> None:
    result = train(0.1, tmp_path)
    assert result["history"][-1]["loss"] < 0.1 * result["history"][0]["loss"]


def test_a_diverging_run_stops_before_saving_nan_weights(tmp_path: Path) -> None:
    with pytest.raises(FloatingPointError, match=r"diverged; lower the learning rate"):
        train(1e6, tmp_path)
    saved = sorted(tmp_path.glob("step_*"))
    assert saved  # epoch-end checkpoints before the loss overflowed
    for folder in saved:
        state = torch.load(folder / "state.pt", weights_only=False)
        assert all(torch.isfinite(value).all() for value in state["model"].values()), folder.name


def test_a_run_resumed_at_its_last_step_reports_where_it_is(tmp_path: Path) -> None:
    """A sweep trial whose driver died after its Train run finished resumes here: its report still has the epoch."""
    first = train(0.1, tmp_path)
    again = train(0.1, tmp_path)
    assert again["resumed_from"] == again["step"] == first["step"] == 40
    assert again["epoch"] == first["epoch"] == 10 and again["history"] == []
