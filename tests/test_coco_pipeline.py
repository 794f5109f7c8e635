"""COCO-2014 through the whole pipeline: the synthetic benchmark written in COCO's format, converted by the real
loader, and every stage run with an 80-class head."""
import json
from pathlib import Path

import pytest
import torch

from vwe.cli import main
from vwe.data.coco import COCO_CLASSES
from vwe.data.voc import CLASSES, VOCDataset
from vwe.run_folder import RunFolder
from vwe.stages.train_cam import load_trained_classifier
from vwe.stages.train_seg import load_trained_deeplab

STAGES = ["data", "train_cam", "make_cam", "eval_cam", "make_pseudo", "train_irn", "make_sem_seg", "train_seg",
          "infer_seg", "eval_seg", "report"]


@pytest.fixture(scope="module")
def coco_run(coco_irnet_run):
    """The shared tiny run on the synthetic benchmark in COCO's format (with IRNet's labels: every stage)."""
    return coco_irnet_run


def test_a_tiny_coco_run_trains_an_80_class_head_and_scores_every_stage(coco_run):
    run = RunFolder.of(coco_run)
    records = json.loads(Path(run.stages).read_text())
    assert list(records) == STAGES and all(not record["skipped"] for record in records.values())
    classifier, _ = load_trained_classifier(run.classifier)
    assert classifier.classifier.weight.shape[0] == 80
    deeplab, _ = load_trained_deeplab(run.deeplab)
    assert deeplab(torch.zeros(1, 3, 64, 64)).shape[1] == 81
    for name in ("eval_cam/train.json", "eval_cam/val.json", "eval_labels/pseudo_train.json",
                 "eval_sem_seg/train.json", "eval_seg/val.json"):
        scores = json.loads((Path(run.root) / name).read_text())
        assert 0 <= scores["miou"] <= 1
        # per-class scores under COCO's names; the benchmark's objects are VOC's classes under their COCO names
        assert set(scores["iou"]) <= {"background", *COCO_CLASSES} and "couch" in scores["iou"]
        assert not set(scores["iou"]) & (set(CLASSES) - set(COCO_CLASSES))
    assert "potted plant" in Path(run.report).read_text()


def test_the_converted_folder_is_what_the_stages_read(coco_run):
    voc = VOCDataset(coco_run.data.root)
    assert voc.classes == COCO_CLASSES and voc.splits() == ["train", "val"]
    skipped = json.loads((Path(coco_run.data.root) / "vwe_coco_skipped.json").read_text())
    # the synthetic set leaves every 25th image without annotations: listed, and in no split
    assert {split: len(ids) for split, ids in skipped.items()} == {"train2014": 3, "val2014": 1}
    assert not set(skipped["train2014"]) & set(voc.split_ids("train"))
    labels = voc.image_labels(num_classes=80)
    assert all(len(vector) == 80 for vector in labels.values()) and len(labels) == 93 + 31


def test_prepare_coco_command_converts_and_names_a_bad_file(coco_run, tmp_path, capsys):
    out = tmp_path / "converted"
    args = ["data", "prepare-coco", "--root", coco_run.data.coco_root, "--out", str(out), "--link", "copy",
            "--workers", "1"]
    assert main(args) == 0
    assert "93 masks written" in capsys.readouterr().out
    assert main(args) == 0
    assert "0 masks written, 93 kept" in capsys.readouterr().out
    bad = tmp_path / "bad"
    (bad / "annotations").mkdir(parents=True)
    (bad / "annotations" / "instances_train2014.json").write_text('{"images": [')
    assert main(["data", "prepare-coco", "--root", str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "instances_train2014.json" in err and "line 1" in err, err
