"""`vwe run` end to end on the tiny config: every stage's outputs, the report, skipping, and partial re-runs."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vwe.cli import main
from vwe.data.voc import VOCDataset

REPO = Path(__file__).resolve().parents[1]
STAGES = ["data", "train_cam", "make_cam", "eval_cam", "make_pseudo", "train_seg", "infer_seg", "eval_seg", "report"]


@pytest.fixture(scope="module")
def first_run(ray_local, tmp_path_factory):
    """`vwe run` as a user runs it: a fresh process with its own local Ray; its stderr is kept."""
    out = tmp_path_factory.mktemp("pipeline")
    done = subprocess.run([sys.executable, "-m", "vwe.cli", "run", "--config", "tiny", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stderr


@pytest.fixture(scope="module")
def run_dir(first_run):
    return first_run[0]


def test_a_run_prints_vwes_own_lines_only(first_run):
    """Default verbosity: no traceback, no Ray Train report dicts or checkpoint banners, no Ray Data progress
    tables; a line per stage start and end (k of n) and a progress total per data stage, from the start."""
    out, stderr = first_run
    lines = stderr.splitlines()
    assert len(lines) < 100, stderr
    assert "Traceback" not in stderr and "TrainingReport" not in stderr and "Checkpoint successfully" not in stderr
    assert "logging_progress" not in stderr and "Total Progress" not in stderr
    for number, name in enumerate(STAGES, 1):
        assert any(f"stage {number}/{len(STAGES)} {name}: running" in line for line in lines), name
        assert any(f"stage {number}/{len(STAGES)} {name}: done in" in line for line in lines), name
    voc = VOCDataset(out / "data" / "VOC2012")
    sizes = {split: len(voc.split_ids(split)) for split in ("train_aug", "train", "val")}
    # the first line of each data stage states its whole total, and its last one reaches it
    assert f"make-cam train_aug: {sizes['train_aug']} images to do" in stderr
    assert f"make-cam train_aug: {sizes['train_aug']}/{sizes['train_aug']} images in" in stderr
    assert f"make-pseudo train_aug (confident): {sizes['train_aug']} images to do" in stderr
    assert f"infer-seg val: {sizes['val']} images to do" in stderr
    assert f"eval-cam val: {sizes['val']} images to do" in stderr
    assert any(re.search(r"step 24/24 .* ETA 0:00", line) for line in lines)
    assert list((out / "logs").glob("train_cam-rank0-*.log")) and list((out / "logs").glob("make_cam-*.log"))


def stage_runs(out: Path) -> dict[str, bool]:
    return {name: not record["skipped"] for name, record in json.loads((out / "stages.json").read_text()).items()}


def test_every_stage_wrote_its_outputs(run_dir):
    voc = VOCDataset(run_dir / "data" / "VOC2012")
    train_aug, train, val = (voc.split_ids(s) for s in ("train_aug", "train", "val"))
    assert (run_dir / "classifier" / "model.pth").is_file() and (run_dir / "deeplab" / "model.pth").is_file()
    assert {p.stem for p in (run_dir / "cams").glob("*.npz")} == set(train_aug) | set(val)
    assert {p.stem for p in (run_dir / "pseudo_labels").glob("*.png")} == set(train_aug)
    assert {p.stem for p in (run_dir / "seg" / "val").glob("*.png")} == set(val)
    for report in ("eval_cam/train.json", "eval_cam/val.json", "eval_labels/pseudo_train.json", "eval_seg/val.json"):
        assert 0 <= json.loads((run_dir / report).read_text())["miou" if "seg" in report or "labels" in report
                                                               else "best_miou"] <= 1
    assert (run_dir / "report.html").is_file() and any((run_dir / "report").glob("*.png"))
    records = json.loads((run_dir / "stages.json").read_text())
    assert list(records) == STAGES and all(records[s]["seconds"] >= 0 for s in STAGES)
    assert records["train_cam"]["images_per_s"] > 0


def test_second_run_skips_everything(run_dir, capsys):
    assert main(["run", "--config", "tiny", "--out", str(run_dir)]) == 0
    assert not any(stage_runs(run_dir).values())
    out = capsys.readouterr().out
    assert "results (mIoU %)" in out and "final model" in out and f"report: {run_dir}" in out


# The re-run tests below pick late stages, so each re-runs a few seconds of the pipeline, not the trainings.
def test_deleting_one_stage_reruns_it_and_the_later_ones(run_dir):
    model_stamp = (run_dir / "deeplab" / "model.pth").stat().st_mtime_ns
    shutil.rmtree(run_dir / "seg")
    assert main(["run", "--config", "tiny", "--out", str(run_dir)]) == 0
    ran = stage_runs(run_dir)
    assert [s for s in STAGES if ran[s]] == STAGES[STAGES.index("infer_seg"):]
    assert (run_dir / "deeplab" / "model.pth").stat().st_mtime_ns == model_stamp
    assert len(list((run_dir / "seg" / "val").glob("*.png"))) == 32


def test_a_changed_config_field_reruns_its_stage_and_the_later_ones(run_dir, caplog):
    model_stamp = (run_dir / "deeplab" / "model.pth").stat().st_mtime_ns
    recorded = json.loads((run_dir / "stages.json").read_text())["infer_seg"]["fingerprint"]
    assert recorded["seg.test_scales"] == [1.0, 0.5]
    with caplog.at_level("INFO", logger="vwe.pipeline"):
        assert main(["run", "--config", "tiny", "--out", str(run_dir), "--set", "seg.test_scales=[1.0]"]) == 0
    ran = stage_runs(run_dir)
    assert [s for s in STAGES if ran[s]] == STAGES[STAGES.index("infer_seg"):]
    assert "stage infer_seg: seg.test_scales changed since its outputs were made: running it again" in caplog.text
    assert (run_dir / "deeplab" / "model.pth").stat().st_mtime_ns == model_stamp
    assert json.loads((run_dir / "stages.json").read_text())["infer_seg"]["fingerprint"]["seg.test_scales"] == [1.0]
    # the same config again: nothing is stale any more
    assert main(["run", "--config", "tiny", "--out", str(run_dir), "--set", "seg.test_scales=[1.0]"]) == 0
    assert not any(stage_runs(run_dir).values())


def test_a_stage_that_ran_makes_the_later_ones_stale_in_the_next_command_too(run_dir):
    """infer_seg forced alone (say the command was stopped right after it): the next full run redoes what follows,
    though those outputs look complete."""
    assert main(["run", "--config", "tiny", "--out", str(run_dir), "--force", "infer_seg", "--until", "infer_seg"]) == 0
    assert main(["run", "--config", "tiny", "--out", str(run_dir)]) == 0
    ran = stage_runs(run_dir)
    assert [s for s in STAGES if ran[s]] == STAGES[STAGES.index("eval_seg"):]
    records = json.loads((run_dir / "stages.json").read_text())
    assert all(records[s]["complete"] for s in STAGES)
    made = [records[s]["made"] for s in STAGES]
    assert made == sorted(made) and len(set(made)) == len(made)  # each stage ran after the ones before it
