"""`vwe tune`: a 4-trial ASHA sweep of the tiny config on CPU whose driver is killed once trials are done and is
then resumed; the results table, heat map and best config it leaves; and space-file checks.

The sweep drivers run as subprocesses (`tune/sweep.py`, as `ray job submit` would run them) against this module's
Ray, which has the dashboard: ASHA stops trials, and Ray Train frees a stopped trial's workers only through the
State API the dashboard serves. The Ray has 3 logical CPUs (on 2 cores) and a trial's Train worker takes 2, so a
trial after a stopped one can train only if the stopped trial's placement group was freed.
"""
from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from vwe.config import load_config
from vwe.errors import ConfigError
from vwe.ray.tune import load_space, run_sweep

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "tune" / "space_tiny.yaml"
# 4 classes: in 2 epochs the tiny classifier learns enough for the trials' CAMs to differ (with 20 they are all 0)
BASE = ["synth.num_classes=4", "ray.cpus_per_worker=2"]
SWEEP_TIMEOUT_S = 300


def test_asha_is_refused_without_the_state_api(ray_local, tmp_path):
    """A Ray without the dashboard could not free a stopped trial's workers: the sweep must not start."""
    cfg = load_config("tiny", [f"out_dir={tmp_path}", *BASE])
    with pytest.raises(ConfigError, match="State API"):
        run_sweep(cfg, SPACE)
    assert not (tmp_path / "sweeps").exists()


@pytest.fixture(scope="module")
def ray_dashboard():
    import ray

    if ray.is_initialized():  # another module's 2-CPU Ray without the dashboard
        ray.shutdown()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.MonkeyPatch.context() as env:
        # Train's placement-group cleaner finds the State API by auto-detection, which fails when other Ray
        # instances run on this host (other test sessions); its workers inherit this and find ours.
        env.setenv("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{port}")
        env.setenv("OMP_NUM_THREADS", "1")  # Ray would give a 2-CPU worker 2 threads: slower on 2 shared cores
        ray.init(address="local", num_cpus=3, num_gpus=0, include_dashboard=True, dashboard_port=port,
                 log_to_driver=False, object_store_memory=256 * 1024**2)
        yield ray
        ray.shutdown()


def sweep_command(out: Path, address: str, *extra: str) -> list[str]:
    # one trial at a time: ASHA sees the trials in grid order, so which ones it stops does not depend on timing
    return [sys.executable, str(REPO / "tune" / "sweep.py"), "--config", "tiny",
            "--space", str(SPACE), "--set", f"out_dir={out}", *BASE, "--address", address, "--max-concurrent", "1",
            *extra]


def saved_trials(experiment: Path) -> list:
    """The trials as the sweep's saved state records them (status, last_result)."""
    from ray.tune import ExperimentAnalysis

    if not list(experiment.glob("experiment_state-*.json")):
        return []
    try:
        return ExperimentAnalysis(str(experiment)).trials
    except (ValueError, OSError):  # the state file is being copied into place
        return []


