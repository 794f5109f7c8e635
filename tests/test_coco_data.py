"""COCO -> VOC-format conversion (`vwe.data.coco`) on the synthetic benchmark written in COCO's layout
(`vwe.data.synth_coco`) and on hand-built annotation files."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from vwe.data import coco
from vwe.data.coco import (
    COCO_CATEGORY_IDS,
    COCO_CLASSES,
    NUM_COCO_CLASSES,
    VOC_TO_COCO,
    annotation_mask,
    class_mask,
    image_classes,
    prepare_coco,
    read_instances,
)
from vwe.data.synth import render
from vwe.data.synth_coco import generate_coco
from vwe.data.voc import CLASSES, VOCDataset, labels_cache, read_mask
from vwe.errors import DataError

HEIGHT, WIDTH = 48, 64
SEED = 3
SPLITS = {"train2014": 9, "val2014": 6}
CODES = {"train2014": 0, "val2014": 1}
EMPTY_EVERY, CROWD_EVERY = 4, 3


def coco_label(voc_class_index: int) -> int:
    """Mask label of a VOC class in the converted COCO masks: its COCO name's position in COCO_CLASSES, + 1."""
    return COCO_CLASSES.index(VOC_TO_COCO[CLASSES[voc_class_index]]) + 1


def expected_image(split: str, i: int) -> tuple[np.ndarray, list[int]] | None:
    """(the mask image i of `split` was drawn from, its 0-based annotated classes); None for an empty image."""
    if i % EMPTY_EVERY == 0:
        return None
    sample = render(np.random.default_rng((SEED, CODES[split], i)), HEIGHT, WIDTH, 20, top_class=(i - 1) % 20)
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    classes = set()
    for index, obj in enumerate(sample.objects):
        visible = sample.instances == index + 1
        if visible.any():
            mask[visible] = coco_label(obj.class_index)
            classes.add(coco_label(obj.class_index) - 1)
    if i % CROWD_EVERY == 0:
        region = np.zeros_like(visible)
        region[:HEIGHT // 4, :WIDTH // 4] = True
        mask[region & (sample.instances == 0)] = 255
    return mask, sorted(classes)


def expected_ids(split: str) -> list[int]:
    return [i for i in range(1, SPLITS[split] + 1) if i % EMPTY_EVERY]


def stem(split: str, i: int) -> str:
    return f"COCO_{split}_{i:012d}"


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coco") / "coco"
    summary = generate_coco(root, SPLITS, HEIGHT, WIDTH, seed=SEED, empty_every=EMPTY_EVERY, crowd_every=CROWD_EVERY)
    assert summary["splits"]["train2014"]["empty"] == 2 and summary["splits"]["val2014"]["empty"] == 1
    assert summary["splits"]["train2014"]["crowd"] >= 1  # the 255-on-crowd case is really exercised
    return root


@pytest.fixture(scope="module")
def converted(coco_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("coco_voc") / "voc"
    return out, prepare_coco(coco_root, out, workers=2)  # two processes: the pool path


def test_constants() -> None:
    assert len(COCO_CATEGORY_IDS) == len(COCO_CLASSES) == NUM_COCO_CLASSES == 80
    assert sorted(set(range(1, 91)) - set(COCO_CATEGORY_IDS)) == [12, 26, 29, 30, 45, 66, 68, 69, 71, 83]
    assert COCO_CLASSES[:5] == ("person", "bicycle", "car", "motorcycle", "airplane")
    assert COCO_CLASSES[-1] == "toothbrush" and COCO_CATEGORY_IDS[-1] == 90
    assert VOC_TO_COCO["aeroplane"] == "airplane" and VOC_TO_COCO["tvmonitor"] == "tv"
    assert VOC_TO_COCO["sofa"] == "couch" and VOC_TO_COCO["cat"] == "cat" and len(VOC_TO_COCO) == 20
    assert coco.category_label(1) == 1 and coco.category_label(13) == 12 and coco.category_label(90) == 80


def test_generate_coco_is_deterministic(coco_root: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_coco(again, SPLITS, HEIGHT, WIDTH, seed=SEED, empty_every=EMPTY_EVERY, crowd_every=CROWD_EVERY)
    for rel in ("annotations/instances_train2014.json", "annotations/instances_val2014.json",
                f"train2014/{stem('train2014', 5)}.jpg", f"val2014/{stem('val2014', 6)}.jpg"):
        assert (again / rel).read_bytes() == (coco_root / rel).read_bytes(), rel
    data = json.loads((coco_root / "annotations/instances_train2014.json").read_text())
    assert len(data["categories"]) == 80
    crowd = [a for a in data["annotations"] if a["iscrowd"]]
    assert crowd and all(isinstance(a["segmentation"]["counts"], list) for a in crowd)
    assert all(isinstance(a["segmentation"]["counts"], str) for a in data["annotations"] if not a["iscrowd"])
    assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])


def test_prepare_coco_masks_lists_caches(coco_root: Path, converted: tuple[Path, dict[str, Any]]) -> None:
    out, summary = converted
    assert summary["splits"]["train2014"] == {"images": 9, "written": 7, "reused": 0, "skipped": 2}
    assert summary["splits"]["val2014"] == {"images": 6, "written": 5, "reused": 0, "skipped": 1}
    assert summary["skipped"] == 3 and summary["out"] == str(out)
    from_xml, from_masks = {}, {}
    for split, list_name in (("train2014", "train"), ("val2014", "val")):
        ids = [stem(split, i) for i in expected_ids(split)]
        assert (out / "ImageSets/Segmentation" / f"{list_name}.txt").read_text().split() == ids
        for i in expected_ids(split):
            name = stem(split, i)
            expected = expected_image(split, i)
            assert expected is not None
            mask, classes = expected
            written = read_mask(out / "SegmentationClass" / f"{name}.png")
            np.testing.assert_array_equal(written, mask, err_msg=name)
            link = out / "JPEGImages" / f"{name}.jpg"
            assert link.is_symlink() and link.resolve() == (coco_root / split / f"{name}.jpg").resolve()
            from_xml[name] = classes
            from_masks[name] = sorted({int(v) - 1 for v in np.unique(mask) if 1 <= v <= 80})
        for i in range(1, SPLITS[split] + 1):
            if expected_image(split, i) is None:
                assert not (out / "SegmentationClass" / f"{stem(split, i)}.png").exists()
    crowd_mask = read_mask(out / "SegmentationClass" / f"{stem('train2014', 3)}.png")
    assert (crowd_mask == 255).any()  # image 3 has a crowd annotation
    skipped = json.loads((out / coco.SKIPPED_REPORT).read_text())
    assert skipped == {"train2014": [stem("train2014", 4), stem("train2014", 8)], "val2014": [stem("val2014", 4)]}
    for source, expected_labels in (("xml", from_xml), ("masks", from_masks)):
        cache = json.loads((out / labels_cache(source)).read_text())
        assert cache == {"format": 1, "labels": dict(sorted(expected_labels.items())), "unlabeled": []}


def test_voc_dataset_reads_the_caches(converted: tuple[Path, dict[str, Any]],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out, _ = converted

    def no_recompute(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("labels recomputed instead of read from the cache")

    monkeypatch.setattr(VOCDataset, "labels", no_recompute)
    dataset = VOCDataset(out)
    assert dataset.splits() == ["train", "val"]
    for source in ("xml", "masks"):
        cache = json.loads((out / labels_cache(source)).read_text())["labels"]
        labels = dataset.image_labels(num_classes=80, labels_from=source)
        assert sorted(labels) == sorted(cache)
        for name, vector in labels.items():
            assert vector.shape == (80,) and vector.dtype == np.float32
            assert np.flatnonzero(vector).tolist() == cache[name]
    name = stem("train2014", 1)
    assert dataset.mask_path(name) == out / "SegmentationClass" / f"{name}.png"


def test_rerun_rewrites_nothing_and_restores_a_deleted_mask(coco_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "voc"
    prepare_coco(coco_root, out, workers=1)

    def mtimes() -> dict[str, int]:
        return {str(p.relative_to(out)): os.lstat(p).st_mtime_ns for p in out.rglob("*") if not p.is_dir()}

    before = mtimes()
    summary = prepare_coco(coco_root, out, workers=1)
    assert summary["splits"]["train2014"] == {"images": 9, "written": 0, "reused": 7, "skipped": 2}
    assert summary["splits"]["val2014"] == {"images": 6, "written": 0, "reused": 5, "skipped": 1}
    assert mtimes() == before
    victim = out / "SegmentationClass" / f"{stem('val2014', 2)}.png"
    content = victim.read_bytes()
    victim.unlink()
    summary = prepare_coco(coco_root, out, workers=1)
    assert summary["splits"]["val2014"]["written"] == 1 and summary["splits"]["val2014"]["reused"] == 4
    assert victim.read_bytes() == content
    after = mtimes()
    assert {k for k in after if after[k] != before[k]} == {str(victim.relative_to(out))}


# --- class_mask and annotation_mask on hand-built annotations -----------------------------------------------------

H, W = 8, 10


def rectangle(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """bool H x W, rows y0..y1-1 and columns x0..x1-1 set."""
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def polygon_ann(ann_id: int, category_id: int, x0: int, y0: int, x1: int, y1: int, crowd: int = 0) -> dict[str, Any]:
    return {"id": ann_id, "category_id": category_id, "iscrowd": crowd,
            "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]}


def test_the_three_segmentation_formats_decode() -> None:
    # pycocotools fills an axis-aligned polygon with integer corners (2, 1)-(6, 4) as columns 2..5, rows 1..3:
    # pixel (x, y) is inside when its centre (x + 0.5, y + 0.5) is
    box = rectangle(1, 4, 2, 6)
    polygon = polygon_ann(1, 1, 2, 1, 6, 4)
    np.testing.assert_array_equal(annotation_mask(polygon, H, W), box)
    half = {"id": 2, "segmentation": [[1.5, 0.5, 6.5, 0.5, 6.5, 4.5, 1.5, 4.5]]}
    np.testing.assert_array_equal(annotation_mask(half, H, W), rectangle(1, 5, 2, 7))
    # column-major runs: 17 zeros (columns 0, 1 and row 0 of column 2), 3 ones, then 5 zeros / 3 ones per column
    uncompressed = {"id": 3, "iscrowd": 1, "segmentation": {"size": [H, W], "counts": [17, 3, 5, 3, 5, 3, 5, 3, 36]}}
    np.testing.assert_array_equal(annotation_mask(uncompressed, H, W), box)
    encoded = mask_utils.encode(np.asfortranarray(box.astype(np.uint8)))
    for counts in (encoded["counts"], encoded["counts"].decode("ascii")):
        compressed = {"id": 4, "segmentation": {"size": [H, W], "counts": counts}}
        np.testing.assert_array_equal(annotation_mask(compressed, H, W), box)


def test_class_mask_overlaps_and_crowd() -> None:
    person, car = 1, 3  # labels 1 and 3
    mask = class_mask([polygon_ann(1, person, 0, 0, 5, 4), polygon_ann(2, car, 3, 2, 8, 6)], H, W)
    expected = np.zeros((H, W), np.uint8)
    expected[rectangle(0, 4, 0, 5)] = 1
    expected[rectangle(2, 6, 3, 8)] = 3
    expected[rectangle(2, 4, 3, 5)] = 255  # two classes overlap
    np.testing.assert_array_equal(mask, expected)

    same = class_mask([polygon_ann(1, car, 0, 0, 5, 4), polygon_ann(2, car, 3, 2, 8, 6)], H, W)
    np.testing.assert_array_equal(same, np.where(rectangle(0, 4, 0, 5) | rectangle(2, 6, 3, 8), 3, 0))

    crowd = polygon_ann(3, 90, 4, 0, 10, 3, crowd=1)  # toothbrush crowd over part of the person
    mask = class_mask([polygon_ann(1, person, 0, 0, 6, 4), crowd], H, W)
    expected = np.where(rectangle(0, 4, 0, 6), 1, 0).astype(np.uint8)
    expected[rectangle(0, 3, 4, 10)] = 255
    np.testing.assert_array_equal(mask, expected)
    assert image_classes([polygon_ann(1, car, 0, 0, 5, 4), crowd, polygon_ann(5, person, 0, 0, 1, 1)]) == [0, 2, 79]


def test_malformed_segmentation_names_the_annotation() -> None:
    short = {"id": 41, "segmentation": {"size": [H, W], "counts": [17, 3]}}
    with pytest.raises(DataError, match=r"annotation 41: malformed segmentation .*covers? 20 pixels"):
        annotation_mask(short, H, W)
    with pytest.raises(DataError, match="annotation 42: malformed segmentation"):
        annotation_mask({"id": 42, "segmentation": [[1, 2, 3]]}, H, W)
    with pytest.raises(DataError, match="annotation 43: malformed segmentation"):
        annotation_mask({"id": 43, "segmentation": {"size": [H, W], "counts": "5"}}, H, W)
    with pytest.raises(DataError, match="annotation 44: malformed segmentation .*size"):
        annotation_mask({"id": 44, "segmentation": {"size": [H, 4], "counts": [40]}}, H, W)


# --- errors on hand-built COCO folders -----------------------------------------------------------------------------


def write_coco(root: Path, data: dict[str, Any] | str, image_sizes: dict[str, tuple[int, int]],
               split: str = "val2014") -> Path:
    """A COCO folder with one annotation file (`data`, or raw text) and grey JPEGs of the given H x W."""
    for name, (height, width) in image_sizes.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (width, height), (90, 90, 90)).save(root / split / name, quality=95)
    path = root / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def small_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 16, "width": 20},
                   {"id": 2, "file_name": "b.jpg", "height": 16, "width": 20}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "iscrowd": 0,
                         "segmentation": [[1, 1, 9, 1, 9, 9, 1, 9]]},
                        {"id": 8, "image_id": 2, "category_id": 18, "iscrowd": 0,
                         "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]}],
        "categories": [{"id": c, "name": n} for c, n in zip(COCO_CATEGORY_IDS, COCO_CLASSES)],
    }
    data.update(changes)
    return data


SIZES = {"a.jpg": (16, 20), "b.jpg": (16, 20)}


def convert(root: Path, tmp_path: Path, **kwargs: Any) -> dict[str, Any]:
    return prepare_coco(root, tmp_path / "out", splits=("val2014",), workers=1, **kwargs)


@pytest.mark.parametrize("link", ["hardlink", "copy"])
def test_hardlink_and_copy(tmp_path: Path, link: str) -> None:
    root = tmp_path / "coco"
    write_coco(root, small_data(), SIZES)
    summary = convert(root, tmp_path, link=link)
    assert summary["splits"]["val2014"] == {"images": 2, "written": 2, "reused": 0, "skipped": 0}
    target = tmp_path / "out" / "JPEGImages" / "b.jpg"
    assert not target.is_symlink() and target.read_bytes() == (root / "val2014" / "b.jpg").read_bytes()
    assert os.path.samefile(target, root / "val2014" / "b.jpg") == (link == "hardlink")
    assert (read_mask(tmp_path / "out" / "SegmentationClass" / "b.png")[2:12, 2:12] == 17).all()  # dog: label 17


def test_missing_annotation_file(tmp_path: Path) -> None:
    path = tmp_path / "coco" / "annotations" / "instances_val2014.json"
    with pytest.raises(DataError, match=re.escape(f"{path}: annotation file missing")):
        convert(tmp_path / "coco", tmp_path)


def test_malformed_json(tmp_path: Path) -> None:
    path = write_coco(tmp_path / "coco", '{"images": [\n  {"id": 1,,}]}', {})
    with pytest.raises(DataError, match=re.escape(f"{path}: malformed JSON at line 2, column")):
        read_instances(path)


def test_missing_top_level_key(tmp_path: Path) -> None:
    data = small_data()
    del data["categories"]
    path = write_coco(tmp_path / "coco", data, SIZES)
    with pytest.raises(DataError, match=re.escape(f"{path}: missing top-level key 'categories'")):
        convert(tmp_path / "coco", tmp_path)


def test_unknown_category(tmp_path: Path) -> None:
    data = small_data()
    data["annotations"][1]["category_id"] = 12  # one of COCO's gaps
    path = write_coco(tmp_path / "coco", data, SIZES)
    with pytest.raises(DataError, match=re.escape(f"{path}: annotation 8 of image 2 has category id 12")):
        convert(tmp_path / "coco", tmp_path)


def test_annotation_of_unknown_image(tmp_path: Path) -> None:
    data = small_data()
    data["annotations"][0]["image_id"] = 99
    path = write_coco(tmp_path / "coco", data, SIZES)
    with pytest.raises(DataError, match=re.escape(f"{path}: annotation 7 refers to image id 99")):
        convert(tmp_path / "coco", tmp_path)


def test_duplicate_image_id(tmp_path: Path) -> None:
    data = small_data()
    data["images"][1]["id"] = 1
    path = write_coco(tmp_path / "coco", data, SIZES)
    with pytest.raises(DataError, match=re.escape(f"{path}: duplicate image id 1")):
        read_instances(path)


def test_missing_image_file(tmp_path: Path) -> None:
    write_coco(tmp_path / "coco", small_data(), {"a.jpg": (16, 20)})
    image = tmp_path / "coco" / "val2014" / "b.jpg"
    with pytest.raises(DataError, match=re.escape(f"{image}: image file missing (image id 2")):
        convert(tmp_path / "coco", tmp_path)


def test_image_size_differs_from_the_json(tmp_path: Path) -> None:
    write_coco(tmp_path / "coco", small_data(), {"a.jpg": (16, 20), "b.jpg": (15, 20)})
    image = tmp_path / "coco" / "val2014" / "b.jpg"
    pattern = re.escape(f"{image}: image is 15 x 20 (H x W) but ") + ".*16 x 20 for image id 2"
    with pytest.raises(DataError, match=pattern):
        convert(tmp_path / "coco", tmp_path)


def test_malformed_segmentation_in_a_file(tmp_path: Path) -> None:
    data = small_data()
    data["annotations"][1]["segmentation"] = {"size": [16, 20], "counts": [3, 4]}
    path = write_coco(tmp_path / "coco", data, SIZES)
    with pytest.raises(DataError, match=re.escape(f"{path}: annotation 8: malformed segmentation") + ".*image id 2"):
        convert(tmp_path / "coco", tmp_path)
