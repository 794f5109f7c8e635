"""make-cam on Ray Data: outputs equal the reference CAM function, re-runs resume, bad images are named."""
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from vwe.cam import CamResult, load_cam, multiscale_cam, save_cam
from vwe.config import load_config
from vwe.data.synth import generate
from vwe.data.voc import VOCDataset, read_image
from vwe.errors import DataError
from vwe.models import build_classifier
from vwe.stages.make_cam import make_cams
from vwe.run_folder import RunFolder
from vwe.checkpoint import export_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def run(tmp_path):
    """A synthetic dataset and a fixed-weight tiny classifier exported as stage 1 would."""
    cfg = load_config("tiny", [f"out_dir={tmp_path}"]).resolved()
    generate(cfg.data.root, {"train_aug": 12, "train": 12, "val": 2, "test": 1}, 48, 64, seed=3)
    torch.manual_seed(0)
    model = build_classifier(cfg).eval()
    export_model(model, cfg, tmp_path / "classifier")
    return cfg, model


def test_pipeline_cams_equal_direct_call(ray_local, run):
    cfg, model = run
    summary = make_cams(cfg, "train")
    assert summary["processed"] == 12 and summary["bad"] == 0
    voc = VOCDataset(cfg.data.root)
    labels = voc.image_labels()
    for image_id in voc.split_ids("train"):
        expected = multiscale_cam(model, read_image(voc.image_path(image_id)), labels[image_id], cfg.cam.scales)
        saved = load_cam(RunFolder(cfg.out_dir).cam(image_id))
        np.testing.assert_array_equal(saved.keys, expected.keys)
        np.testing.assert_allclose(saved.high_res, expected.high_res, atol=2e-3)  # float16 storage
        np.testing.assert_allclose(saved.cam, expected.cam, atol=2e-3)
    manifest = pq.read_table(Path(cfg.out_dir) / "cams" / "manifest.parquet").to_pylist()
    assert sorted(row["id"] for row in manifest) == sorted(voc.split_ids("train"))


def test_rerun_redoes_only_deleted_outputs(ray_local, run):
    cfg, _ = run
    make_cams(cfg, "train")
    ids = VOCDataset(cfg.data.root).split_ids("train")
    deleted, kept = ids[::2], ids[1::2]
    for image_id in deleted:
        RunFolder(cfg.out_dir).cam(image_id).unlink()
    RunFolder(cfg.out_dir).cam(kept[0]).write_bytes(b"truncated")  # an interrupted write counts as missing
    stamps = {i: RunFolder(cfg.out_dir).cam(i).stat().st_mtime_ns for i in kept[1:]}
    summary = make_cams(cfg, "train")
    assert summary["processed"] == len(deleted) + 1 and summary["already_done"] == len(kept) - 1
    assert all(RunFolder(cfg.out_dir).cam(i).stat().st_mtime_ns == stamp for i, stamp in stamps.items())
    load_cam(RunFolder(cfg.out_dir).cam(kept[0]))


def test_a_cam_file_that_does_not_fit_its_image_is_redone(ray_local, run):
    """A valid npz with the wrong size or the wrong classes is not complete: make-cam computes it again."""
    cfg, _ = run
    make_cams(cfg, "train")
    ids = VOCDataset(cfg.data.root).split_ids("train")
    wrong_size, wrong_keys = RunFolder(cfg.out_dir).cam(ids[0]), RunFolder(cfg.out_dir).cam(ids[1])
    good = load_cam(wrong_size)
    small = good.high_res[:, :24, :32]
    save_cam(wrong_size, CamResult(good.keys, small[:, ::4, ::4].copy(), small.copy()))
    other = load_cam(wrong_keys)
    save_cam(wrong_keys, CamResult(other.keys[:0], other.cam[:0], other.high_res[:0]))
    assert load_cam(wrong_size).high_res.shape[1:] == (24, 32)  # readable, just not this image's
    summary = make_cams(cfg, "train")
    assert summary["processed"] == 2 and summary["already_done"] == len(ids) - 2
    assert load_cam(wrong_size).high_res.shape == good.high_res.shape
    np.testing.assert_array_equal(load_cam(wrong_keys).keys, other.keys)


