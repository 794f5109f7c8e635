"""VOC loader, validation, split building, label cache, transforms and datasets, on the five genuine VOC files."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vwe.data
from vwe.data import voc
from vwe.data.datasets import ClassificationDataset
from vwe.data.transforms import IMAGENET_MEAN, IMAGENET_STD, InferenceTransform, RandomResizeLong, TrainTransform
from vwe.data.voc import CLASSES, VOCDataset, palette, read_image, read_mask, write_mask
from vwe.errors import DataError

# Five genuine VOC 2012 images with their masks, kept in the repository; provenance and sha256 in SOURCE.md
SAMPLES = Path(__file__).resolve().parent / "data" / "voc-samples" / "VOC2012"
# Mask labels present per genuine file (SOURCE.md), background and 255 left out.
GENUINE = {"2007_000129": {2, 15}, "2007_000346": {5, 15}, "2011_000003": {5, 15}, "2011_000006": {9, 15, 18},
           "2011_000025": {6, 7}}
TRAIN = ["2011_000003", "2011_000006", "2011_000025"]
VAL = ["2007_000129", "2007_000346"]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A writable copy of the genuine samples with train/val lists (the tests never write into tests/data)."""
    root = tmp_path / "VOC2012"
    shutil.copytree(SAMPLES, root, copy_function=shutil.copyfile)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(TRAIN) + "\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(VAL) + "\n")
    return root


def test_the_samples_are_the_files_source_md_lists():
    """Every file in the samples folder is listed in SOURCE.md with its sha256, and matches it byte for byte."""
    import hashlib
    import re

    source = (SAMPLES.parent / "SOURCE.md").read_text()
    listed = dict(re.findall(r"^\| (VOC2012/\S+) \|.*\| ([0-9a-f]{64}) \|$", source, flags=re.M))
    present = {str(p.relative_to(SAMPLES.parent)) for p in SAMPLES.rglob("*") if p.is_file()}
    assert present == set(listed) and len(present) == 11
    for name, digest in listed.items():
        assert hashlib.sha256((SAMPLES.parent / name).read_bytes()).hexdigest() == digest, name


def test_palette_is_the_voc_colour_map():
    colours = np.array(palette()).reshape(256, 3)
    assert colours[1].tolist() == [128, 0, 0] and colours[15].tolist() == [192, 128, 128]
    assert colours[255].tolist() == [224, 224, 192] and colours[0].tolist() == [0, 0, 0]
    assert palette() == Image.open(SAMPLES / "SegmentationClass" / "2007_000129.png").getpalette()


@pytest.mark.parametrize("image_id", sorted(GENUINE))
def test_labels_of_genuine_masks(image_id):
    labels = vwe.data.image_labels_from_mask(SAMPLES / "SegmentationClassAug" / f"{image_id}.png")
    assert labels.dtype == np.float32 and labels.shape == (20,)
    assert set(np.flatnonzero(labels) + 1) == GENUINE[image_id]
    assert labels.sum() == len(GENUINE[image_id])


def test_image_2011_000006_is_chair_person_sofa():
    labels = vwe.data.image_labels_from_mask(SAMPLES / "SegmentationClassAug" / "2011_000006.png")
    assert [CLASSES[i] for i in np.flatnonzero(labels)] == ["chair", "person", "sofa"]


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("Segmentation*/*.png")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_genuine_mask_round_trips_byte_exactly(path, tmp_path):
    original = read_mask(path)
    assert original.dtype == np.uint8 and original.ndim == 2  # raw indices, not RGB
    write_mask(tmp_path / "a.png", original)
    first = (tmp_path / "a.png").read_bytes()
    rewritten = Image.open(io.BytesIO(first))
    assert rewritten.mode == "P" and rewritten.getpalette() == Image.open(path).getpalette()
    assert np.array_equal(read_mask(tmp_path / "a.png"), original)
    write_mask(tmp_path / "b.png", read_mask(tmp_path / "a.png"))
    assert (tmp_path / "b.png").read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # no temporary files left


def test_write_mask_rejects_non_index_arrays(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_mask(tmp_path / "m.png", np.zeros((4, 4), np.int64))
    assert not (tmp_path / "m.png").exists()


def test_read_image_and_grayscale_masks(tmp_path):
    image = read_image(SAMPLES / "JPEGImages" / "2007_000129.jpg")
    assert image.shape == (500, 334, 3) and image.dtype == np.uint8
    gray = np.array([[0, 15], [255, 3]], np.uint8)  # SegmentationClassAug is often distributed as 'L' PNGs
    Image.fromarray(gray).save(tmp_path / "g.png")
    assert np.array_equal(read_mask(tmp_path / "g.png"), gray)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="rgb.png.*mode RGB"):
        read_mask(tmp_path / "rgb.png")


