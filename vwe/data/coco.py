"""MS COCO 2014 (instance annotations) converted into the VOC-format layout that `vwe.data.voc.VOCDataset` reads.

`prepare_coco(root, out)` reads the standard COCO layout

    <root>/train2014/*.jpg, <root>/val2014/*.jpg
    <root>/annotations/instances_train2014.json, <root>/annotations/instances_val2014.json

and writes into `out` a VOC-format folder:

    JPEGImages/<id>.jpg                 a symlink (or hard link, or copy) to the original image
    SegmentationClass/<id>.png          the class-index mask drawn from the instance annotations
    ImageSets/Segmentation/{train,val}.txt
    vwe_cls_labels_{xml,masks}.json     the image-label caches, so the toolkit never looks for annotation XMLs
    vwe_coco_skipped.json               the images without any annotation, per split (left out of the lists)
    vwe_classes.json                    COCO's 80 class names, which `VOCDataset` reads as the folder's classes

where `<id>` is the image file's stem (`COCO_train2014_000000000009`).

Mask convention: 0 is background and label l = `COCO_CATEGORY_IDS.index(category_id) + 1` (1..80) marks a pixel
that only non-crowd annotations of that one class cover. A pixel where non-crowd annotations of two different
classes overlap, and every pixel a crowd annotation (iscrowd=1) covers, is 255: ambiguous pixels are neither scored
nor trained on, the way VOC marks its own ambiguous pixels 255. Image-level labels come from every annotation,
crowd regions included (a crowd still shows its class); their 0-based class index is label - 1.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import warnings
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from pycocotools import mask as mask_utils

from vwe.data.voc import (
    CLASSES,
    CLASSES_FILE,
    IGNORE,
    image_size,
    label_is_complete,
    labels_cache,
    labels_cache_text,
    mask_classes,
    read_labels_cache,
    read_mask,
    write_mask,
)
from vwe.errors import ConfigError, DataError
from vwe.io import atomic_path, write_text

log = logging.getLogger(__name__)

COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21,
    22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
    46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65,
    67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
NUM_COCO_CLASSES = len(COCO_CLASSES)
_RENAMED = {"aeroplane": "airplane", "diningtable": "dining table", "motorbike": "motorcycle",
            "pottedplant": "potted plant", "sofa": "couch", "tvmonitor": "tv"}
VOC_TO_COCO = {name: _RENAMED.get(name, name) for name in CLASSES}
SKIPPED_REPORT = "vwe_coco_skipped.json"
LINK_MODES = ("symlink", "hardlink", "copy")
_LABEL_OF = {category_id: index + 1 for index, category_id in enumerate(COCO_CATEGORY_IDS)}
_TASK_CHUNK = 16  # images per task sent to a worker process

assert len(COCO_CATEGORY_IDS) == len(COCO_CLASSES) == 80
assert all(name in COCO_CLASSES for name in VOC_TO_COCO.values())


def category_label(category_id: int) -> int:
    """Mask label (1..80) of a COCO category id; 0-based class index = label - 1."""
    return _LABEL_OF[category_id]


@dataclass(frozen=True)
class CocoImage:
    """One entry of a COCO file's "images"."""

    id: int
    file_name: str
    height: int
    width: int


@dataclass
class CocoInstances:
    """A parsed `instances_<split>.json`: images by id and their annotations (raw dicts, in file order)."""

    path: Path
    images: dict[int, CocoImage] = field(default_factory=dict)
    annotations: dict[int, list[dict[str, Any]]] = field(default_factory=dict)

    def image_annotations(self, image_id: int) -> list[dict[str, Any]]:
        return self.annotations.get(image_id, [])


def _rle_string_counts(counts: str) -> list[int]:
    """Run lengths of a COCO compressed RLE string (pycocotools' LEB128-like code, 5 bits a char, offset 48).

    pycocotools decodes without checking that the runs fill the image, reading past its buffer when they do not,
    so the runs are checked here first."""
    runs: list[int] = []
    pos = 0
    while pos < len(counts):
        value = 0
        shift = 0
        more = True
        while more:
            if pos >= len(counts):
                raise ValueError("truncated RLE string")
            code = ord(counts[pos]) - 48
            if not 0 <= code < 64:
                raise ValueError(f"character {counts[pos]!r} outside the RLE alphabet")
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            pos += 1
            shift += 5
            if not more and code & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _check_runs(runs: list[Any], height: int, width: int) -> None:
    if not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in runs):
        raise ValueError("RLE counts must be non-negative integers")
    if sum(runs) != height * width:
        raise ValueError(f"RLE runs cover {sum(runs)} pixels, the image has {height} x {width} = {height * width}")


