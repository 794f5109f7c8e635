"""make-cam on Ray Data: outputs equal the reference CAM function, re-runs resume, bad images are named."""
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from vwe.cam import load_cam, multiscale_cam
from vwe.config import load_config
from vwe.data.synth import generate
from vwe.data.voc import VOCDataset, read_image
from vwe.errors import DataError
from vwe.models import build_classifier
from vwe.ray.data import run_make_cams
from vwe.stages.make_cams import cam_path
from vwe.stages.train_classifier import export_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def run(tmp_path):
    """A synthetic dataset and a fixed-weight tiny classifier exported as stage 1 would."""
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"out_dir={tmp_path}"]).resolved()
    generate(cfg.data.root, {"train_aug": 12, "train": 12, "val": 2, "test": 1}, 48, 64, seed=3)
    torch.manual_seed(0)
    model = build_classifier(cfg).eval()
    export_model(model, cfg, tmp_path / "classifier")
    return cfg, model


def test_pipeline_cams_equal_direct_call(ray_local, run):
    cfg, model = run
    summary = run_make_cams(cfg, "train")
    assert summary["processed"] == 12 and summary["bad"] == 0
    voc = VOCDataset(cfg.data.root)
    labels = voc.image_labels()
    for image_id in voc.split_ids("train"):
        expected = multiscale_cam(model, read_image(voc.image_path(image_id)), labels[image_id], cfg.cam.scales)
        saved = load_cam(cam_path(cfg.out_dir, image_id))
        np.testing.assert_array_equal(saved.keys, expected.keys)
        np.testing.assert_allclose(saved.high_res, expected.high_res, atol=2e-3)  # float16 storage
        np.testing.assert_allclose(saved.cam, expected.cam, atol=2e-3)
    manifest = pq.read_table(Path(cfg.out_dir) / "cams" / "manifest.parquet").to_pylist()
    assert sorted(row["id"] for row in manifest) == sorted(voc.split_ids("train"))


def test_rerun_redoes_only_deleted_outputs(ray_local, run):
    cfg, _ = run
    run_make_cams(cfg, "train")
    ids = VOCDataset(cfg.data.root).split_ids("train")
    deleted, kept = ids[::2], ids[1::2]
    for image_id in deleted:
        cam_path(cfg.out_dir, image_id).unlink()
    cam_path(cfg.out_dir, kept[0]).write_bytes(b"truncated")  # an interrupted write counts as missing
    stamps = {i: cam_path(cfg.out_dir, i).stat().st_mtime_ns for i in kept[1:]}
    summary = run_make_cams(cfg, "train")
    assert summary["processed"] == len(deleted) + 1 and summary["already_done"] == len(kept) - 1
    assert all(cam_path(cfg.out_dir, i).stat().st_mtime_ns == stamp for i, stamp in stamps.items())
    load_cam(cam_path(cfg.out_dir, kept[0]))


def test_corrupt_image_is_reported_by_id_and_file(ray_local, run):
    cfg, _ = run
    voc = VOCDataset(cfg.data.root)
    bad_id = voc.split_ids("train")[4]
    voc.image_path(bad_id).write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError) as err:
        run_make_cams(cfg, "train")
    assert bad_id in str(err.value) and str(voc.image_path(bad_id)) in str(err.value)
    assert not cam_path(cfg.out_dir, bad_id).exists()
    assert len(list((Path(cfg.out_dir) / "cams").glob("*.npz"))) == 11  # the others were saved
    summary = run_make_cams(cfg.with_overrides({"data.skip_bad": True}), "train")
    assert summary["bad"] == 1 and summary["processed"] == 0
    rows = {r["id"]: r for r in pq.read_table(Path(cfg.out_dir) / "cams" / "manifest.parquet").to_pylist()}
    assert str(voc.image_path(bad_id)) in rows[bad_id]["error"]
