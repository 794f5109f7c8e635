"""A run folder is safe: one command at a time holds it, a missing prerequisite names the command to run first, and
an error raised inside a Ray worker reaches the user as the same one line (exit status 2), without a retry."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest

from vwe.cam import CamResult, save_cam
from vwe.checkpoint import export_model
from vwe.cli import main
from vwe.config import load_config
from vwe.data.synth import generate
from vwe.data.voc import VOCDataset
from vwe.errors import ConfigError
from vwe.models import build_classifier
from vwe.ray.train import USER_ERROR
from vwe.run_folder import RunFolder, RunLock


@pytest.fixture()
def tiny(tmp_path):
    """The tiny config on a small synthetic dataset, written where the commands read it."""
    cfg = load_config("tiny", [f"out_dir={tmp_path / 'run'}", f"data.root={tmp_path / 'VOC2012'}",
                               "synth.enabled=false", "train.max_steps=2"])
    generate(cfg.data.root, {"train_aug": 16, "train": 8, "val": 4, "test": 1}, 48, 64, seed=2)
    config = tmp_path / "config.yaml"
    cfg.dump(config)
    return cfg, ["--config", str(config)]


def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"vwe {command}: error: "), err
    return err[0]


def test_a_second_command_on_a_locked_run_folder_is_refused(tiny, capsys):
    cfg, config = tiny
    with RunLock(RunFolder.of(cfg)):
        with pytest.raises(ConfigError, match="in use by"):
            RunLock(RunFolder.of(cfg)).__enter__()
        assert main(["run", *config, "--until", "data"]) == 2
        line = one_error_line(capsys, "run")
        assert f"pid {os.getpid()} on {socket.gethostname()}" in line and cfg.out_dir in line
        assert main(["make-cam", *config]) == 2
        assert "in use by" in one_error_line(capsys, "make-cam")
    assert main(["run", *config, "--until", "data"]) == 0  # released: the next command goes ahead
    assert (Path(cfg.out_dir) / "data_check.json").is_file()


def test_an_out_dir_that_cannot_be_written_is_named(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["run", "--config", "tiny", "--out", str(blocker / "run"), "--until", "data"]) == 2
    assert f"out_dir {blocker / 'run'}: cannot write there" in one_error_line(capsys, "run")


def test_a_missing_or_truncated_classifier_names_the_command_and_the_file(ray_local, tiny, capsys):
    cfg, config = tiny
    assert main(["make-cam", *config]) == 2
    assert "run `vwe train-cam` first" in one_error_line(capsys, "make-cam")
    export_model(build_classifier(cfg).eval(), cfg, RunFolder.of(cfg).classifier)
    weights = Path(RunFolder.of(cfg).classifier) / "model.pth"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["make-cam", *config]) == 2
    line = one_error_line(capsys, "make-cam")
    assert f"{weights}: not a readable weights file" in line and "run `vwe train-cam` again" in line
    assert not Path(RunFolder.of(cfg).cams).exists()  # found before any actor started


def test_a_data_error_in_a_train_worker_is_one_line_and_not_retried(ray_local, tiny, capsys):
    cfg, config = tiny
    voc = VOCDataset(cfg.data.root)
    broken = voc.image_path(voc.split_ids("train_aug")[3])
    broken.write_bytes(b"\xff\xd8 not a jpeg")  # the driver's checks do not decode images; the worker does
    assert main(["train-cam", *config, "--set", "ray.max_failures=1"]) == 2
    assert f"{broken}: cannot decode image" in one_error_line(capsys, "train-cam")
    record = json.loads((Path(RunFolder.of(cfg).train_run("train_cam")) / USER_ERROR).read_text())
    assert record["type"] == "DataError" and record["attempts"] == 1  # Ray's restart did not run the loop again


def test_a_data_error_in_a_ray_data_task_is_one_line(ray_local, tiny, capsys):
    """eval-cam's tasks read the CAM files; one whose size differs from its mask fails inside a Ray task."""
    cfg, config = tiny
    run = RunFolder.of(cfg)
    voc = VOCDataset(cfg.data.root)
    labels = voc.image_labels()
    for image_id in voc.split_ids("train"):
        keys = np.flatnonzero(labels[image_id])
        size = (24, 32) if image_id == voc.split_ids("train")[2] else (48, 64)
        maps = np.zeros((len(keys), *size), np.float32)
        save_cam(run.cam(image_id), CamResult(keys, maps[:, ::4, ::4], maps))
    assert main(["eval-cam", *config, "--split", "train"]) == 2
    line = one_error_line(capsys, "eval-cam")
    assert f"{run.cam(voc.split_ids('train')[2])}: CAM size (24, 32) differs from its mask (48, 64)" in line


def test_train_cam_refuses_a_split_smaller_than_one_batch_before_training(tiny, capsys):
    cfg, config = tiny
    assert main(["train-cam", *config, "--set", "train.batch_size=32", "data.train_split=train"]) == 2
    assert "fewer than one global batch of 32" in one_error_line(capsys, "train-cam")
    assert not Path(RunFolder.of(cfg).train_run("train_cam")).exists()  # refused on the driver: no Train run
