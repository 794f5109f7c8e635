"""The report's pictures: label maps and CAMs as RGB, the example grid and the codebook drawn as the image patches
most similar to each visual word (the paper's codebook figure), saved as PNGs (the charts are in `plots`)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from vwe import storage
from vwe.cam import load_cam, normalize_image
from vwe.data.voc import IGNORE, VOCDataset, palette, read_image, read_mask
from vwe.io import atomic_path
from vwe.report.reading import Run
from vwe.evaluation import CLASS_NAMES

PALETTE = np.array(palette(), dtype=np.uint8).reshape(256, 3)  # index 255 (unsure / ignore) is off-white
CELL = (150, 200)  # example cell box, H x W px; images are scaled to fit, keeping their aspect
PATCH_PX = 64  # display size of a visual-word patch
_GAP = 6
_MISSING_GREY = 232

PictureReader = Callable[[str, np.ndarray], "np.ndarray | None"]  # (image id, its RGB image) -> RGB picture or None


@dataclass
class WordPatches:
    """One visual word of the codebook figure."""

    word: int
    usage: float  # share of the sampled feature locations whose nearest word (cosine) this is
    background_share: float | None  # share of those locations on ground-truth background (None without masks)
    top_class: str | None  # most frequent object class (ground truth) at those locations, None if none
    top_share: float  # its share of those locations
    patches: list[np.ndarray]  # RGB crops around the most similar locations, one per image, most similar first
    similarity: list[float]  # cosine similarity of each patch's feature to the word


def colorize(label: np.ndarray) -> np.ndarray:
    """H x W index map -> H x W x 3 uint8 in the VOC palette (255 off-white)."""
    return PALETTE[label]


def cam_overlay(image: np.ndarray, high_res: np.ndarray) -> np.ndarray:
    """The image blended half and half with the CAM as a jet heat map (blue 0 to red 1), max over its classes."""
    heat = high_res.max(axis=0) if len(high_res) else np.zeros(image.shape[:2], np.float32)
    rgb = colormaps["jet"](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    return (0.5 * image + 0.5 * rgb).round().astype(np.uint8)


def example_columns(run: Run, voc: VOCDataset,
                    predictions: str | Path | None) -> list[tuple[str, PictureReader, bool]]:
    """(title, reader, is_label) per column of the example grid; `predictions` is a folder of DeepLab's PNGs."""
    def cam(image_id: str, image: np.ndarray) -> np.ndarray | None:
        path = run.folder.cam(image_id)
        return cam_overlay(image, load_cam(path).high_res) if storage.is_file(path) else None

    def label_file(path: str | Path | None) -> np.ndarray | None:
        # a stage that has not run for this image leaves its cell empty
        return colorize(read_mask(path)) if path is not None and storage.is_file(path) else None

    def prediction(image_id: str, image: np.ndarray) -> np.ndarray | None:
        return label_file(storage.join(predictions, f"{image_id}.png") if predictions is not None else None)

    def ground_truth(image_id: str, image: np.ndarray) -> np.ndarray | None:
        path = voc.mask_path(image_id)
        return colorize(read_mask(path)) if path is not None else None

    return [("image", lambda image_id, image: image, False), ("CAM", cam, False),
            ("CRF pseudo label", lambda image_id, image: label_file(run.folder.pseudo_label(image_id)), True),
            ("IRNet label", lambda image_id, image: label_file(run.folder.sem_seg_label(image_id)), True),
            ("prediction", prediction, True), ("ground truth", ground_truth, True)]


def example_cells(voc: VOCDataset, ids: Sequence[str], columns: list[tuple[str, PictureReader, bool]]
                  ) -> tuple[list[tuple[str, bool]], list[list[np.ndarray | None]]]:
    """The pictures of `ids` under `columns`, without the columns that are empty for every id."""
    rows = []
    for image_id in ids:
        image = read_image(voc.image_path(image_id))
        rows.append([read(image_id, image) for _, read, _ in columns])
    keep = [c for c in range(len(columns)) if any(row[c] is not None for row in rows)]
    return [(columns[c][0], columns[c][2]) for c in keep], [[row[c] for c in keep] for row in rows]


