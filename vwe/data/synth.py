"""A synthetic benchmark in the VOC 2012 devkit layout, built to show the failure modes that VWE targets.

`generate` writes JPEGImages/*.jpg, SegmentationClass/*.png and SegmentationClassAug/*.png (palette masks with a
255 band along every object boundary as in VOC, 2 pixels wide in 64-pixel images, 4 at 375), SegmentationParts/*.png
(where each object's class-unique part is, for the ablation's diagnostics), Annotations/*.xml
(VOC XML, one `<object>` per visible object) and ImageSets/Segmentation/{train,val,test,train_aug}.txt. `train` is
the first part of `train_aug`; `val` and `test` are disjoint from it; `test` has images and XML but no masks. Ids
look like VOC ids (2100_000001 for train_aug, 2101_... for val, 2102_... for test). Each image is a function of
the settings (seed, size, number of classes) and its id alone: the same settings give byte-identical files,
whatever the number of images or worker processes.

What an image contains:

- 1 to 3 objects (50/33/17 %) of the first `num_classes` VOC classes, as rotated ellipses, rectangles or smooth
  blobs of varied size and position. The object drawn last (on top, never occluded) of image i has class
  i - 1 mod num_classes, so every class appears in every split of at least num_classes images.
- Partial discrimination. The classes form groups of about four (aeroplane, bicycle, bird, boat | bottle, bus,
  car, cat | ...). Most of an object is its group's body texture (stripes, checks, dots, waves or rings in the
  group's muted colours), the same for every class of the group. Only a small part, about a tenth of the object,
  tells the classes apart: a disc in the class's own saturated hue, striped at the class's own angle. A classifier
  can get the image labels right from that part alone, so its CAMs cover the part and miss the body, while the
  mask covers the whole object: the partial-activation problem of CAMs.
- Background bias. Aeroplane and bird come on a sky background, boat on water, cow, horse and sheep on grass,
  each with probability 0.85 (a little less for water and grass when both kinds of class meet: an image has one
  ground area); other images get a neutral textured background, and 10 % of them a stray sky, water or grass
  area, so context hints at a class without proving it (boats and water in VOC).
- Nuisances: colour and size jitter per object, a brightness gradient across each body, faint stripes on some
  neutral backgrounds, 0-3 plain clutter discs of random hue, a random global brightness, pixel noise and JPEG
  compression. No single pixel colour gives the segmentation away.
"""
from __future__ import annotations

import colorsys
import functools
import io
import json
import math
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vwe import storage
from vwe.data.voc import BAD_FILES_REPORT, CLASSES, IGNORE, VOCDataset, encode_mask, labels_cache
from vwe.errors import ConfigError, DataError
from vwe.io import atomic_path, write_json, write_text

PARTS_FOLDER = "SegmentationParts"  # <id>.png: class + 1 on each object's class-unique part (diagnostics only)
MARKER = "vwe_synth.json"  # written into the root: proves the folder is ours (so it may be regenerated)
_FORMAT = 3  # 2: the classes of a group got far-apart part hues and angles; 3: part masks, the two knobs
SPLIT_YEARS = {"train_aug": 2100, "val": 2101, "test": 2102}
OBJECT_COUNT_P = (0.5, 0.33, 0.17)  # 1, 2 or 3 objects per image
CONTEXT_OF = {"aeroplane": "sky", "bird": "sky", "boat": "water", "cow": "grass", "horse": "grass", "sheep": "grass"}
CONTEXT_P = 0.85  # P(the class's context is in the background | the class is in the image): synth.context_bias
STRAY_CONTEXT_P = 0.10  # P(some context area | no context class in the image)
GROUP_PATTERNS = ("stripes", "checks", "dots", "waves", "rings")
GROUP_COLOURS = (  # two muted colours per group body
    ((150, 118, 88), (92, 70, 58)), ((118, 128, 150), (68, 74, 96)), ((162, 150, 108), (102, 94, 70)),
    ((142, 108, 130), (86, 64, 80)), ((128, 140, 108), (74, 86, 64)),
)
JPEG_QUALITY = 90
_CHUNK = 32  # images per worker task