def _check_rle_size(segmentation: dict[str, Any], height: int, width: int) -> None:
    size = segmentation.get("size")
    if not isinstance(size, (list, tuple)) or len(size) != 2 or list(size) != [height, width]:
        raise ValueError(f"RLE size {size} differs from the image size [{height}, {width}]")


def annotation_mask(annotation: dict[str, Any], height: int, width: int) -> np.ndarray:
    """bool H x W: the pixels one annotation's `segmentation` covers (polygons, uncompressed or compressed RLE).

    Polygons with fewer than 3 points cover nothing. A malformed segmentation is a DataError naming the
    annotation id (the caller adds the file)."""
    ann_id = annotation.get("id")
    segmentation = annotation.get("segmentation")
    try:
        if isinstance(segmentation, list):
            polygons = []
            for polygon in segmentation:
                if not isinstance(polygon, list) or len(polygon) % 2 or not all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) for v in polygon):
                    raise ValueError("a polygon must be a flat list of x, y coordinates")
                if len(polygon) >= 6:  # frPyObjects takes a 4-number list for a box, so degenerate ones stay out
                    polygons.append([float(v) for v in polygon])
            if not polygons:
                return np.zeros((height, width), dtype=bool)
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        elif isinstance(segmentation, dict) and "counts" in segmentation:
            _check_rle_size(segmentation, height, width)
            counts = segmentation["counts"]
            if isinstance(counts, list):
                _check_runs(counts, height, width)
                rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
            elif isinstance(counts, (str, bytes)):
                text = counts.decode("ascii") if isinstance(counts, bytes) else counts
                _check_runs(_rle_string_counts(text), height, width)
                rle = {"size": [height, width], "counts": text.encode("ascii")}
            else:
                raise ValueError(f"RLE counts of type {type(counts).__name__}")
        else:
            raise ValueError("expected a list of polygons or an RLE dict with 'size' and 'counts'")
        with warnings.catch_warnings():  # pycocotools' decode under numpy 2 warns about its own __array__
            warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
            return mask_utils.decode(rle).astype(bool)
    except (ValueError, TypeError, OverflowError, UnicodeDecodeError) as err:
        raise DataError(f"annotation {ann_id}: malformed segmentation ({err})") from err


def _annotation_label(annotation: dict[str, Any]) -> int:
    category_id = annotation.get("category_id")
    if category_id not in _LABEL_OF:
        raise DataError(f"annotation {annotation.get('id')}: category id {category_id!r} is not one of the 80 COCO "
                        "categories")
    return _LABEL_OF[category_id]


