"""The synthetic benchmark (`vwe.data.synth.render`) written in MS COCO's layout, to exercise `vwe.data.coco`.

`generate_coco(root, ...)` writes

    <root>/<split>/COCO_<split>_<12-digit id>.jpg
    <root>/annotations/instances_<split>.json

for the splits train2014 and val2014. Image i (1-based; image ids start at 1 in each split) is
`render(np.random.default_rng((seed, SPLIT_CODES[split], i)), height, width, num_classes, top_class=(i - 1) %
num_classes)`. Each visible object (`instances == index + 1`; a fully hidden one is left out) becomes one
non-crowd annotation with the COCO category of its VOC class (`VOC_TO_COCO`) and a compressed RLE of its pixels.
The synthetic masks' 255 boundary band is not part of COCO's format: the annotations cover the band too.

Knobs for the converter's special cases: with `empty_every=k`, every k-th image (i % k == 0) has no annotation;
with `crowd_every=k`, every k-th other image also gets one crowd annotation (iscrowd 1, uncompressed RLE) of the
class of its first annotated object, over the background pixels of the rectangle `crowd_box(height, width)` (none
when that rectangle holds no background). Same arguments, same files.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from vwe.data.coco import COCO_CATEGORY_IDS, COCO_CLASSES, VOC_TO_COCO
from vwe.data.synth import render
from vwe.data.voc import CLASSES
from vwe.errors import ConfigError
from vwe.io import atomic_path, write_text

SPLIT_CODES = {"train2014": 0, "val2014": 1}  # the middle element of each image's rng seed
DEFAULT_SPLITS = {"train2014": 64, "val2014": 32}
JPEG_QUALITY = 95
_SUPERCATEGORY_SIZES = (  # COCO's supercategories, each over the next n classes of COCO_CLASSES
    ("person", 1), ("vehicle", 8), ("outdoor", 5), ("animal", 10), ("accessory", 5), ("sports", 10),
    ("kitchen", 7), ("food", 10), ("furniture", 6), ("electronic", 6), ("appliance", 5), ("indoor", 7),
)
SUPERCATEGORIES = tuple(name for name, count in _SUPERCATEGORY_SIZES for _ in range(count))
assert len(SUPERCATEGORIES) == len(COCO_CLASSES)


def coco_category_id(voc_class_index: int) -> int:
    """COCO category id of a 0-based VOC class index."""
    return COCO_CATEGORY_IDS[COCO_CLASSES.index(VOC_TO_COCO[CLASSES[voc_class_index]])]


def crowd_box(height: int, width: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1), ends exclusive: the top-left quarter-size rectangle that crowd annotations are drawn in."""
    return 0, max(1, height // 4), 0, max(1, width // 4)


def file_name(split: str, image_id: int) -> str:
    return f"COCO_{split}_{image_id:012d}.jpg"


def compressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of a bool H x W mask, `counts` as a str (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE of a bool H x W mask: run lengths in column-major order, starting with a 0-run."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(r) for r in runs]}


def _annotation(ann_id: int, image_id: int, category_id: int, mask: np.ndarray, crowd: bool) -> dict[str, Any]:
    segmentation = uncompressed_rle(mask) if crowd else compressed_rle(mask)
    ys, xs = np.nonzero(mask)
    bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": int(crowd),
            "segmentation": segmentation, "area": int(np.count_nonzero(mask)), "bbox": bbox}


def _check(splits: Mapping[str, int], height: int, width: int, num_classes: int) -> None:
    unknown = sorted(set(splits) - set(SPLIT_CODES))
    if unknown:
        raise ConfigError(f"synth_coco.splits: unknown split {unknown[0]!r} (expected {', '.join(SPLIT_CODES)})")
    if any(int(n) < 0 for n in splits.values()):
        raise ConfigError(f"synth_coco.splits: sizes must be >= 0, got {dict(splits)}")
    if not 1 <= num_classes <= len(CLASSES):
        raise ConfigError(f"synth_coco.num_classes: expected 1..{len(CLASSES)}, got {num_classes}")
    if height < 16 or width < 16:
        raise ConfigError(f"synth_coco.height/width: images must be at least 16 x 16, got {height} x {width}")


def generate_coco(root: str | Path, splits: Mapping[str, int] = DEFAULT_SPLITS, height: int = 96, width: int = 128,
                  seed: int = 0, num_classes: int = 20, empty_every: int = 0, crowd_every: int = 0) -> dict[str, Any]:
    """Writes the synthetic benchmark into `root` in COCO's layout (see the module docstring); returns a summary
    with per split the counts of images, annotations, images without annotation and crowd annotations."""
    _check(splits, height, width, num_classes)
    root = Path(root)
    categories = [{"id": cid, "name": name, "supercategory": sup}
                  for cid, name, sup in zip(COCO_CATEGORY_IDS, COCO_CLASSES, SUPERCATEGORIES)]
    y0, y1, x0, x1 = crowd_box(height, width)
    summary: dict[str, Any] = {"root": str(root), "size": [height, width], "seed": seed, "num_classes": num_classes,
                               "splits": {}}
    for split, count in splits.items():
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        empty = crowds = 0
        for i in range(1, int(count) + 1):
            rng = np.random.default_rng((seed, SPLIT_CODES[split], i))
            sample = render(rng, height, width, num_classes, top_class=(i - 1) % num_classes)
            name = file_name(split, i)
            buffer = io.BytesIO()
            Image.fromarray(sample.image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
            with atomic_path(root / split / name) as tmp:
                tmp.write_bytes(buffer.getvalue())
            images.append({"id": i, "file_name": name, "height": height, "width": width})
            if empty_every > 0 and i % empty_every == 0:
                empty += 1
                continue
            first_category = None
            for index, obj in enumerate(sample.objects):
                visible = sample.instances == index + 1
                if not visible.any():
                    continue
                category_id = coco_category_id(obj.class_index)
                first_category = category_id if first_category is None else first_category
                annotations.append(_annotation(len(annotations) + 1, i, category_id, visible, crowd=False))
            if crowd_every > 0 and i % crowd_every == 0 and first_category is not None:
                region = np.zeros((height, width), dtype=bool)
                region[y0:y1, x0:x1] = True
                region &= sample.instances == 0
                if region.any():
                    annotations.append(_annotation(len(annotations) + 1, i, first_category, region, crowd=True))
                    crowds += 1
        data = {"info": {"description": "vwe synthetic benchmark in COCO format", "seed": seed},
                "images": images, "annotations": annotations, "categories": categories}
        write_text(root / "annotations" / f"instances_{split}.json", json.dumps(data, separators=(",", ":")) + "\n")
        summary["splits"][split] = {"images": len(images), "annotations": len(annotations), "empty": empty,
                                    "crowd": crowds}
    return summary
