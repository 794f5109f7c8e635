"""PASCAL VOC 2012 (+ SBD train_aug) on disk: reading, validating and indexing the devkit layout.

The dataset root is the devkit's VOC2012 folder:

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png        official masks (train, val)
    SegmentationClassAug/<id>.png     SBD-augmented masks (train_aug), preferred when present
    Annotations/<id>.xml              object names: image-level labels for ids without a mask
    ImageSets/Segmentation/{train,val,test,train_aug}.txt

Masks hold class indices (0 background, 1..20 the classes of `CLASSES`, 255 ignore) and are read as raw indices,
never converted to RGB. Image ids stay strings ("2007_000032"), METHOD P7. Image-level labels are multi-hot float32
vectors of length 20 where index c is mask label c + 1 (METHOD §6).
"""
from __future__ import annotations

import functools
import io
import json
import logging
import os
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
from PIL import Image

from vwe import storage
from vwe.errors import DataError
from vwe.io import atomic_path, write_json, write_text

log = logging.getLogger(__name__)

CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
NUM_CLASSES = len(CLASSES)
IGNORE = 255
SPLITS = ("train", "val", "test", "train_aug")
STANDARD_COUNTS = {"train": 1464, "val": 1449, "test": 1456, "train_aug": 10582}  # VOC 2012 + SBD, METHOD §6
CLASSES_FILE = "vwe_classes.json"  # a dataset's own class names (COCO's 80, from `vwe data prepare-coco`)


def labels_cache(labels_from: str) -> str:
    """The file, in a dataset root, that caches its image labels from `labels_from` (xml or masks)."""
    return f"vwe_cls_labels_{labels_from}.json"
BAD_FILES_REPORT = "vwe_bad_files.json"
_CACHE_FORMAT = 1

T = TypeVar("T")
R = TypeVar("R")


def _voc_palette() -> tuple[int, ...]:
    colours = []
    for index in range(256):
        r = g = b = 0
        bits = index
        for shift in range(7, -1, -1):
            r |= (bits & 1) << shift
            g |= ((bits >> 1) & 1) << shift
            b |= ((bits >> 2) & 1) << shift
            bits >>= 3
        colours += [r, g, b]
    return tuple(colours)


_PALETTE = _voc_palette()


def palette() -> list[int]:
    """The VOC colour map: 256 RGB triples (768 ints); the bits of index i are spread over R, G, B, MSB first."""
    return list(_PALETTE)


def _decode(path: str | Path, what: str) -> Image.Image:
    if not storage.is_file(path):
        raise DataError(f"{path}: {what} file missing")
    try:
        with storage.open_input(path) as f, Image.open(f) as image:
            image.load()
            return image
    except Exception as err:  # PIL signals corrupt data with many exception types (OSError, SyntaxError, zlib...)
        raise DataError(f"{path}: cannot decode {what} ({type(err).__name__}: {err})") from err


def read_image(path: str | Path) -> np.ndarray:
    """Reads an image as uint8 H x W x 3 RGB."""
    image = _decode(path, "image")
    return np.array(image.convert("RGB") if image.mode != "RGB" else image)


def read_mask(path: str | Path) -> np.ndarray:
    """Reads a label mask as uint8 H x W class indices (palette 'P' or grayscale 'L' PNG, never converted to RGB)."""
    image = _decode(path, "mask")
    if image.mode not in ("P", "L"):
        raise DataError(f"{path}: mask has mode {image.mode}; expected a palette (P) or grayscale (L) index map")
    return np.array(image)


def image_size(path: str | Path) -> tuple[int, int] | None:
    """H x W of an image file from its header (no decoding); None when it cannot be read."""
    try:
        with storage.open_input(path) as f, Image.open(f) as image:
            return image.height, image.width
    except Exception:  # noqa: BLE001 - any unreadable file is simply "no size"
        return None


def label_is_complete(path: str | Path, size: tuple[int, int] | None = None) -> bool:
    """True when `path` is a whole index-map PNG of H x W `size` (when given): its chunks all pass their CRC
    checks, which catches a truncated or damaged file without decoding the pixels."""
    try:
        with storage.open_input(path) as f, Image.open(f) as image:
            if image.format != "PNG" or image.mode not in ("P", "L"):
                return False
            if size is not None and (image.height, image.width) != tuple(size):
                return False
            image.verify()
    except Exception:  # noqa: BLE001 - PIL reports damage with many exception types
        return False
    return True


