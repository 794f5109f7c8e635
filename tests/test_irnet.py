"""IRNet's two stages on the synthetic benchmark (CPU, resnet-tiny): the boundary network learns boundaries from
confident labels, resumes and recovers from a worker fault to the same weights on Ray Train; make-sem-seg writes
labels equal to a direct computation and redoes only what is missing; `vwe run` with pseudo.method = irnet runs and
scores every stage."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vwe.affinity import affinity_labels, path_affinity, random_walk, walk_to_label
from vwe.cam import load_cam
from vwe.checkpoint import LocalSession
from vwe.config import Config, load_config
from vwe.data.synth import generate
from vwe.data.voc import IGNORE, VOCDataset, read_image, read_mask, write_mask
from vwe.errors import DataError
from vwe.models.irnet import build_boundary_net
from vwe.ray.train import fit
from vwe.run_folder import RunFolder
from vwe.stages import make_sem_seg, train_irn

CLASSES = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A synthetic VOC folder whose "confident labels" are the ground truth with a 255 band on every boundary."""
    root = tmp_path_factory.mktemp("irn") / "VOC2012"
    generate(root, {"train_aug": 32, "train": 8, "val": 8, "test": 2}, 48, 64, num_classes=CLASSES, seed=0)
    return root


def confident_labels(root: Path, folder: Path) -> None:
    voc = VOCDataset(root)
    folder.mkdir(parents=True, exist_ok=True)
    for image_id in voc.split_ids("train_aug"):
        mask = read_mask(voc.mask_path(image_id))
        padded = np.pad(mask, 1, mode="edge")
        boundary = np.zeros(mask.shape, bool)
        for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
            boundary |= padded[1 + dy:1 + dy + mask.shape[0], 1 + dx:1 + dx + mask.shape[1]] != mask
        write_mask(folder / f"{image_id}.png", np.where(boundary, IGNORE, mask).astype(np.uint8))


def irn_config(root: Path, out: Path, *overrides: str) -> Config:
    confident_labels(root, out / "pseudo_labels")
    return load_config(None, [
        f"out_dir={out}", f"data.root={root}", f"data.num_classes={CLASSES}", "irn.backbone=resnet-tiny",
        "irn.batch_size=8", "irn.epochs=1", "irn.crop_size=48", "irn.train_radius=5", "irn.loader_workers=0",
        "irn.log_every=1", "irn.checkpoint_every=2", "ray.num_workers=1", *overrides])


def test_the_affinity_dataset_crops_image_and_labels_alike(data, tmp_path):
    cfg = irn_config(data, tmp_path, "irn.crop_size=64", "irn.scale_range=[1.0, 1.0]", "irn.flip=false")
    items = train_irn.dataset(cfg)
    item = items[0]
    assert item["image"].shape == (3, 64, 64) and item["label"].shape == (16, 16) and item["label"].dtype == torch.int64
    label = read_mask(RunFolder.of(cfg).pseudo_label(item["id"]))  # 48 x 64: 16 rows of padding
    canvas = np.full((64, 64), IGNORE)
    rows = (item["image"][0] != 0).any(dim=1).nonzero()[:, 0]  # the padded rows are 0 (the mean) in every channel
    top = int(rows.min())
    canvas[top:top + 48] = label
    np.testing.assert_array_equal(item["label"].numpy(), canvas[2::4, 2::4])
    again = train_irn.dataset(cfg)
    assert torch.equal(again[0]["image"], item["image"])


def pair_affinities(model: torch.nn.Module, root: Path, radius: int) -> tuple[float, float]:
    """Mean affinity of the val images' pairs of equal and of different ground-truth labels."""
    voc = VOCDataset(root)
    same, different = [], []
    for image_id in voc.split_ids("val"):
        image, mask = read_image(voc.image_path(image_id)), read_mask(voc.mask_path(image_id))
        edge, = make_sem_seg.edge_maps(model, [image], torch.device("cpu"))
        affinity = path_affinity(edge[None], radius)
        background, foreground, negative = affinity_labels(torch.from_numpy(mask[2::4, 2::4])[None], radius)
        same.append(affinity[background | foreground].mean().item())
        different.append(affinity[negative].mean().item())
    return float(np.mean(same)), float(np.mean(different))


def test_the_boundary_network_learns_affinities_and_only_its_side_outputs_change(data, tmp_path, one_thread):
    cfg = irn_config(data, tmp_path, "irn.epochs=15", "irn.lr=0.5", "irn.momentum=0.9", "irn.log_every=4",
                     "irn.checkpoint_every=1000").resolved()
    torch.manual_seed(cfg.irn.seed)
    untrained = build_boundary_net(cfg.irn)
    before = {k: v.clone() for k, v in untrained.state_dict().items()}
    result = train_irn.train(cfg, LocalSession(tmp_path / "checkpoints"))
    losses = [report["loss"] for report in result["history"]]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:2]), losses
    model, _ = train_irn.load_trained_irn(RunFolder.of(cfg).irn)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in after if k.startswith("backbone."))
    assert not all(torch.equal(before[k], after[k]) for k in after if k.startswith(("sides.", "fuse.")))
    # on images it never saw, pairs within one region have a higher affinity than pairs across regions
    same, different = pair_affinities(model, data, cfg.irn.train_radius)
    same_before, different_before = pair_affinities(untrained.eval(), data, cfg.irn.train_radius)
    assert same - different > 0.15 and same - different > same_before - different_before + 0.1, \
        (same, different, same_before, different_before)