def test_labels_from_annotation(tmp_path):
    xml = tmp_path / "a.xml"
    xml.write_text("<annotation><object><name>person</name><part><name>head</name></part></object>"
                   "<object><name> chair </name></object><object><name>person</name></object></annotation>")
    assert np.flatnonzero(voc.labels_from_annotation(xml)).tolist() == [CLASSES.index("chair"),
                                                                         CLASSES.index("person")]
    xml.write_text("<annotation><object><name>unicorn</name></object></annotation>")
    with pytest.raises(DataError, match=f"{xml}.*unicorn"):
        voc.labels_from_annotation(xml)
    xml.write_text("<annotation><object>")
    with pytest.raises(DataError, match=f"{xml}.*cannot parse"):
        voc.labels_from_annotation(xml)


def test_paths_and_split_ids(root):
    dataset = VOCDataset(root)
    assert dataset.split_ids("train") == TRAIN  # strings, underscores kept
    (root / "ImageSets" / "Segmentation" / "aug.txt").write_text(
        "/JPEGImages/2011_000003.jpg /SegmentationClassAug/2011_000003.png\n\n")
    assert dataset.split_ids("aug") == ["2011_000003"]
    assert dataset.image_path("2011_000006") == root / "JPEGImages" / "2011_000006.jpg"
    assert dataset.mask_path("2007_000129") == root / "SegmentationClassAug" / "2007_000129.png"
    (root / "SegmentationClassAug" / "2007_000129.png").unlink()
    assert dataset.mask_path("2007_000129") == root / "SegmentationClass" / "2007_000129.png"
    assert dataset.mask_path("2099_000001") is None


def test_check_accepts_the_genuine_files(root):
    report = VOCDataset(root).check()
    assert report.counts == {"train": 3, "val": 2}
    assert report.bad == [] and report.report_path is None
    assert any("1,464" in note for note in report.notes) and any("train_aug" in note for note in report.notes)


def _remove_folder(root: Path) -> Path:
    shutil.rmtree(root / "JPEGImages")
    return root / "JPEGImages"


def _remove_jpeg(root: Path) -> Path:
    (root / "JPEGImages" / "2011_000006.jpg").unlink()
    return root / "JPEGImages" / "2011_000006.jpg"


def _truncate_jpeg(root: Path) -> Path:
    path = root / "JPEGImages" / "2011_000006.jpg"
    path.write_bytes(path.read_bytes()[:5000])
    return path


def _garbage_png(root: Path) -> Path:
    path = root / "SegmentationClassAug" / "2011_000025.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 20)
    return path


def _resize_mask(root: Path) -> Path:
    path = root / "SegmentationClassAug" / "2011_000003.png"
    write_mask(path, read_mask(path)[:-10])
    return path


def _label_42(root: Path) -> Path:
    path = root / "SegmentationClassAug" / "2007_000346.png"
    mask = read_mask(path)
    mask[:5, :5] = 42
    write_mask(path, mask)
    return path


def _empty_split(root: Path) -> Path:
    path = root / "ImageSets" / "Segmentation" / "val.txt"
    path.write_text("\n")
    return path


def _missing_mask(root: Path) -> Path:
    (root / "SegmentationClassAug" / "2007_000346.png").unlink()
    return root / "SegmentationClass" / "2007_000346.png"


@pytest.mark.parametrize("breaker, problem", [
    (_remove_folder, "folder missing"), (_remove_jpeg, "image file missing"), (_truncate_jpeg, "cannot decode image"),
    (_garbage_png, "cannot decode mask"), (_resize_mask, "differs from the image size"),
    (_label_42, r"label values \[42\]"), (_empty_split, "split list is empty"), (_missing_mask, "mask missing"),
])
def test_check_names_the_bad_file(root, breaker, problem):
    bad_file = breaker(root)
    with pytest.raises(DataError, match=problem) as err:
        VOCDataset(root).check()
    assert str(err.value).startswith(str(bad_file))


def test_missing_root_is_named(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'nowhere'}: dataset folder not found"):
        VOCDataset(tmp_path / "nowhere")


def test_skip_bad_records_the_ids_and_goes_on(root, tmp_path):
    jpeg, mask = _remove_jpeg(root), _label_42(root)
    report = VOCDataset(root).check(skip_bad=True, report_dir=tmp_path / "reports")
    assert {bad.image_id for bad in report.bad} == {"2011_000006", "2007_000346"}
    assert report.counts == {"train": 3, "val": 2}
    saved = json.loads(report.report_path.read_text())
    assert report.report_path.parent == tmp_path / "reports"
    assert {(b["id"], b["file"]) for b in saved["bad"]} == {("2011_000006", str(jpeg)), ("2007_000346", str(mask))}
    assert all(b["problem"] for b in saved["bad"])