def encode_mask(mask: np.ndarray) -> bytes:
    """PNG bytes of a uint8 H x W index map with the VOC palette (deterministic: same mask, same bytes)."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"a mask must be a 2-D uint8 array, got {mask.dtype} with shape {mask.shape}")
    image = Image.fromarray(mask)
    image.putpalette(_PALETTE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Writes `mask` as a VOC palette PNG, atomically."""
    data = encode_mask(mask)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def multi_hot(class_indices: Iterable[int], num_classes: int = NUM_CLASSES) -> np.ndarray:
    """float32[num_classes] with a 1 at each 0-based class index."""
    labels = np.zeros(num_classes, dtype=np.float32)
    labels[list(class_indices)] = 1.0
    return labels


def mask_classes(mask: np.ndarray, path: str | Path, num_classes: int = NUM_CLASSES) -> list[int]:
    """0-based classes present in a mask; a value outside 0..num_classes and 255 is a DataError naming `path`."""
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    bad = present[(present > num_classes) & (present != IGNORE)]
    if bad.size:
        raise DataError(f"{path}: label values {bad.tolist()} outside 0..{num_classes} and {IGNORE}")
    return [int(v) - 1 for v in present if 1 <= v <= num_classes]


def image_labels_from_mask(path: str | Path, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Multi-hot float32[num_classes] image labels from a mask: label l sets index l - 1; 0 and 255 are ignored."""
    return multi_hot(mask_classes(read_mask(path), path, num_classes), num_classes)


def read_classes(root: str | Path) -> tuple[str, ...]:
    """The class names of a dataset folder: its `vwe_classes.json` (a JSON list) when it has one, else VOC's 20."""
    path = storage.join(root, CLASSES_FILE)
    if not storage.is_file(path):
        return CLASSES
    try:
        names = json.loads(storage.read_text(path))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable class list ({err})") from err
    if not isinstance(names, list) or not 1 <= len(names) < IGNORE or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: expected a JSON list of 1 to {IGNORE - 1} class names")
    return tuple(names)


def labels_from_annotation(xml_path: str | Path) -> np.ndarray:
    """Multi-hot float32[20] image labels from the `<object><name>` entries of a VOC annotation XML."""
    if not storage.is_file(xml_path):
        raise DataError(f"{xml_path}: annotation file missing")
    try:
        root = ET.fromstring(storage.read_bytes(xml_path))
    except ET.ParseError as err:
        raise DataError(f"{xml_path}: cannot parse annotation XML ({err})") from err
    indices = []
    for obj in root.findall("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in CLASSES:
            raise DataError(f"{xml_path}: unknown object name {name!r} (expected one of the 20 VOC classes)")
        indices.append(CLASSES.index(name))
    return multi_hot(indices)


def read_split(path: str | Path) -> list[str]:
    """Image ids of a split list: one id per line; `/JPEGImages/<id>.jpg ...` lines (SegmentationAug style) work too."""
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        raise DataError(f"{path}: split list missing") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read split list ({err})") from err
    ids = [Path(line.split()[0]).stem for line in text.splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{path}: split list is empty")
    return ids


def read_sbd_splits(sbd_root: str | Path) -> tuple[list[str], list[str]]:
    """(train, val) ids of SBD, from its `dataset/` folder (or the folder above it)."""
    if not storage.is_dir(sbd_root):
        raise DataError(f"{sbd_root}: SBD folder not found")
    folder = sbd_root if storage.exists(storage.join(sbd_root, "train.txt")) else storage.join(sbd_root, "dataset")
    return read_split(storage.join(folder, "train.txt")), read_split(storage.join(folder, "val.txt"))


def count_notes(counts: dict[str, int]) -> list[str]:
    """Notes for split sizes that differ from standard VOC 2012 (not errors: subsets and the synthetic benchmark)."""
    notes = []
    if any(counts.get(split, expected) != expected for split, expected in STANDARD_COUNTS.items()):
        standard = ", ".join(f"{split} {n:,}" for split, n in STANDARD_COUNTS.items())
        notes.append(f"note: the counts differ from standard VOC 2012 ({standard}); "
                     "fine for a subset or the synthetic benchmark")
    if "train_aug" not in counts:
        notes.append("note: no train_aug.txt yet (`vwe data prepare` builds it)")
    return notes


@dataclass
class BadFile:
    """One id that failed validation: the file at fault and what is wrong with it."""

    image_id: str
    file: str
    problem: str


@dataclass
class CheckReport:
    """Result of `VOCDataset.check`: ids per split, bad files (with skip_bad) and notes for the user."""

    counts: dict[str, int]
    bad: list[BadFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    report_path: str | Path | None = None
    label_disagreements: int = 0  # images whose mask and annotation list other classes


class VOCDataset:
    """One VOC2012 folder: split lists, file paths per id, cached image-level labels, validation, split building.

    `root` is a local or NFS path (paths stay `Path`s) or an object-store URI (s3://..., paths are strings).
    `classes` are the folder's class names (`read_classes`: VOC's 20, or those of `vwe_classes.json`).
    """

    def __init__(self, root: str | Path):
        self.root = storage.join(root)
        if not storage.is_dir(self.root):
            raise DataError(f"{self.root}: dataset folder not found")
        self.classes = read_classes(self.root)
        self.split_dir = storage.join(self.root, "ImageSets", "Segmentation")
        self._listings: dict[str, set[str]] = {}

    def split_path(self, split: str) -> str | Path:
        return storage.join(self.split_dir, f"{split}.txt")

    def splits(self) -> list[str]:
        """Names of the split lists present, standard ones first."""
        names = [name.removesuffix(".txt") for name in storage.listdir(self.split_dir) if name.endswith(".txt")]
        return [s for s in SPLITS if s in names] + [s for s in names if s not in SPLITS]

    def split_ids(self, split: str) -> list[str]:
        return read_split(self.split_path(split))

    def image_path(self, image_id: str) -> str | Path:
        return storage.join(self.root, "JPEGImages", f"{image_id}.jpg")

    def mask_path(self, image_id: str) -> str | Path | None:
        """SegmentationClassAug/<id>.png, else SegmentationClass/<id>.png, else None."""
        for folder in ("SegmentationClassAug", "SegmentationClass"):
            if self._has_file(folder, f"{image_id}.png"):
                return storage.join(self.root, folder, f"{image_id}.png")
        return None

    def part_path(self, image_id: str) -> str | Path | None:
        """SegmentationParts/<id>.png (where each object's class-unique part is; the synthetic benchmark only), else
        None."""
        if self._has_file("SegmentationParts", f"{image_id}.png"):
            return storage.join(self.root, "SegmentationParts", f"{image_id}.png")
        return None

    def annotation_path(self, image_id: str) -> str | Path:
        return storage.join(self.root, "Annotations", f"{image_id}.xml")

    def labels(self, image_id: str, labels_from: str = "xml") -> np.ndarray | None:
        """Image labels of one id from its annotation XML (`labels_from="xml"`, the authors' cls_labels) or its mask
        (`"masks"`), falling back to the other where that one is missing; None when it has neither (VOC test)."""
        mask = self.mask_path(image_id)
        has_xml = self._has_file("Annotations", f"{image_id}.xml")
        if has_xml and (labels_from == "xml" or mask is None):
            return labels_from_annotation(self.annotation_path(image_id))
        return image_labels_from_mask(mask, len(self.classes)) if mask is not None else None

    def _has_file(self, folder: str, filename: str) -> bool:
        """Whether `<root>/<folder>/<filename>` exists. Locally one check per call; in an object store one listing
        per folder, kept for the life of this object (a request per id would take minutes for 10k ids, and a
        dataset there is input that nothing rewrites while it is read)."""
        if not storage.is_uri(self.root):
            return storage.is_file(storage.join(self.root, folder, filename))
        if folder not in self._listings:
            self._listings[folder] = set(storage.listdir(storage.join(self.root, folder)))
        return filename in self._listings[folder]

    def image_labels(self, *, exclude: Iterable[str] = (), refresh: bool = False, num_classes: int = NUM_CLASSES,
                     labels_from: str = "xml") -> dict[str, np.ndarray]:
        """Image labels of every id in the split lists (minus `exclude`) from `labels_from` (see `labels`), cached in
        `<root>/vwe_cls_labels_<labels_from>.json`.

        Cached labels are never recomputed; ids missing from the cache (a split list grew) are computed and added.
        Ids with neither mask nor annotation are left out. `refresh` recomputes everything. With `num_classes` below
        20 (a dataset of the first VOC classes) the vectors are that long, and an image of a later class is an error.
        """
        excluded = set(exclude)
        wanted = sorted({i for s in self.splits() for i in self.split_ids(s)} - excluded)
        cache_path = storage.join(self.root, labels_cache(labels_from))
        cached: dict[str, list[int]] = {}
        unlabeled: set[str] = set()
        if not refresh:
            cached, unlabeled = read_labels_cache(cache_path)
        missing = [i for i in wanted if i not in cached and i not in unlabeled]
        if missing:
            log.info("computing image labels of %d ids under %s", len(missing), self.root)
            read = functools.partial(self.labels, labels_from=labels_from)
            for image_id, labels in zip(missing, _parallel_map(read, missing, "image labels")):
                if labels is None:
                    unlabeled.add(image_id)
                else:
                    cached[image_id] = np.flatnonzero(labels).tolist()
            try:
                write_text(cache_path, labels_cache_text(cached, unlabeled))
            except OSError as err:
                log.warning("%s: cannot write the labels cache (%s); labels will be recomputed next time",
                            cache_path, err.strerror)
        beyond = [i for i in wanted if i in cached and any(c >= num_classes for c in cached[i])]
        if beyond:
            classes = sorted({self.classes[c] for c in cached[beyond[0]] if c >= num_classes})
            raise DataError(f"{self.root}: {len(beyond)} images have classes beyond the first {num_classes} "
                            f"(data.num_classes), e.g. {beyond[0]} ({', '.join(classes)})")
        return {i: multi_hot(cached[i], num_classes) for i in wanted if i in cached}

    def prepare(self, sbd_root: str | Path | None = None) -> dict[str, int]:
        """Builds ImageSets/Segmentation/train_aug.txt and the labels cache; returns the ids per split.

        train_aug = (SBD train + SBD val + VOC train) - VOC val with an SBD folder; without one, the ids with a
        SegmentationClassAug mask + VOC train - VOC val (METHOD §6).
        """
        train, val = self.split_ids("train"), self.split_ids("val")
        aug_dir = storage.join(self.root, "SegmentationClassAug")
        if sbd_root is not None:
            sbd_train, sbd_val = read_sbd_splits(sbd_root)
            pool = set(sbd_train) | set(sbd_val)
        elif storage.is_dir(aug_dir):
            pool = {name.removesuffix(".png") for name in storage.listdir(aug_dir) if name.endswith(".png")}
        else:
            log.warning("%s: no SBD folder and no SegmentationClassAug/: train_aug = train - val", self.root)
            pool = set()
        train_aug = sorted((pool | set(train)) - set(val))
        write_text(self.split_path("train_aug"), "\n".join(train_aug) + "\n")
        log.info("wrote %s (%d ids)", self.split_path("train_aug"), len(train_aug))
        for source in ("xml", "masks"):
            self.image_labels(refresh=True, labels_from=source)
        return {split: len(self.split_ids(split)) for split in self.splits()}

    def check(self, *, skip_bad: bool = False, sbd_root: str | Path | None = None,
              report_dir: str | Path | None = None) -> CheckReport:
        """Validates the layout and every listed file; a problem is a DataError naming the file.

        With `skip_bad`, bad ids are recorded (id, file, problem) in `<report_dir or root>/vwe_bad_files.json` and
        the check goes on; missing folders and empty split lists still raise. Ids of `test` need only a JPEG; ids of
        `train_aug` need a mask or an annotation; ids of any other split need a mask.
        """
        for folder in (storage.join(self.root, "JPEGImages"), self.split_dir):
            if not storage.is_dir(folder):
                raise DataError(f"{folder}: folder missing")
        splits = self.splits()
        if not splits:
            raise DataError(f"{self.split_dir}: no split lists (expected train.txt, val.txt, ...)")
        lists = {split: self.split_ids(split) for split in splits}
        counts = {split: len(ids) for split, ids in lists.items()}
        needs: dict[str, str] = {}  # id -> strongest requirement: "mask" > "labels" > "image"
        rank = {"image": 0, "labels": 1, "mask": 2}
        for split, split_ids in lists.items():
            need = {"test": "image", "train_aug": "labels"}.get(split, "mask")
            for image_id in split_ids:
                needs[image_id] = max(needs.get(image_id, need), need, key=rank.__getitem__)
        if "mask" in needs.values() and not any(
                storage.is_dir(storage.join(self.root, f)) for f in ("SegmentationClassAug", "SegmentationClass")):
            raise DataError(f"{storage.join(self.root, 'SegmentationClass')}: folder missing "
                            "(and no SegmentationClassAug/)")

        report = CheckReport(counts=counts, notes=count_notes(counts) if self.classes == CLASSES else [])
        if sbd_root is not None:
            sbd_train, sbd_val = read_sbd_splits(sbd_root)
            report.notes.append(f"SBD lists: train {len(sbd_train):,}, val {len(sbd_val):,}")
        ids = sorted(needs)
        log.info("checking %d ids under %s", len(ids), self.root)
        disagree, both = [], 0
        for image_id, (bad, classes) in zip(ids, _parallel_map(lambda i: self._check_id(i, needs[i]), ids, "checked")):
            if classes is not None:
                both += 1
                if classes[0] != classes[1]:
                    disagree.append((image_id, *classes))
            if bad is None:
                continue
            if not skip_bad:
                raise DataError(f"{bad.file}: {bad.problem} (image id {bad.image_id})")
            log.warning("bad file %s: %s", bad.file, bad.problem)
            report.bad.append(bad)
        if disagree:
            image_id, from_mask, from_xml = disagree[0]
            report.notes.append(
                f"note: {len(disagree)} of the {both} images with both a mask and an annotation list other classes in "
                f"each, e.g. {image_id} (mask: {self._names(from_mask)}; annotation: {self._names(from_xml)}); "
                "data.labels_from decides which gives the image labels (xml, the authors' choice, by default)")
        report.label_disagreements = len(disagree)
        if skip_bad:
            report.report_path = storage.join(report_dir or self.root, BAD_FILES_REPORT)
            write_json(report.report_path, {"root": str(self.root), "bad": [
                {"id": b.image_id, "file": b.file, "problem": b.problem} for b in report.bad]})
        return report

    def _names(self, classes: list[int]) -> str:
        return ", ".join(self.classes[c] for c in classes) or "none"

    def _check_id(self, image_id: str, need: str) -> tuple[BadFile | None, tuple[list[int], list[int]] | None]:
        """(the problem of an id, or None; its classes from the mask and from the XML when it has both)."""
        image_path = self.image_path(image_id)
        try:
            size = _decode(image_path, "image").size
        except DataError as err:
            return _bad(image_id, image_path, err), None
        mask_path = self.mask_path(image_id)
        xml = self.annotation_path(image_id)
        has_xml = self._has_file("Annotations", f"{image_id}.xml")
        from_xml = None
        if has_xml:
            try:
                from_xml = np.flatnonzero(labels_from_annotation(xml)).tolist()
            except DataError as err:
                return _bad(image_id, xml, err), None
        if mask_path is not None:
            try:
                mask = read_mask(mask_path)
                from_mask = mask_classes(mask, mask_path, len(self.classes))
            except DataError as err:
                return _bad(image_id, mask_path, err), None
            if mask.shape[::-1] != size:
                return BadFile(image_id, str(mask_path), f"mask size {mask.shape[1]}x{mask.shape[0]} (WxH) differs "
                                                         f"from the image size {size[0]}x{size[1]}"), None
            return None, (from_mask, from_xml) if from_xml is not None else None
        if need == "mask":
            return BadFile(image_id, str(storage.join(self.root, "SegmentationClass", f"{image_id}.png")),
                           "mask missing (looked in SegmentationClassAug/ and SegmentationClass/)"), None
        if need == "labels" and not has_xml:
            return BadFile(image_id, str(xml), "no mask and no annotation: the id has no image-level labels"), None
        return None, None


def _bad(image_id: str, path: str | Path, err: DataError) -> BadFile:
    return BadFile(image_id, str(path), str(err).removeprefix(f"{path}: "))


def labels_cache_text(labels: dict[str, list[int]], unlabeled: set[str]) -> str:
    """The labels cache file's content: id -> 0-based classes, and the ids with no labels at all."""
    data = {"format": _CACHE_FORMAT, "labels": dict(sorted(labels.items())), "unlabeled": sorted(unlabeled)}
    return json.dumps(data, separators=(",", ":")) + "\n"


def read_labels_cache(path: str | Path) -> tuple[dict[str, list[int]], set[str]]:
    """(labels, unlabeled) of a labels cache file; empty when it is missing or unreadable (it is recomputed)."""
    try:
        data = json.loads(storage.read_text(path))
    except FileNotFoundError:
        return {}, set()
    except (OSError, ValueError) as err:
        log.warning("%s: unreadable labels cache (%s); recomputing", path, err)
        return {}, set()
    if not isinstance(data, dict) or data.get("format") != _CACHE_FORMAT:
        log.warning("%s: labels cache of another format; recomputing", path)
        return {}, set()
    return data["labels"], set(data["unlabeled"])


def _parallel_map(fn: Callable[[T], R], items: list[T], what: str) -> Iterator[R]:
    """fn over items in order, on a few threads (PIL decodes without the GIL), logging progress every 10 s."""
    executor = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    start = last = time.monotonic()
    try:
        for done, result in enumerate(executor.map(fn, items), 1):
            yield result
            now = time.monotonic()
            if now - last >= 10:
                log.info("%s: %d/%d (%.0f/s)", what, done, len(items), done / (now - start))
                last = now
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
