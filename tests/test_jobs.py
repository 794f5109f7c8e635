"""jobs/: one entrypoint per stage, and what jobs/submit.py uploads and runs (no cluster needed here; see
test_multinode.py for real submissions)."""
import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def submit():
    spec = importlib.util.spec_from_file_location("vwe_submit", REPO / "jobs" / "submit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_entrypoint_takes_its_commands_arguments():
    for name in ("pipeline", "train_cam", "make_cam", "eval_cam", "make_pseudo", "train_irn", "make_sem_seg"):
        done = subprocess.run([sys.executable, str(REPO / "jobs" / f"{name}.py"), "--help"], capture_output=True,
                              text=True, cwd=REPO, timeout=120)
        assert done.returncode == 0 and "--config" in done.stdout and "--set" in done.stdout, done.stderr


def test_working_dir_leaves_out_data_runs_and_weights(submit):
    from ray._private.runtime_env.packaging import _get_excludes

    env = submit.runtime_env(pip=["rich==13.7.1"], env_vars={"OMP_NUM_THREADS": "1"})
    assert env["working_dir"] == str(REPO) and env["pip"] == ["rich==13.7.1"]
    excluded = _get_excludes(REPO, env["excludes"])
    for path in ("data/VOCdevkit/VOC2012/JPEGImages/a.jpg", "runs/voc/cams/a.npz", ".venv/bin/python", ".git/HEAD",
                 "vwe/__pycache__/cam.cpython-311.pyc", "weights/resnet50.pth"):
        assert excluded(REPO / path), path
    for path in ("vwe/data/voc.py", "jobs/pipeline.py", "vwe/configs/voc.yaml", "pyproject.toml"):
        assert not excluded(REPO / path), path


def test_entrypoint_quotes_arguments_and_names_the_jobs(submit):
    line = submit.entrypoint("pipeline", ["--config", "tiny", "--set", "synth.splits={train_aug: 8}"])
    assert shlex.split(line) == ["python", "jobs/pipeline.py", "--config", "tiny", "--set",
                                 "synth.splits={train_aug: 8}"]
    assert {"pipeline", "train_cam", "make_pseudo"} <= set(submit.job_names()) and "submit" not in submit.job_names()
    with pytest.raises(SystemExit, match="unknown job 'trian_cam'"):
        submit.entrypoint("trian_cam", [])


def test_token_mode_needs_a_token(submit, monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing_token"))
    with pytest.raises(SystemExit, match="missing_token does not exist"):
        submit.main(["pipeline", "--config", "tiny"])