def test_image_labels_are_cached_and_not_recomputed(root, monkeypatch):
    dataset = VOCDataset(root)
    labels = dataset.image_labels()
    assert {i: set(np.flatnonzero(v) + 1) for i, v in labels.items()} == GENUINE
    cache = root / voc.labels_cache("xml")
    stamp = cache.stat().st_mtime_ns

    calls = []
    original = voc.image_labels_from_mask
    monkeypatch.setattr(voc, "image_labels_from_mask", lambda path: calls.append(Path(path).stem) or original(path))
    again = VOCDataset(root).image_labels()
    assert calls == [] and cache.stat().st_mtime_ns == stamp
    assert all(np.array_equal(again[i], labels[i]) for i in GENUINE)

    # A split list that grows: only the new id is computed, from its annotation XML since it has no mask.
    shutil.copyfile(root / "JPEGImages" / "2011_000003.jpg", root / "JPEGImages" / "2099_000001.jpg")
    (root / "Annotations").mkdir()
    (root / "Annotations" / "2099_000001.xml").write_text("<annotation><object><name>boat</name></object></annotation>")
    (root / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("2099_000001\n2011_000003\n")
    grown = VOCDataset(root).image_labels()
    assert calls == [] and np.flatnonzero(grown["2099_000001"]).tolist() == [CLASSES.index("boat")]
    assert cache.stat().st_mtime_ns != stamp and "2099_000001" in json.loads(cache.read_text())["labels"]


def test_prepare_without_sbd_uses_the_aug_masks(root):
    counts = VOCDataset(root).prepare()
    # Aug masks exist for all five ids; minus val leaves the train ids.
    assert (root / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split() == sorted(TRAIN)
    assert counts == {"train": 3, "val": 2, "train_aug": 3}
    assert (root / voc.labels_cache("xml")).is_file() and (root / voc.labels_cache("masks")).is_file()


def test_prepare_with_sbd(root, tmp_path):
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    sbd.mkdir(parents=True)
    (sbd / "train.txt").write_text("2008_000002\n2007_000129\n")  # 2007_000129 is VOC val: must be left out
    (sbd / "val.txt").write_text("2008_000003\n")
    VOCDataset(root).prepare(sbd_root=sbd.parent)
    assert (root / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split() == sorted(
        TRAIN + ["2008_000002", "2008_000003"])
    report = VOCDataset(root).check(sbd_root=sbd, skip_bad=True)
    assert "SBD lists: train 2, val 1" in report.notes
    # SBD ids whose JPEGs are not in this root
    assert {bad.image_id for bad in report.bad} == {"2008_000002", "2008_000003"}
    with pytest.raises(DataError, match=f"{tmp_path / 'nosbd'}: SBD folder not found"):
        VOCDataset(root).check(sbd_root=tmp_path / "nosbd")
    (sbd / "val.txt").unlink()
    with pytest.raises(DataError, match=f"{sbd / 'val.txt'}: split list missing"):
        VOCDataset(root).prepare(sbd_root=sbd)


def test_check_needs_labels_for_train_aug_ids(root):
    splits = root / "ImageSets" / "Segmentation"
    for split in ("train", "val"):  # the one id with an official SegmentationClass mask
        (splits / f"{split}.txt").write_text("2007_000129\n")
    (splits / "train_aug.txt").write_text("2011_000003\n")
    shutil.rmtree(root / "SegmentationClassAug")
    with pytest.raises(DataError, match="no mask and no annotation") as err:
        VOCDataset(root).check()
    assert str(err.value).startswith(str(root / "Annotations" / "2011_000003.xml"))


def test_normalisation_and_inference_transform():
    image = np.array([[[0, 128, 255]]], np.uint8)
    expected = (np.array([0, 128, 255]) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    out = InferenceTransform()(image)
    assert out.shape == (3, 1, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0], expected, rtol=1e-5)


def test_resize_long_side_in_range():
    rng = np.random.default_rng(0)
    image = np.zeros((300, 200, 3), np.uint8)
    sides = set()
    for _ in range(50):
        out = RandomResizeLong(low=40, high=60)(image, rng)
        assert 40 <= out.shape[0] <= 60 and out.shape[1] == round(out.shape[0] * 200 / 300)
        sides.add(out.shape[0])
    assert len(sides) > 5


def test_train_transform_pads_small_images_with_zero():
    rng = np.random.default_rng(0)
    image = np.full((20, 30, 3), 200, np.uint8)
    transform = TrainTransform(crop_size=64, resize_long=(30, 30), flip=True)
    offsets = set()
    for _ in range(20):
        out = transform(image, rng)
        assert out.shape == (3, 64, 64) and out.dtype == np.float32
        filled = np.any(out != 0, axis=0)
        ys, xs = np.nonzero(filled)
        assert filled.sum() == 20 * 30 and np.ptp(ys) == 19 and np.ptp(xs) == 29  # the image, whole, in one block
        offsets.add((ys.min(), xs.min()))
    assert len(offsets) > 1  # placed at a random offset


def test_train_transform_crops_large_images_and_is_deterministic():
    image = np.random.default_rng(1).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    transform = TrainTransform(crop_size=48, resize_long=(100, 120))
    first = transform(image, np.random.default_rng(7))
    assert first.shape == (3, 48, 48) and np.all(np.any(first != 0, axis=0))  # no padding needed
    assert np.array_equal(first, transform(image, np.random.default_rng(7)))
    assert not np.array_equal(first, transform(image, np.random.default_rng(8)))


def test_train_transform_flips():
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, :4] = 255
    transform = TrainTransform(crop_size=8, resize_long=(8, 8), flip=True)
    lefts = {bool(transform(image, np.random.default_rng(s))[0, 0, 0] > 0) for s in range(20)}
    assert lefts == {True, False}
    no_flip = TrainTransform(crop_size=8, resize_long=(8, 8), flip=False)
    assert {bool(no_flip(image, np.random.default_rng(s))[0, 0, 0] > 0) for s in range(20)} == {True}


def test_classification_dataset(root):
    dataset = ClassificationDataset(root, "train", crop_size=32, resize_long=(24, 40), flip=True, seed=3)
    item = dataset[1]
    assert item["id"] == "2011_000006"
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["labels"].dtype == torch.float32 and set(item["labels"].nonzero().flatten().tolist()) == {8, 14, 17}
    assert torch.equal(dataset[1]["image"], item["image"])  # seeded: same item, same augmentation
    dataset.set_epoch(1)
    assert not torch.equal(dataset[1]["image"], item["image"])
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=3)))
    assert batch["image"].shape == (3, 3, 32, 32) and batch["labels"].shape == (3, 20)
    assert len(ClassificationDataset(root, "train", crop_size=32, exclude=["2011_000003"])) == 2