def class_mask(annotations: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """uint8 H x W class-index mask of one image: 0 background, l where only non-crowd annotations of class l
    cover the pixel, 255 where non-crowd annotations of two classes overlap or any crowd annotation covers it."""
    labels = np.zeros((height, width), dtype=np.uint8)
    ignore = np.zeros((height, width), dtype=bool)
    for annotation in annotations:
        label = _annotation_label(annotation)
        covered = annotation_mask(annotation, height, width)
        if annotation.get("iscrowd", 0):
            ignore |= covered
            continue
        ignore |= covered & (labels != 0) & (labels != label)
        labels[covered & (labels == 0)] = label
    labels[ignore] = IGNORE
    return labels


def image_classes(annotations: list[dict[str, Any]]) -> list[int]:
    """Sorted 0-based class indices of every annotation of an image, crowd ones included."""
    return sorted({_annotation_label(annotation) - 1 for annotation in annotations})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_instances(path: str | Path) -> CocoInstances:
    """Parses and checks a COCO `instances_<split>.json`; every problem is a DataError starting with the path."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file missing")
    try:
        with path.open("rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno} ({err.msg})") from err
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the annotation file ({err})") from err
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataError(f"{path}: missing top-level key {key!r}")
        if not isinstance(data[key], list):
            raise DataError(f"{path}: {key!r} must be a list, got {type(data[key]).__name__}")
    instances = CocoInstances(path=path)
    for index, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or not all(k in entry for k in ("id", "file_name", "height", "width")):
            ident = entry.get("id", f"#{index}") if isinstance(entry, dict) else f"#{index}"
            raise DataError(f"{path}: image {ident} lacks one of id, file_name, height, width")
        image_id = entry["id"]
        if not _is_int(image_id) or not _is_int(entry["height"]) or not _is_int(entry["width"]):
            raise DataError(f"{path}: image {image_id!r}: id, height and width must be integers")
        if entry["height"] <= 0 or entry["width"] <= 0:
            raise DataError(f"{path}: image {image_id}: size {entry['height']} x {entry['width']} is not positive")
        if image_id in instances.images:
            raise DataError(f"{path}: duplicate image id {image_id}")
        instances.images[image_id] = CocoImage(image_id, str(entry["file_name"]), entry["height"], entry["width"])
    for index, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not all(k in ann for k in ("id", "image_id", "category_id", "segmentation")):
            ident = ann.get("id", f"#{index}") if isinstance(ann, dict) else f"#{index}"
            raise DataError(f"{path}: annotation {ident} lacks one of id, image_id, category_id, segmentation")
        if ann["category_id"] not in _LABEL_OF:
            raise DataError(f"{path}: annotation {ann['id']} of image {ann['image_id']} has category id "
                            f"{ann['category_id']!r}, not one of the 80 COCO categories")
        if ann["image_id"] not in instances.images:
            raise DataError(f"{path}: annotation {ann['id']} refers to image id {ann['image_id']!r}, which is not "
                            "in 'images'")
        instances.annotations.setdefault(ann["image_id"], []).append(ann)
    return instances


def _list_name(split: str) -> str:
    """Split list name of a COCO split folder: train2014 -> train, val2014 -> val."""
    return re.sub(r"\d+$", "", split) or split


def _link(source: Path, target: Path, link: str) -> None:
    """Makes `target` a symlink / hard link / copy of `source`, atomically; one that already is stays as it is."""
    if link == "symlink":
        if target.is_symlink() and os.readlink(target) == str(source):
            return
    elif link == "hardlink":
        if target.exists() and not target.is_symlink() and os.path.samefile(source, target):
            return
    elif target.is_file() and not target.is_symlink() and target.stat().st_size == source.stat().st_size:
        return
    with atomic_path(target) as tmp:
        if link == "copy":
            shutil.copyfile(source, tmp)
        else:
            tmp.unlink()
            (os.symlink if link == "symlink" else os.link)(source, tmp)


@dataclass(frozen=True)
class _Task:
    """What a worker needs to convert one image."""

    image_id: int
    name: str  # the VOC-format id: the file name's stem
    image_path: Path
    out: Path
    height: int
    width: int
    annotations: list[dict[str, Any]]
    annotation_file: Path
    link: str


def _convert(task: _Task) -> tuple[bool, list[int]]:
    """Links one image and writes its mask unless a complete one is there: (written, 0-based classes in the mask)."""
    if not task.image_path.is_file():
        raise DataError(f"{task.image_path}: image file missing (image id {task.image_id} of {task.annotation_file})")
    size = image_size(task.image_path)
    if size is None:
        raise DataError(f"{task.image_path}: cannot read the image header (image id {task.image_id})")
    if size != (task.height, task.width):
        raise DataError(f"{task.image_path}: image is {size[0]} x {size[1]} (H x W) but {task.annotation_file} "
                        f"gives {task.height} x {task.width} for image id {task.image_id}")
    _link(task.image_path, task.out / "JPEGImages" / f"{task.name}.jpg", task.link)
    mask_path = task.out / "SegmentationClass" / f"{task.name}.png"
    if label_is_complete(mask_path, (task.height, task.width)):
        return False, mask_classes(read_mask(mask_path), mask_path, NUM_COCO_CLASSES)
    try:
        mask = class_mask(task.annotations, task.height, task.width)
    except DataError as err:
        raise DataError(f"{task.annotation_file}: {err} (image id {task.image_id})") from err
    write_mask(mask_path, mask)
    return True, mask_classes(mask, mask_path, NUM_COCO_CLASSES)


def _convert_chunk(tasks: list[_Task]) -> list[tuple[bool, list[int]]]:
    return [_convert(task) for task in tasks]


def _run(tasks: list[_Task], executor: Executor | None, what: str) -> Iterator[tuple[bool, list[int]]]:
    """`_convert` over `tasks` in order (in chunks on `executor` when given), logging progress every ~10 s."""
    chunks = [tasks[i:i + _TASK_CHUNK] for i in range(0, len(tasks), _TASK_CHUNK)]
    results = executor.map(_convert_chunk, chunks) if executor is not None else map(_convert_chunk, chunks)
    start = last = time.monotonic()
    done = 0
    for chunk_results in results:
        yield from chunk_results
        done += len(chunk_results)
        now = time.monotonic()
        if now - last >= 10:
            log.info("%s: %d/%d images (%.0f/s)", what, done, len(tasks), done / (now - start))
            last = now


def _write_if_changed(path: Path, text: str) -> None:
    """Writes `text` atomically unless the file already holds exactly it (a re-run then touches nothing)."""
    try:
        if path.read_text() == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    write_text(path, text)


def _write_labels_cache(path: Path, labels: dict[str, list[int]]) -> None:
    """Merges `labels` into the VOC toolkit's labels cache at `path` (format 1: id -> 0-based class indices)."""
    cached, unlabeled = read_labels_cache(path)
    _write_if_changed(path, labels_cache_text({**cached, **labels}, unlabeled - set(labels)))


def prepare_coco(root: str | Path, out: str | Path, *, splits: tuple[str, ...] = ("train2014", "val2014"),
                 link: str = "symlink", workers: int | None = None) -> dict[str, Any]:
    """Converts the COCO layout under `root` into a VOC-format folder `out` (see the module docstring).

    Resumable: masks that are already complete and links that already point at their image are kept. The split
    lists, the labels caches and the skipped list are written after every mask. `workers` processes draw the masks
    (default: up to 8, one per core; 1 draws them in this process). Returns per split the counts of images,
    masks written, masks reused and images skipped (no annotation), the output folder and the seconds taken.
    """
    if link not in LINK_MODES:
        raise ConfigError(f"coco.link: expected one of {', '.join(LINK_MODES)}, got {link!r}")
    list_names = [_list_name(split) for split in splits]
    if len(set(list_names)) != len(list_names):
        raise ConfigError(f"coco.splits: {list(splits)} would share a split list ({list_names})")
    root, out = Path(root).absolute(), Path(out).absolute()
    workers = min(8, os.cpu_count() or 1) if workers is None else max(1, workers)
    start = time.monotonic()
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"out": str(out), "splits": {}}
    lists: dict[str, list[str]] = {}
    skipped: dict[str, list[str]] = {}
    from_annotations: dict[str, list[int]] = {}
    from_masks: dict[str, list[int]] = {}
    executor = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        for split, list_name in zip(splits, list_names):
            annotation_file = root / "annotations" / f"instances_{split}.json"
            instances = read_instances(annotation_file)
            tasks: list[_Task] = []
            skipped[split] = []
            for image_id in sorted(instances.images):
                image = instances.images[image_id]
                name = Path(image.file_name).stem
                annotations = instances.image_annotations(image_id)
                if not annotations:
                    skipped[split].append(name)
                    continue
                tasks.append(_Task(image_id, name, root / split / image.file_name, out, image.height, image.width,
                                   annotations, annotation_file, link))
                from_annotations[name] = image_classes(annotations)
            log.info("%s: %d images, %d with annotations", split, len(instances.images), len(tasks))
            written = reused = 0
            for task, (was_written, classes) in zip(tasks, _run(tasks, executor, split)):
                written += was_written
                reused += not was_written
                from_masks[task.name] = classes
            lists[list_name] = [task.name for task in tasks]
            summary["splits"][split] = {"images": len(instances.images), "written": written, "reused": reused,
                                        "skipped": len(skipped[split])}
            log.info("%s: %d masks written, %d reused, %d images skipped (no annotation)", split, written, reused,
                     len(skipped[split]))
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
    _write_if_changed(out / CLASSES_FILE, json.dumps(list(COCO_CLASSES)) + "\n")
    _write_labels_cache(out / labels_cache("xml"), from_annotations)
    _write_labels_cache(out / labels_cache("masks"), from_masks)
    report = out / SKIPPED_REPORT
    try:
        previous = json.loads(report.read_text())
    except (OSError, ValueError):
        previous = {}
    merged = {**(previous if isinstance(previous, dict) else {}), **skipped}
    _write_if_changed(report, json.dumps(merged, indent=2) + "\n")
    for list_name, ids in lists.items():
        if not ids:  # the toolkit treats an empty split list as an error
            log.warning("%s: no image has an annotation; %s.txt not written", out, list_name)
            continue
        _write_if_changed(out / "ImageSets" / "Segmentation" / f"{list_name}.txt", "".join(f"{i}\n" for i in ids))
    summary["skipped"] = sum(len(ids) for ids in skipped.values())
    summary["seconds"] = round(time.monotonic() - start, 3)
    return summary