def test_corrupt_image_is_reported_by_id_and_file(ray_local, run):
    cfg, _ = run
    voc = VOCDataset(cfg.data.root)
    bad_id = voc.split_ids("train")[4]
    voc.image_path(bad_id).write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError) as err:
        make_cams(cfg, "train")
    assert bad_id in str(err.value) and str(voc.image_path(bad_id)) in str(err.value)
    assert not RunFolder(cfg.out_dir).cam(bad_id).exists()
    assert len(list((Path(cfg.out_dir) / "cams").glob("*.npz"))) == 11  # the others were saved
    summary = make_cams(cfg.with_overrides({"data.skip_bad": True}), "train")
    assert summary["bad"] == 1 and summary["processed"] == 0
    rows = {r["id"]: r for r in pq.read_table(Path(cfg.out_dir) / "cams" / "manifest.parquet").to_pylist()}
    assert str(voc.image_path(bad_id)) in rows[bad_id]["error"]


def test_eval_cam_matches_hand_computed_miou(ray_local, tmp_path):
    """Two crafted images, an ignore pixel, and a predicted class absent from the ground truth."""
    from vwe.cam import CamResult, save_cam
    from vwe.data.voc import write_mask
    from vwe.stages.eval_cam import evaluate_cams

    root = tmp_path / "VOC2012"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("a\nb\n")
    write_mask(root / "SegmentationClass" / "a.png", np.array([[0, 0, 1, 1], [0, 255, 1, 1]], np.uint8))
    write_mask(root / "SegmentationClass" / "b.png", np.zeros((2, 2), np.uint8))
    out = tmp_path / "run"
    aeroplane = np.array([[[0.1, 0.5, 0.7, 0.2], [0.0, 0.9, 0.8, 0.4]]], np.float32)
    person = np.array([[[0.5, 0.1], [0.1, 0.1]]], np.float32)
    save_cam(RunFolder(out).cam("a"), CamResult(np.array([0]), aeroplane[:, :1, :1], aeroplane), np.float32)
    save_cam(RunFolder(out).cam("b"), CamResult(np.array([14]), person[:, :1, :1], person), np.float32)
    cfg = load_config(None, [f"data.root={root}", f"out_dir={out}", "cam.sweep=[0.3, 0.75]",
                             "cam.background_score=0.75"])
    summary = evaluate_cams(cfg, "train")
    # t = 0.3: confusion bg->bg 5, bg->aeroplane 1, bg->person 1, aeroplane->bg 1, aeroplane->aeroplane 3
    #   IoU bg 5 / (7 + 6 - 5) = 0.625, aeroplane 3 / (4 + 4 - 3) = 0.6, person absent from GT -> not averaged
    # t = 0.75: bg->bg 7, aeroplane->bg 3, aeroplane->aeroplane 1: bg 7 / 10 = 0.7, aeroplane 1 / 4 = 0.25
    assert summary["sweep"]["miou"] == pytest.approx([0.6125, 0.475])
    # the headline is at the configured background score, the sweep's best beside it
    assert summary["background_score"] == 0.75 and summary["miou"] == pytest.approx(0.475)
    assert summary["iou"]["aeroplane"] == pytest.approx(0.25) and summary["iou"]["person"] is None
    assert summary["best_threshold"] == 0.3 and summary["best_miou"] == pytest.approx(0.6125)
    assert summary["best_iou"]["aeroplane"] == pytest.approx(0.6) and "optimistic" in summary["note"]
    assert summary["images"] == 2
    curve = (out / "eval_cam" / "train_curve.csv").read_text().splitlines()
    assert curve == ["threshold,mIoU", "0.3,61.3", "0.75,47.5"]
    header, fixed, best = (out / "eval_cam" / "train_classes.csv").read_text().splitlines()
    assert header.split(",")[:4] == ["", "background", "aeroplane", "bicycle"]
    assert fixed.split(",")[:4] == ["at 0.75", "70.0", "25.0", ""]
    assert best.split(",")[:4] == ["best 0.3 (optimistic)", "62.5", "60.0", ""]


@pytest.mark.parametrize("method", ["confident", "threshold"])
def test_pseudo_labels_are_valid_palette_pngs_and_resume(ray_local, run, method):
    from PIL import Image

    from vwe.data.voc import palette
    from vwe.stages.make_pseudo import make_pseudo_labels

    cfg, _ = run
    cfg = cfg.with_overrides({"pseudo.method": method})
    make_cams(cfg, "train_aug")
    summary = make_pseudo_labels(cfg, "train_aug")
    assert summary["processed"] == 12 and summary["bad"] == 0
    voc = VOCDataset(cfg.data.root)
    labels = voc.image_labels()
    for image_id in voc.split_ids("train_aug"):
        with Image.open(RunFolder(cfg.out_dir).pseudo_label(image_id)) as png:
            assert png.mode == "P" and png.getpalette()[:768] == palette()
            label = np.asarray(png)
        assert label.shape == read_image(voc.image_path(image_id)).shape[:2]
        allowed = {0, 255, *(np.flatnonzero(labels[image_id]) + 1)}  # only the image's own classes
        assert set(np.unique(label)) <= allowed
    assert make_pseudo_labels(cfg, "train_aug")["processed"] == 0