@torch.no_grad()
def visual_word_patches(model: nn.Module, images: Sequence[np.ndarray], masks: Sequence[np.ndarray | None],
                        num_words: int = 16, patches_per_word: int = 8, patch_size: int | None = None,
                        device: str | torch.device = "cpu",
                        names: Sequence[str] = CLASS_NAMES) -> list[WordPatches]:
    """The `num_words` most used words of `model.words` (by nearest-word counts over the images' feature
    locations; words never nearest are left out) and, for each, crops around its `patches_per_word` most similar
    locations, at most one per image.

    A crop is a `patch_size` box (default 2 x the feature stride) centred on the feature location, shifted to stay
    inside the image.
    """
    words = model.words
    stride = model.backbone.output_stride
    patch_size = patch_size or 2 * stride
    counts = np.zeros(words.num_words, np.int64)
    class_counts = np.zeros((words.num_words, 256), np.int64)
    best_sim, best_loc, grids = [], [], []
    for similarity, mask in zip(_word_similarities(model, images, device), masks):
        grid = similarity.shape[1:]
        flat = similarity.reshape(words.num_words, -1)
        nearest = flat.argmax(axis=0)
        counts += np.bincount(nearest, minlength=words.num_words)
        if mask is not None:
            ys, xs = (np.minimum(((np.arange(n) + 0.5) * stride).astype(int), size - 1)
                      for n, size in zip(grid, mask.shape))
            np.add.at(class_counts, (nearest, mask[ys[:, None], xs[None, :]].ravel()), 1)
        best_sim.append(flat.max(axis=1))
        best_loc.append(flat.argmax(axis=1))
        grids.append(grid)
    similarities = np.stack(best_sim)  # images x k
    results = []
    used = np.flatnonzero(counts)
    for word in used[np.argsort(-counts[used], kind="stable")][:num_words]:
        order = np.argsort(-similarities[:, word], kind="stable")[:patches_per_word]
        patches = [_crop(images[i], *np.unravel_index(best_loc[i][word], grids[i]), stride, patch_size)
                   for i in order]
        classes = class_counts[word].copy()
        classes[IGNORE] = 0
        total = classes.sum()
        top = int(classes[1:].argmax()) + 1
        results.append(WordPatches(
            word=int(word), usage=float(counts[word] / max(1, counts.sum())),
            background_share=float(classes[0] / total) if total else None,
            top_class=(names[top] if top < len(names) else str(top)) if classes[top] else None,
            top_share=float(classes[top] / total) if total else 0.0,
            patches=patches, similarity=[float(similarities[i, word]) for i in order]))
    return results


def _word_similarities(model: nn.Module, images: Sequence[np.ndarray], device: str | torch.device,
                       batch_size: int = 16) -> list[np.ndarray]:
    """k x h x w cosine similarities of each image's features to the words; images of one size share batches."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(i)
    results: list[np.ndarray] = [np.empty(0)] * len(images)
    for indices in by_shape.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            batch = torch.stack([normalize_image(images[i]) for i in chunk]).to(device)
            similarity = model.words.similarity(model.forward_features(batch).float()).cpu().numpy()
            for i, plane in zip(chunk, similarity):
                results[i] = plane
    return results


def save_mosaic(path: str | Path, cells: list[list[np.ndarray | None]], row_titles: list[str],
                col_titles: list[str] | None, cell: tuple[int, int], nearest: list[bool], left: int = 150) -> None:
    """One PNG: a grid of pictures, each scaled to fit the box `cell` (H, W) and drawn at 1:1 pixels, titled with
    matplotlib; a None cell is grey and marked "missing". `nearest` per column: label maps scale without blending."""
    fitted = [[None if p is None else _fit(p, cell, nearest[c]) for c, p in enumerate(row)] for row in cells]
    shown = [p for row in fitted for p in row if p is not None]
    ch = max((p.shape[0] for p in shown), default=cell[0])
    cw = max((p.shape[1] for p in shown), default=cell[1])
    top = 30 if col_titles else _GAP
    cols = max(len(row) for row in cells)
    width = left + cols * (cw + _GAP)
    height = top + len(cells) * (ch + _GAP)
    canvas = np.full((height, width, 3), 255, np.uint8)
    missing = []
    for r, row in enumerate(fitted):
        for c, picture in enumerate(row):
            y, x = top + r * (ch + _GAP), left + c * (cw + _GAP)
            if picture is None:
                canvas[y:y + ch, x:x + cw] = _MISSING_GREY
                missing.append((y + ch / 2, x + cw / 2))
            else:
                canvas[y:y + picture.shape[0], x:x + picture.shape[1]] = picture
    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    fig.figimage(canvas, 0, 0, origin="upper")

    def text(y: float, x: float, label: str, **kwargs: Any) -> None:
        fig.text(x / width, 1 - y / height, label, fontsize=9, va="center", **kwargs)

    for c, title in enumerate(col_titles or []):
        text(top / 2, left + c * (cw + _GAP) + cw / 2, title, ha="center", fontweight="bold")
    for r, title in enumerate(row_titles):
        text(top + r * (ch + _GAP) + ch / 2, 6, title, ha="left")
    for y, x in missing:
        text(y, x, "missing", ha="center", color="#777")
    save_figure(fig, path)


def _fit(picture: np.ndarray, cell: tuple[int, int], nearest: bool) -> np.ndarray:
    height, width = picture.shape[:2]
    scale = min(cell[0] / height, cell[1] / width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == (width, height):
        return picture
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(picture).resize(size, resample))


def _crop(image: np.ndarray, row: int, col: int, stride: int, size: int) -> np.ndarray:
    """A size x size crop (smaller for a smaller image) centred on feature location (row, col), kept inside."""
    height, width = image.shape[:2]
    h, w = min(size, height), min(size, width)
    y0 = int(np.clip(round((row + 0.5) * stride - h / 2), 0, height - h))
    x0 = int(np.clip(round((col + 0.5) * stride - w / 2), 0, width - w))
    return image[y0:y0 + h, x0:x0 + w]


def save_figure(fig: Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi, facecolor="white")