def trial_stamps(out: Path, trial_id: str) -> dict[str, int]:
    """Modification times of everything a trial leaves: classifier weights, CAM evaluation, Train checkpoints."""
    folders = (out / "sweeps" / "space_tiny" / "trials" / trial_id, out / "ray" / "sweep_space_tiny_trials" / trial_id)
    return {str(p): p.stat().st_mtime_ns for folder in folders for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def sweep(ray_dashboard, tmp_path_factory):
    """Start the sweep, kill its driver once two trials are done and a third one has reported from training, resume
    it; returns what each phase saw."""
    out = tmp_path_factory.mktemp("tune")
    address = ray_dashboard.get_runtime_context().gcs_address
    experiment = out / "ray" / "sweep_space_tiny"
    # the sweep state is saved every second (default: at least 10 s), so the kill finds a trial in training
    # (a running trial is saved as PENDING, to be run again on restore)
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    with open(out / "driver1.log", "w") as log:
        driver = subprocess.Popen(sweep_command(out, address), stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                  env=env)
    deadline = time.monotonic() + SWEEP_TIMEOUT_S
    trials: list = []
    try:
        while not (sum(t.status == "TERMINATED" for t in trials) >= 2
                   and any(t.status != "TERMINATED" and "epoch" in t.last_result for t in trials)):
            assert driver.poll() is None, f"the driver ended before it was killed: {(out / 'driver1.log').read_text()}"
            assert time.monotonic() < deadline, f"trials did not progress in time: {(out / 'driver1.log').read_text()}"
            time.sleep(1)
            trials = saved_trials(experiment)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    done = {t.trial_id: t.last_result for t in trials if t.status == "TERMINATED"}
    stamps = {trial_id: trial_stamps(out, trial_id) for trial_id in done}
    resumed = subprocess.run(sweep_command(out, address, "--resume"), capture_output=True, text=True, cwd=REPO,
                             timeout=SWEEP_TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    table = pd.read_parquet(out / "sweeps" / "space_tiny" / "results.parquet")
    return {"out": out, "done_before_kill": done, "stamps": stamps, "table": table}


def test_results_table_has_every_trial(sweep):
    table = sweep["table"]
    assert len(table) == 4
    assert set(zip(table["model.num_words"], table["model.hspp_gamma"])) == {(16, 0), (16, 4), (32, 0), (32, 4)}
    assert set(table["status"]) <= {"finished", "stopped"}, table[["trial_id", "status", "error"]]
    assert (table["wall_s"] > 0).all()
    finished = table[table["status"] == "finished"]
    assert finished["eval_miou"].between(0, 1).all() and (finished["epoch"] == 2).all()
    assert table["cam_miou"].between(0, 1).all()  # every trial reached the epoch-1 evaluation
    assert (table["error"] == "").all()
    csv = pd.read_csv(sweep["out"] / "sweeps" / "space_tiny" / "results.csv", dtype={"trial_id": str})
    pd.testing.assert_frame_equal(csv.drop(columns="error"), table.drop(columns="error"), check_dtype=False)


def test_asha_stops_a_trial_and_frees_its_workers(sweep):
    table = sweep["table"]
    stopped = table[table["status"] == "stopped"]
    assert (stopped["epoch"] == 1).all() and stopped["eval_miou"].isna().all()
    assert (table["status"] == "finished").any()
    # before the driver was killed, ASHA had stopped a trial (grid order, one at a time: (16, 4) scores below
    # (16, 0) at epoch 1) and the next trial had trained on the 2 CPUs the stopped trial's workers held
    stopped_early = [trial_id for trial_id, last in sweep["done_before_kill"].items() if "eval_miou" not in last]
    assert stopped_early and set(stopped_early) <= set(stopped["trial_id"]), (sweep["done_before_kill"], table)


def test_resume_does_not_rerun_done_trials(sweep):
    done, table = sweep["done_before_kill"], sweep["table"].set_index("trial_id")
    assert 1 <= len(done) < 4, done
    for trial_id, last in done.items():
        assert sweep["stamps"][trial_id], f"trial {trial_id} left no files"
        assert trial_stamps(sweep["out"], trial_id) == sweep["stamps"][trial_id], f"trial {trial_id} ran again"
        assert math.isclose(table.loc[trial_id, "wall_s"], last["time_total_s"])


def test_heatmap_and_best_config(sweep):
    sweep_dir = sweep["out"] / "sweeps" / "space_tiny"
    with Image.open(sweep_dir / "heatmap.png") as image:
        assert image.format == "PNG" and image.width > 200 and image.height > 150
    table = sweep["table"]
    best = table.loc[table[table["status"] == "finished"]["eval_miou"].idxmax()]
    cfg = load_config(sweep_dir / "best.yaml")
    assert (cfg.model.num_words, cfg.model.hspp_gamma) == (best["model.num_words"], best["model.hspp_gamma"])
    # the base config with the best values; the trials' resources and per-epoch evaluation are not kept
    assert cfg.synth.num_classes == 4 and cfg.ray.cpus_per_worker == 2 and cfg.train.eval_images == 0
    assert Path(cfg.out_dir) == sweep_dir / "best"


def test_space_file_errors_name_the_key(tmp_path):
    base = load_config("tiny")
    cases = {
        "params: {model.num_wrds: [1, 2]}": "model.num_wrds",
        "params: {model.num_words: [16, big]}": "model.num_words",
        "params: {model.hspp_gamma: {uniform: [4, 1]}}": "model.hspp_gamma",
        "params: {model.num_words: [16]}\nscheduler: {name: asha}": "train.eval_images",
        "params: {model.num_words: [16]}\nsearch: bayes": "search",
    }
    for text, key in cases.items():
        path = tmp_path / "space.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
            load_space(path, base)
        assert str(path) in str(err.value)


def test_voc_space_is_valid():
    base = load_config("voc")
    space = load_space(REPO / "tune" / "space_voc.yaml", base)
    assert space.params["model.num_words"] == [64, 128, 256, 512]
    assert space.params["model.hspp_gamma"] == [0, 1, 2, 4, 8]
    assert space.scheduler.name == "asha" and space.set["ray.use_gpu"] is True


def test_epoch_eval_reports_the_cam_miou_of_the_model_at_each_epoch_end(synth_root, tmp_path, one_thread):
    from vwe.checkpoint import LocalSession
    from vwe import evaluation
    from vwe.stages.train_cam import load_trained_classifier, train

    cfg = load_config("tiny", [f"data.root={synth_root}", f"out_dir={tmp_path}",
                                                       "train.eval_images=4"])
    session = LocalSession(tmp_path / "checkpoints")
    train(cfg, session)
    evaluated = [r for r in session.reports if "cam_miou" in r]
    assert [r["epoch"] for r in evaluated] == [1.0, 2.0]
    assert len(session.reports) == 6 and all(r["epoch"] % 1 for r in session.reports if "cam_miou" not in r)
    assert all(0 <= r["cam_miou"] <= r["cam_best_miou"] <= 1 and r["cam_best_threshold"] in cfg.cam.sweep
               for r in evaluated)
    # the last one is the final model's (recomputed from the exported weights)
    model, _ = load_trained_classifier(tmp_path / "classifier")
    again = evaluation.model_cam_scores(model, synth_root, cfg.data.cam_split, cfg.cam.background_score,
                                        cfg.cam.sweep, num_images=4, scales=cfg.cam.scales,
                                        batch_size=cfg.cam.batch_size)
    assert again["images"] == 4 and again["miou"] == pytest.approx(evaluated[-1]["cam_miou"], abs=1e-9)