def test_stage_commands(ray_local, run, capsys):
    from vwe.cli import main

    cfg, _ = run
    config = Path(cfg.out_dir) / "config.yaml"
    cfg.dump(config)
    assert main(["make-cam", "--config", str(config), "--split", "train"]) == 0
    assert main(["eval-cam", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "best background threshold" in out and (Path(cfg.out_dir) / "eval_cam" / "train.json").is_file()
    assert main(["eval-cam", "--config", str(config), "--set", "cam.sweep=oops"]) == 2
    assert "cam.sweep" in capsys.readouterr().err


def test_a_dataset_of_the_first_classes_trains_and_makes_cams(ray_local, tmp_path):
    """data.num_classes 4 on a 4-class benchmark: 4-way image labels, classifier and CAM classes; a dataset with a
    later class is refused by name."""
    from vwe.checkpoint import LocalSession
    from vwe.stages.eval_cam import evaluate_cams
    from vwe.stages import train_cam

    cfg = load_config("tiny", [f"out_dir={tmp_path}", "data.num_classes=4",
                                                        "train.max_steps=2"]).resolved()
    generate(cfg.data.root, {"train_aug": 16, "train": 6, "val": 2, "test": 1}, 48, 64, num_classes=4, seed=0)
    result = train_cam.train(cfg, LocalSession(tmp_path / "checkpoints"))
    assert result["step"] == 2
    assert make_cams(cfg, "train")["processed"] == 6
    voc = VOCDataset(cfg.data.root)
    for image_id in voc.split_ids("train"):
        keys = load_cam(RunFolder(cfg.out_dir).cam(image_id)).keys
        assert keys.size and keys.max() < 4
    assert len(evaluate_cams(cfg, "train")["iou"]) == 5  # background and the 4 classes

    narrow = cfg.with_overrides({"data.num_classes": 2})
    with pytest.raises(DataError, match=r"beyond the first 2 \(data.num_classes\), e.g. \S+ \((car|bus|bird|boat)"):
        train_cam.train(narrow, LocalSession(tmp_path / "narrow"))


def test_the_cams_come_from_the_configured_epochs_weights(ray_local, tmp_path):
    """cam.classifier_epoch = 1: training keeps the weights after epoch 1 (those of a run stopped there), and
    make-cam uses them rather than the final ones."""
    from vwe.checkpoint import LocalSession
    from vwe.stages import train_cam

    cfg = load_config("tiny", [f"out_dir={tmp_path / 'run'}", f"data.root={tmp_path / 'VOC2012'}",
                               "synth.enabled=false", "cam.classifier_epoch=1"])
    generate(cfg.data.root, {"train_aug": 16, "train": 4, "val": 2, "test": 1}, 48, 64, seed=4)
    train_cam.train(cfg, LocalSession(tmp_path / "checkpoints"))
    stopped = cfg.with_overrides({"out_dir": str(tmp_path / "stopped"), "train.max_steps": 2})  # 2 steps per epoch
    train_cam.train(stopped, LocalSession(tmp_path / "stopped_checkpoints"))
    run = RunFolder(cfg.out_dir)
    epoch_1 = torch.load(Path(run.classifier_at(1)) / "model.pth", weights_only=True)
    final = torch.load(Path(run.classifier) / "model.pth", weights_only=True)
    after_two_steps = torch.load(Path(RunFolder(stopped.out_dir).classifier) / "model.pth", weights_only=True)
    assert all(torch.equal(epoch_1[k], after_two_steps[k]) for k in epoch_1)
    assert not all(torch.equal(epoch_1[k], final[k]) for k in epoch_1)
    assert train_cam.STAGE.is_complete(cfg)

    make_cams(cfg, "train")
    model, _ = train_cam.load_trained_classifier(run.classifier_at(1))
    voc = VOCDataset(cfg.data.root)
    image_id = voc.split_ids("train")[0]
    expected = multiscale_cam(model, read_image(voc.image_path(image_id)), voc.image_labels()[image_id],
                              cfg.cam.scales)
    np.testing.assert_allclose(load_cam(run.cam(image_id)).high_res, expected.high_res, atol=2e-3)