@dataclass(frozen=True)
class Design:
    """The fixed appearance of each class: body group, unique-part colour and stripe angle, background context."""

    num_classes: int
    group_of: tuple[int, ...]
    part_colours: np.ndarray  # num_classes x 3, saturated hues
    part_angles: np.ndarray  # radians, image frame
    context_of: dict[int, str]

    @property
    def groups(self) -> list[list[str]]:
        members: dict[int, list[str]] = {}
        for c, g in enumerate(self.group_of):
            members.setdefault(g, []).append(CLASSES[c])
        return list(members.values())


@functools.lru_cache(maxsize=None)
def design(num_classes: int) -> Design:
    """The class appearance for the first `num_classes` VOC classes (independent of the seed)."""
    num_groups = min(len(GROUP_PATTERNS), math.ceil(num_classes / 4))
    group_of = tuple(c * num_groups // num_classes for c in range(num_classes))
    # the classes of a group (same body) get hues and stripe angles spread evenly over the circle, each group
    # shifted a little, so the part alone tells any two classes apart at a glance, as in VOC
    hues, angles = [], []
    for c, g in enumerate(group_of):
        members = group_of.count(g)
        rank = c - group_of.index(g)
        hue = (rank / members + g / (num_groups * members)) % 1.0
        hues.append(colorsys.hsv_to_rgb(hue, 0.85, 0.95))
        angles.append(math.pi * (rank / members + g / (2 * num_groups * members)))
    return Design(
        num_classes=num_classes,
        group_of=group_of,
        part_colours=np.array(hues, dtype=np.float32) * 255,
        part_angles=np.array(angles, dtype=np.float32),
        context_of={c: CONTEXT_OF[name] for c, name in enumerate(CLASSES[:num_classes]) if name in CONTEXT_OF},
    )


@dataclass
class SynthObject:
    """One drawn object as it ends up in the image: 0-based class, visible box (x0, y0, x1, y1 inclusive; None when
    fully hidden), pixel counts of its visible interior and visible class-unique part (outside the 255 band)."""

    class_index: int
    box: tuple[int, int, int, int] | None
    area: int
    part_area: int


@dataclass
class SynthImage:
    image: np.ndarray  # uint8 H x W x 3
    mask: np.ndarray  # uint8 H x W: 0 background, class + 1, 255 boundary band
    instances: np.ndarray  # uint8 H x W: 0 background, i + 1 where objects[i] is visible (band included)
    parts: np.ndarray  # uint8 H x W: i + 1 where the class-unique part of objects[i] is visible (band included)
    objects: list[SynthObject]  # every drawn object, in drawing order (the last one is on top)
    contexts: tuple[str, ...]  # context areas in the background ("sky", "water", "grass")

    @property
    def part_mask(self) -> np.ndarray:
        """uint8 H x W: class + 1 where that class's unique part is visible, else 0 (SegmentationParts/)."""
        labels_of = np.concatenate([[0], [o.class_index + 1 for o in self.objects]]).astype(np.uint8)
        return labels_of[self.parts]


def render(rng: np.random.Generator, height: int, width: int, num_classes: int = 20,
           top_class: int | None = None, part_scale: float = 1.0, context_bias: float = CONTEXT_P) -> SynthImage:
    """Draws one image with its mask; `top_class` fixes the class of the object drawn last (on top).

    `part_scale` scales the radius of each object's class-unique part (1: about a tenth of the object's area);
    `context_bias` is the probability that a context class's background (sky, water, grass) is drawn. The defaults
    draw exactly the benchmark's images.
    """
    spec = design(num_classes)
    count = int(rng.choice(len(OBJECT_COUNT_P), p=OBJECT_COUNT_P)) + 1
    classes = rng.integers(num_classes, size=count)
    if top_class is not None:
        classes[-1] = top_class
    contexts = _pick_contexts(rng, classes, spec, context_bias)
    image = _background(rng, height, width, contexts)
    _clutter(rng, image)
    instances = np.zeros((height, width), np.uint8)
    parts = np.zeros((height, width), np.uint8)
    for index, class_index in enumerate(classes):
        _paint_object(rng, image, instances, parts, index + 1, int(class_index), spec, part_scale)
    image *= rng.uniform(0.85, 1.15)
    image += rng.standard_normal((height, width, 1), dtype=np.float32) * 6.0  # luminance noise
    image = np.clip(image, 0, 255).astype(np.uint8)

    labels_of = np.concatenate([[0], classes + 1]).astype(np.uint8)
    labels = labels_of[instances]
    band = _boundary(instances, radius=max(1, round(min(height, width) / 150)))
    mask = np.where(band, np.uint8(IGNORE), labels)
    objects = []
    for index, class_index in enumerate(classes):
        visible = (instances == index + 1) & ~band
        ys, xs = np.nonzero(visible)
        box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())) if ys.size else None
        part_area = int(np.count_nonzero(visible & (parts == index + 1)))
        objects.append(SynthObject(int(class_index), box, int(ys.size), part_area))
    return SynthImage(image, mask, instances, parts, objects, contexts)