def test_a_split_reads_as_images_masks_and_labels(root):
    (root / "ImageSets" / "Segmentation" / "test.txt").write_text("2099_000001\n")
    shutil.copyfile(root / "JPEGImages" / "2011_000003.jpg", root / "JPEGImages" / "2099_000001.jpg")
    dataset = VOCDataset(root)
    image_id = dataset.split_ids("val")[0]
    image, mask = read_image(dataset.image_path(image_id)), read_mask(dataset.mask_path(image_id))
    assert image_id == "2007_000129" and image.shape == (500, 334, 3) and image.dtype == np.uint8
    assert mask.shape == (500, 334) and set(np.unique(mask)) == {0, 2, 15, 255}
    assert set(np.flatnonzero(dataset.image_labels()[image_id]) + 1) == {2, 15}
    test_id = dataset.split_ids("test")[0]
    assert dataset.mask_path(test_id) is None and test_id not in dataset.image_labels()


def test_labels_come_from_the_xml_or_the_masks_and_the_check_counts_disagreements(root):
    (root / "Annotations").mkdir()
    # 2011_000006's mask holds chair, person and sofa (9, 15, 18); its annotation here says cat and person
    (root / "Annotations" / "2011_000006.xml").write_text(
        "<annotation><object><name>cat</name></object><object><name>person</name></object></annotation>")
    (root / "Annotations" / "2011_000025.xml").write_text(  # agrees with its mask (bus, car)
        "<annotation><object><name>bus</name></object><object><name>car</name></object></annotation>")
    dataset = VOCDataset(root)
    from_xml = dataset.image_labels(labels_from="xml")
    from_masks = dataset.image_labels(labels_from="masks")
    assert set(np.flatnonzero(from_xml["2011_000006"]) + 1) == {CLASSES.index("cat") + 1, 15}
    assert set(np.flatnonzero(from_masks["2011_000006"]) + 1) == GENUINE["2011_000006"]
    assert all(np.array_equal(from_xml[i], from_masks[i]) for i in GENUINE if i != "2011_000006")  # no XML: masks
    report = dataset.check()
    assert report.label_disagreements == 1
    note = next(n for n in report.notes if "annotation list other classes" in n)
    assert note.startswith("note: 1 of the 2 images with both a mask and an annotation") and "2011_000006" in note
    assert "mask: chair, person, sofa; annotation: cat, person" in note