def test_train_irn_resumes_and_recovers_from_a_fault_to_the_same_weights(ray_local, data, tmp_path, one_thread):
    straight = train_irn.train(irn_config(data, tmp_path / "a").resolved(), LocalSession(tmp_path / "a" / "ckpt"))
    assert straight["step"] == 4
    cfg = irn_config(data, tmp_path / "b")
    fault = {"step": 3, "rank": 0, "marker": str(tmp_path / "fault")}
    result = fit(cfg, train_irn.NAME, train_irn.train, fault=fault)
    assert Path(fault["marker"]).exists() and result["step"] == 4 and result["resumed_from"] == 2
    a = torch.load(tmp_path / "a" / "irn" / "model.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "irn" / "model.pth", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_irn_without_confident_labels_names_the_command(data, tmp_path):
    cfg = irn_config(data, tmp_path)
    shutil.rmtree(tmp_path / "pseudo_labels")
    with pytest.raises(DataError, match="vwe make-pseudo"):
        train_irn.check_inputs(cfg)


@pytest.fixture(scope="module")
def irnet_run(coco_irnet_run):
    """The shared tiny run with `pseudo.method=irnet` (on the synthetic benchmark in COCO's format, whose training
    split is `train`)."""
    return coco_irnet_run


def test_a_tiny_run_with_irnet_runs_and_scores_every_stage(irnet_run):
    run = RunFolder.of(irnet_run)
    records = json.loads(Path(run.stages).read_text())
    assert list(records) == ["data", "train_cam", "make_cam", "eval_cam", "make_pseudo", "train_irn", "make_sem_seg",
                             "train_seg", "infer_seg", "eval_seg", "report"]
    assert all(not record["skipped"] for record in records.values())
    voc = VOCDataset(irnet_run.data.root)
    assert {p.stem for p in Path(run.sem_seg_labels).glob("*.png")} == set(voc.split_ids("train"))
    scores = json.loads((Path(run.sem_seg_label_scores) / "train.json").read_text())
    assert scores["images"] == len(voc.split_ids("train")) and 0 <= scores["miou"] <= 1
    assert records["make_sem_seg"]["result"]["miou"] == scores["miou"]
    for name in ("eval_cam/train.json", "eval_labels/pseudo_train.json", "eval_seg/val.json"):
        assert 0 <= json.loads((Path(run.root) / name).read_text())["miou"] <= 1
    # DeepLab trained on IRNet's labels, not on the confident ones
    deeplab_cfg = load_config(Path(run.deeplab) / "config.yaml")
    assert deeplab_cfg.pseudo.method == "irnet"
    assert "IRNet labels" in Path(run.report).read_text()


def test_make_sem_seg_labels_equal_the_direct_walk(irnet_run):
    cfg, run = irnet_run, RunFolder.of(irnet_run)
    model, _ = train_irn.load_trained_irn(run.irn)
    voc = VOCDataset(cfg.data.root)
    for image_id in voc.split_ids("train")[:4]:
        image = read_image(voc.image_path(image_id))
        cam = load_cam(run.cam(image_id))
        edge, = make_sem_seg.edge_maps(model, [image], torch.device("cpu"))
        walked, = random_walk([torch.from_numpy(cam.cam)], [edge], cfg.irn.radius, cfg.irn.beta, cfg.irn.exp_times)
        expected = walk_to_label(walked, cam.keys, image.shape[:2], cfg.irn.background_score)
        np.testing.assert_array_equal(read_mask(run.sem_seg_label(image_id)), expected)


def test_make_sem_seg_redoes_only_the_missing_labels(irnet_run):
    cfg, run = irnet_run, RunFolder.of(irnet_run)
    ids = VOCDataset(cfg.data.root).split_ids("train")
    os.remove(run.sem_seg_label(ids[0]))
    Path(run.sem_seg_label(ids[1])).write_bytes(Path(run.sem_seg_label(ids[1])).read_bytes()[:40])  # a killed write
    kept = {i: os.stat(run.sem_seg_label(i)).st_mtime_ns for i in ids[2:]}
    result = make_sem_seg.make_sem_seg_labels(cfg)
    assert (result["processed"], result["already_done"]) == (2, len(ids) - 2)
    assert {i: os.stat(run.sem_seg_label(i)).st_mtime_ns for i in ids[2:]} == kept
    image = read_image(VOCDataset(cfg.data.root).image_path(ids[1]))
    assert read_mask(run.sem_seg_label(ids[1])).shape == image.shape[:2]


def test_make_sem_seg_without_a_trained_network_names_the_command(irnet_run, tmp_path):
    cfg = irnet_run.with_overrides({"out_dir": str(tmp_path)})
    for name in ("cams",):
        shutil.copytree(Path(irnet_run.out_dir) / name, tmp_path / name)
    with pytest.raises(DataError, match="vwe train-irn"):
        make_sem_seg.make_sem_seg_labels(cfg)
