"""Classifier training on Ray Train: 2 CPU workers (gloo), checkpoints, resume, and recovery from a worker fault."""
from pathlib import Path

import pytest
import torch

from vwe.config import load_config
from vwe.ray.train import checkpoint_dirs
from vwe.stages.train_cam import train_classifier

REPO = Path(__file__).resolve().parents[1]


def tiny_config(synth_root: Path, out: Path, *overrides: str):
    return load_config("tiny", [f"data.root={synth_root}", f"out_dir={out}",
                                                        "ray.num_workers=2", *overrides])


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "classifier" / "model.pth", weights_only=True)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


@pytest.fixture(scope="module")
def reference_run(ray_local, synth_root, tmp_path_factory):
    """An uninterrupted 2-worker run: 2 epochs of 12 global batches of 8."""
    out = tmp_path_factory.mktemp("reference")
    result = train_classifier(tiny_config(synth_root, out))
    return out, result


def test_two_workers_train_checkpoint_and_export(reference_run):
    out, result = reference_run
    assert result["step"] == 24 and result["resumed_from"] == 0
    checkpoints = checkpoint_dirs(out / "ray" / "train_cam")
    assert checkpoints, "no checkpoint written"
    state = torch.load(checkpoints[-1] / "state.pt", weights_only=True)
    assert state["step"] == 24 and set(state) >= {"model", "optimizer", "rng", "config"}
    assert (out / "classifier" / "config.yaml").is_file()
    assert_same_weights(final_weights(out), state["model"])


def test_loss_falls(reference_run):
    _, result = reference_run
    losses = [report["loss"] for report in result["history"]]
    assert len(losses) == 6  # a report every 4 steps
    assert sum(losses[-2:]) < 0.9 * sum(losses[:2]), losses


def test_resume_continues_from_checkpoint(reference_run, synth_root, tmp_path):
    ref_out, _ = reference_run
    first = train_classifier(tiny_config(synth_root, tmp_path, "train.max_steps=10"))
    assert first["step"] == 10
    second = train_classifier(tiny_config(synth_root, tmp_path), resume=True)
    assert second["resumed_from"] == 10 and second["step"] == 24
    assert_same_weights(final_weights(tmp_path), final_weights(ref_out))


def test_worker_fault_recovers_to_same_weights(reference_run, synth_root, tmp_path):
    ref_out, _ = reference_run
    fault = {"step": 10, "rank": 1, "marker": str(tmp_path / "fault_happened")}
    result = train_classifier(tiny_config(synth_root, tmp_path, "ray.max_failures=1"), fault=fault)
    assert (tmp_path / "fault_happened").exists(), "the fault hook never fired"
    assert result["step"] == 24 and result["resumed_from"] == 8  # last checkpoint before the fault
    assert_same_weights(final_weights(tmp_path), final_weights(ref_out))


def test_resume_without_a_checkpoint_is_refused(synth_root, tmp_path):
    from vwe.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--resume: no checkpoint to resume in .*train_cam"):
        train_classifier(tiny_config(synth_root, tmp_path), resume=True)
    assert not (tmp_path / "classifier").exists()