def _pick_contexts(rng: np.random.Generator, classes: np.ndarray, spec: Design,
                   context_bias: float = CONTEXT_P) -> tuple[str, ...]:
    wanted = sorted({spec.context_of[int(c)] for c in classes if int(c) in spec.context_of})
    if wanted:
        chosen = [name for name in wanted if rng.random() < context_bias]
    else:
        chosen = [str(rng.choice(["sky", "water", "grass"]))] if rng.random() < STRAY_CONTEXT_P else []
    ground = [name for name in chosen if name != "sky"]
    if len(ground) > 1:  # one ground area per image: water or grass
        chosen = [name for name in chosen if name == "sky"] + [str(rng.choice(ground))]
    return tuple(sorted(chosen))


def _smooth(rng: np.random.Generator, height: int, width: int, cells: tuple[int, int]) -> np.ndarray:
    """Smooth random field in [0, 1] (bicubic upsampling of a coarse random grid)."""
    coarse = Image.fromarray(rng.random(cells, dtype=np.float32))
    return np.clip(np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC)), 0.0, 1.0)


def _muted(rng: np.random.Generator) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.1, 0.45), rng.uniform(0.35, 0.85))
    return np.array(rgb, dtype=np.float32) * 255


def _blend(a: np.ndarray | tuple, b: np.ndarray | tuple, t: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a + t[..., None] * (b - a)


def _background(rng: np.random.Generator, height: int, width: int, contexts: tuple[str, ...]) -> np.ndarray:
    image = _blend(_muted(rng), _muted(rng), _smooth(rng, height, width, (3, 4)))
    if rng.random() < 0.4:  # faint wallpaper stripes, so stripes alone do not mean "object"
        angle, period = rng.uniform(0, math.pi), rng.uniform(4, 12)
        ys, xs = np.ogrid[:height, :width]
        image *= (1 + 0.08 * np.sin(2 * math.pi * (xs * math.cos(angle) + ys * math.sin(angle)) / period))[..., None]
    ground = next((name for name in contexts if name != "sky"), None)
    if "sky" in contexts and ground:
        top = start = int(height * rng.uniform(0.35, 0.65))  # sky above the horizon, ground below
    else:
        top, start = int(height * rng.uniform(0.55, 1.0)), int(height * rng.uniform(0.0, 0.45))
    if "sky" in contexts:
        image[:top] = _sky(rng, top, width)
    if ground:
        image[start:] = (_water if ground == "water" else _grass)(rng, height - start, width)
    return image


def _sky(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    rows = np.linspace(0, 1, height, dtype=np.float32)[:, None] * np.ones((1, width), np.float32)
    sky = _blend((95, 150, 215), (185, 205, 235), rows)
    clouds = np.clip((_smooth(rng, height, width, (3, 6)) - 0.55) * 2.5, 0, 0.7)
    return _blend(sky, (245, 245, 245), clouds)


def _water(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    ys, xs = np.ogrid[:height, :width]
    period, wavelength, phase = rng.uniform(8, 16), width / rng.uniform(2, 4), rng.uniform(0, 2 * math.pi)
    waves = np.sin(2 * math.pi * (ys / period + 0.8 * np.sin(2 * math.pi * xs / wavelength + phase)))
    return _blend((25, 75, 115), (60, 120, 155), (0.5 + 0.5 * waves).astype(np.float32))


def _grass(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    blades = np.repeat(rng.random((height // 6 + 1, width), dtype=np.float32), 6, axis=0)[:height]
    return _blend((55, 115, 35), (115, 165, 60), 0.6 * blades + 0.4 * _smooth(rng, height, width, (2, 3)))


def _clutter(rng: np.random.Generator, image: np.ndarray) -> None:
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(0, 4))):
        radius = rng.uniform(0.03, 0.08) * min(height, width)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ys, xs = np.ogrid[:height, :width]
        disc = (ys - cy) ** 2 + (xs - cx) ** 2 <= radius ** 2
        rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.3, 0.9), rng.uniform(0.4, 0.95))
        image[disc] = np.array(rgb, np.float32) * 255


def _paint_object(rng: np.random.Generator, image: np.ndarray, instances: np.ndarray, parts: np.ndarray,
                  index: int, class_index: int, spec: Design, part_scale: float = 1.0) -> None:
    height, width = instances.shape
    a = rng.uniform(0.09, 0.3) * min(height, width)  # half-axes in pixels
    b = a * rng.uniform(0.6, 1.5)
    theta = rng.uniform(0, math.pi)
    cy, cx = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
    reach = 1.45 * max(a, b)  # covers any rotation and the blob's bumps
    y0, y1 = max(0, int(cy - reach)), min(height, int(cy + reach) + 1)
    x0, x1 = max(0, int(cx - reach)), min(width, int(cx + reach) + 1)
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
    cos, sin = np.float32(math.cos(theta)), np.float32(math.sin(theta))
    u, v = dx * cos + dy * sin, dy * cos - dx * sin  # object frame

    shape = int(rng.integers(3))
    if shape == 0:
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1
    elif shape == 1:
        inside = (np.abs(u) <= 0.85 * a) & (np.abs(v) <= 0.85 * b)
    else:
        bound = np.ones_like(u)
        angle = np.arctan2(v / b, u / a)
        for k, amplitude, phase in zip((2, 3, 4), rng.uniform(0, 0.18, 3), rng.uniform(0, 2 * math.pi, 3)):
            bound += amplitude * np.cos(k * angle + phase)
        inside = (u / a) ** 2 + (v / b) ** 2 <= bound ** 2

    group = spec.group_of[class_index]
    pattern = _pattern(GROUP_PATTERNS[group], u, v, max(2.5, min(a, b) * rng.uniform(0.3, 0.5)))
    light, dark = (np.asarray(c, np.float32) + rng.normal(0, 12, 3).astype(np.float32) for c in GROUP_COLOURS[group])
    body = np.where(pattern[..., None], light, dark) * (1 + 0.15 * np.clip(u / a, -1, 1))[..., None]

    radius = max(1.5, rng.uniform(0.3, 0.42) * min(a, b) * part_scale)
    pu, pv = rng.uniform(-0.5, 0.5) * a, rng.uniform(-0.5, 0.5) * b
    part = inside & ((u - pu) ** 2 + (v - pv) ** 2 <= radius ** 2)
    angle = spec.part_angles[class_index] + rng.uniform(-0.15, 0.15)
    period = max(2.0, radius * 0.5)
    stripe = (dx * math.cos(angle) + dy * math.sin(angle)) % period < period / 2
    colour = spec.part_colours[class_index] + rng.normal(0, 10, 3).astype(np.float32)
    body[part] = np.where(stripe[part][:, None], colour, colour * 0.6)

    region = image[y0:y1, x0:x1]
    region[inside] = body[inside]
    instances[y0:y1, x0:x1][inside] = index
    part_region = parts[y0:y1, x0:x1]
    part_region[inside] = 0
    part_region[part] = index


def _pattern(kind: str, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """Boolean body texture in object coordinates (it turns with the object)."""
    if kind == "stripes":
        return np.sin(2 * math.pi * u / period) > 0
    if kind == "checks":
        return (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    if kind == "dots":
        return ((u % period) - period / 2) ** 2 + ((v % period) - period / 2) ** 2 < (0.32 * period) ** 2
    if kind == "waves":
        return np.sin(2 * math.pi * (u / period + 0.35 * np.sin(2 * math.pi * v / (1.7 * period)))) > 0
    return np.sin(2 * math.pi * np.sqrt(u ** 2 + v ** 2) / period) > 0  # rings


def _boundary(instances: np.ndarray, radius: int) -> np.ndarray:
    """Pixels whose (2r+1)^2 window holds more than one instance value: a band 2r wide along every boundary."""
    return _window(instances, radius, np.maximum) != _window(instances, radius, np.minimum)


def _window(values: np.ndarray, radius: int, op: np.ufunc) -> np.ndarray:
    height, width = values.shape
    padded = np.pad(values, radius, mode="edge")
    rows = padded[:height]
    for d in range(1, 2 * radius + 1):
        rows = op(rows, padded[d:d + height])
    out = rows[:, :width]
    for d in range(1, 2 * radius + 1):
        out = op(out, rows[:, d:d + width])
    return out


def annotation_xml(image_id: str, sample: SynthImage, segmented: bool) -> str:
    """VOC-style annotation XML of one image (boxes 1-based, inclusive)."""
    height, width = sample.mask.shape
    lines = ["<annotation>", "\t<folder>VOC2012</folder>", f"\t<filename>{image_id}.jpg</filename>",
             "\t<source>", "\t\t<database>vwe synthetic benchmark</database>", "\t</source>",
             "\t<size>", f"\t\t<width>{width}</width>", f"\t\t<height>{height}</height>", "\t\t<depth>3</depth>",
             "\t</size>", f"\t<segmented>{int(segmented)}</segmented>"]
    for obj in sample.objects:
        if obj.box is None:
            continue
        x0, y0, x1, y1 = obj.box
        truncated = int(x0 == 0 or y0 == 0 or x1 == width - 1 or y1 == height - 1)
        lines += ["\t<object>", f"\t\t<name>{CLASSES[obj.class_index]}</name>", "\t\t<pose>Unspecified</pose>",
                  f"\t\t<truncated>{truncated}</truncated>", "\t\t<difficult>0</difficult>", "\t\t<bndbox>",
                  f"\t\t\t<xmin>{x0 + 1}</xmin>", f"\t\t\t<ymin>{y0 + 1}</ymin>",
                  f"\t\t\t<xmax>{x1 + 1}</xmax>", f"\t\t\t<ymax>{y1 + 1}</ymax>", "\t\t</bndbox>", "\t</object>"]
    return "\n".join(lines + ["</annotation>"]) + "\n"


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _write_chunk(root: Path, split: str, indices: range, height: int, width: int, num_classes: int,
                 seed: int, part_scale: float = 1.0, context_bias: float = CONTEXT_P) -> int:
    """Renders and writes images `indices` (1-based) of one split; image i depends only on (seed, split, i) and
    the knobs."""
    code = list(SPLIT_YEARS).index(split)
    for i in indices:
        image_id = f"{SPLIT_YEARS[split]}_{i:06d}"
        rng = np.random.default_rng((seed, code, i))
        sample = render(rng, height, width, num_classes, top_class=(i - 1) % num_classes, part_scale=part_scale,
                        context_bias=context_bias)
        buffer = io.BytesIO()
        Image.fromarray(sample.image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        _write_bytes(root / "JPEGImages" / f"{image_id}.jpg", buffer.getvalue())
        has_mask = split != "test"
        if has_mask:
            mask = encode_mask(sample.mask)
            _write_bytes(root / "SegmentationClass" / f"{image_id}.png", mask)
            _write_bytes(root / "SegmentationClassAug" / f"{image_id}.png", mask)
            _write_bytes(root / PARTS_FOLDER / f"{image_id}.png", encode_mask(sample.part_mask))
        write_text(root / "Annotations" / f"{image_id}.xml", annotation_xml(image_id, sample, has_mask))
    return len(indices)


def _split_sizes(splits: dict[str, int]) -> dict[str, int]:
    unknown = sorted(set(splits) - {"train_aug", "train", "val", "test"})
    if unknown:
        raise ConfigError(f"synth.splits: unknown split {unknown[0]!r} (expected train_aug, train, val, test)")
    sizes = {name: int(splits.get(name, 0)) for name in ("train_aug", "train", "val", "test")}
    if any(n < 0 for n in sizes.values()):
        raise ConfigError(f"synth.splits: sizes must be >= 0, got {sizes}")
    if sizes["train"] > sizes["train_aug"]:
        raise ConfigError(f"synth.splits: train ({sizes['train']}) must not exceed train_aug ({sizes['train_aug']}),"
                          " since train is a subset of train_aug")
    if not sizes["train_aug"] + sizes["val"] + sizes["test"]:
        raise ConfigError("synth.splits: every split is empty")
    return sizes


def _claim(root: Path, params: dict[str, Any]) -> bool:
    """Makes `root` ready for `params`; True when it already holds exactly this benchmark, complete."""
    marker = root / MARKER
    if marker.is_file():
        try:
            previous = json.loads(marker.read_text())
        except ValueError:
            previous = {}
        if previous.get("params") == params and previous.get("complete") and previous.get("format") == _FORMAT:
            return True
        for folder in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", PARTS_FOLDER, "Annotations",
                       "ImageSets"):
            shutil.rmtree(root / folder, ignore_errors=True)
        for name in (labels_cache("xml"), labels_cache("masks"), BAD_FILES_REPORT):
            (root / name).unlink(missing_ok=True)
    elif root.exists() and any(root.iterdir()):
        raise DataError(f"{root}: folder is not empty and holds no synthetic benchmark ({MARKER} missing); "
                        "refusing to write into it")
    write_json(marker, {"format": _FORMAT, "params": params, "complete": False})
    return False


def generate(root: str | Path, splits: dict[str, int], height: int, width: int, num_classes: int = 20,
             seed: int = 0, *, part_scale: float = 1.0, context_bias: float = CONTEXT_P, workers: int = 1,
             check: bool = False) -> dict[str, Any]:
    """Writes the synthetic benchmark into `root` (the VOC2012 folder) and returns a summary.

    `splits` gives the image count per split: train_aug, train (the first ids of train_aug), val, test. A root
    that already holds this exact benchmark is left as it is; one holding another synthetic benchmark is
    regenerated; any other non-empty folder is refused. `part_scale` and `context_bias` are `render`'s knobs.
    `check` reads the result back with `VOCDataset.check`.
    """
    if not 1 <= num_classes <= len(CLASSES):
        raise ConfigError(f"synth.num_classes: expected 1..{len(CLASSES)}, got {num_classes}")
    if height < 16 or width < 16:
        raise ConfigError(f"synth.height/width: images must be at least 16 x 16, got {height} x {width}")
    if storage.is_uri(root):
        raise ConfigError(f"{root}: the synthetic benchmark is written to a local or NFS folder, not an object "
                          "store; generate it locally and upload it (e.g. `aws s3 sync`), then set data.root to the "
                          "URI with synth.enabled=false")
    sizes = _split_sizes(splits)
    root = Path(root)
    if part_scale <= 0 or not 0 <= context_bias <= 1:
        raise ConfigError(f"synth: part_scale must be > 0 and context_bias in [0, 1], got {part_scale}, {context_bias}")
    params = {"splits": sizes, "height": height, "width": width, "num_classes": num_classes, "seed": seed,
              "part_scale": part_scale, "context_bias": context_bias}
    start = time.perf_counter()
    reused = _claim(root, params)
    if not reused:
        tasks = [(root, split, range(lo, min(lo + _CHUNK, sizes[split] + 1)), height, width, num_classes, seed,
                  part_scale, context_bias)
                 for split in SPLIT_YEARS for lo in range(1, sizes[split] + 1, _CHUNK)]
        if workers > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                list(pool.map(_write_chunk, *zip(*tasks)))
        else:
            for task in tasks:
                _write_chunk(*task)
        ids = {split: [f"{SPLIT_YEARS[split]}_{i:06d}" for i in range(1, sizes[split] + 1)] for split in SPLIT_YEARS}
        ids["train"] = ids["train_aug"][:sizes["train"]]
        for split, split_ids in ids.items():
            if split_ids:
                write_text(root / "ImageSets" / "Segmentation" / f"{split}.txt", "\n".join(split_ids) + "\n")
        write_json(root / MARKER, {"format": _FORMAT, "params": params, "complete": True})
    seconds = time.perf_counter() - start
    images = sizes["train_aug"] + sizes["val"] + sizes["test"]
    spec = design(num_classes)
    summary: dict[str, Any] = {
        "root": str(root), "reused": reused, "splits": sizes, "size": [height, width], "seed": seed,
        "part_scale": part_scale, "context_bias": context_bias,
        "classes": list(CLASSES[:num_classes]), "groups": spec.groups,
        "contexts": {CLASSES[c]: name for c, name in spec.context_of.items()},
        "images": images, "seconds": round(seconds, 3),
        "images_per_s": None if reused else round(images / max(seconds, 1e-9), 1),
    }
    if check:
        summary["check"] = VOCDataset(root).check().counts
    return summary
