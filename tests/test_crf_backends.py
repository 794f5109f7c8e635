"""The CRF functions of vwe.crf and make-pseudo on both backends: the torch CRF (`crf.backend: torch`, batched on
an actor pool) gives pydensecrf's labels and scores, and resumes like the CPU tasks."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from vwe.cam import CamResult, save_cam, strided_size
from vwe.config import load_config
from vwe.crf import confident_pseudo_label, crf_labels, crf_probs, resolve_backend
from vwe.data.synth import generate
from vwe.data.voc import VOCDataset, read_image, read_mask
from vwe.run_folder import RunFolder
from vwe.stages.make_pseudo import make_pseudo_labels, score_pseudo_labels, uses_crf_actors

VOC = Path(__file__).parent / "data" / "voc-samples" / "VOC2012"
pytestmark = pytest.mark.usefixtures("one_thread")


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


def test_both_backends_give_the_same_labels_through_vwe_crf():
    rng = np.random.default_rng(0)
    for image_id in sorted(p.stem for p in (VOC / "JPEGImages").glob("*.jpg"))[:2]:
        image = read_image(VOC / "JPEGImages" / f"{image_id}.jpg")[::2, ::2].copy()
        mask = read_mask(VOC / "SegmentationClassAug" / f"{image_id}.png")[::2, ::2]
        classes = np.unique(mask[mask != 255])
        index = np.searchsorted(classes, np.where(mask == 255, classes[0], mask))
        noisy = np.where(rng.random(index.shape) < 0.1, rng.integers(len(classes), size=index.shape), index)
        reference = crf_labels(image, noisy, len(classes))
        assert agreement(crf_labels(image, noisy, len(classes), backend="torch"), reference) >= 0.995
        probs = rng.dirichlet(np.ones(21), size=image.shape[:2]).transpose(2, 0, 1).astype(np.float32)
        probs[classes, :, :] += 2 * (index[None] == np.arange(len(classes))[:, None, None])
        probs /= probs.sum(0, keepdims=True)
        assert agreement(crf_probs(image, probs, backend="torch").argmax(0), crf_probs(image, probs).argmax(0)) >= 0.995
        high_res = rng.random((2, *image.shape[:2])).astype(np.float32)
        keys = np.array([3, 11])
        assert agreement(confident_pseudo_label(image, high_res, keys, backend="torch"),
                         confident_pseudo_label(image, high_res, keys)) >= 0.995


def test_auto_is_torch_on_a_gpu_and_pydensecrf_on_the_cpu():
    cfg = load_config("tiny")
    assert resolve_backend(cfg.pseudo.crf, gpu=True) == "torch" and resolve_backend(cfg.pseudo.crf, gpu=False) == \
        "pydensecrf"
    assert not uses_crf_actors(cfg) and uses_crf_actors(cfg.with_overrides({"ray.use_gpu": True}))
    assert uses_crf_actors(cfg.with_overrides({"pseudo.crf.backend": "torch"}))
    assert not uses_crf_actors(cfg.with_overrides({"pseudo.crf.backend": "torch", "pseudo.crf.enabled": False}))


@pytest.fixture(scope="module")
def cams(tmp_path_factory):
    """A tiny synthetic benchmark and CAMs made from its masks (blurred, noisy), shared by two run folders."""
    base = tmp_path_factory.mktemp("backends")
    root = base / "VOC2012"
    generate(root, {"train_aug": 10, "train": 10, "val": 1, "test": 1}, 48, 64, num_classes=20, seed=0)
    voc = VOCDataset(root)
    labels = voc.image_labels()
    rng = np.random.default_rng(1)
    folders = [base / "pydensecrf", base / "torch"]
    for image_id in voc.split_ids("train_aug"):
        mask = read_mask(voc.mask_path(image_id))
        keys = np.flatnonzero(labels[image_id])
        maps = np.stack([(mask == key + 1).astype(np.float32) for key in keys])
        maps = np.clip(0.6 * maps + 0.3 * rng.random(maps.shape, dtype=np.float32), 0, 1)
        cam = maps[:, ::4, ::4][:, :strided_size(*mask.shape)[0], :strided_size(*mask.shape)[1]]
        for folder in folders:
            save_cam(RunFolder(folder).cam(image_id), CamResult(keys, cam, maps), np.float32)
    return root, folders


def test_make_pseudo_with_the_torch_crf_matches_pydensecrf_and_resumes(ray_local, cams):
    root, (reference_out, torch_out) = cams
    common = [f"data.root={root}", "data.train_split=train_aug", "data.cam_split=train", "pseudo.method=confident"]
    reference = load_config("tiny", [f"out_dir={reference_out}", *common])
    batched = load_config("tiny", [f"out_dir={torch_out}", *common, "pseudo.crf.backend=torch",
                                   "pseudo.batch_size=4"])
    assert make_pseudo_labels(reference, "train_aug")["processed"] == 10
    assert make_pseudo_labels(batched, "train_aug")["processed"] == 10
    voc = VOCDataset(root)
    ids = voc.split_ids("train_aug")
    for image_id in ids:
        a, b = (read_mask(RunFolder(out).pseudo_label(image_id)) for out in (reference_out, torch_out))
        assert agreement(a, b) >= 0.995, image_id
    first, second = score_pseudo_labels(reference, "train"), score_pseudo_labels(batched, "train")
    assert abs(first["miou"] - second["miou"]) <= 0.001
    # a killed run: one label gone, one cut short; the actor pool redoes those two only
    os.remove(RunFolder(torch_out).pseudo_label(ids[0]))
    path = Path(RunFolder(torch_out).pseudo_label(ids[1]))
    path.write_bytes(path.read_bytes()[:30])
    kept = os.stat(RunFolder(torch_out).pseudo_label(ids[2])).st_mtime_ns
    assert make_pseudo_labels(batched, "train_aug")["processed"] == 2
    assert os.stat(RunFolder(torch_out).pseudo_label(ids[2])).st_mtime_ns == kept
    assert agreement(read_mask(path), read_mask(RunFolder(reference_out).pseudo_label(ids[1]))) >= 0.995
