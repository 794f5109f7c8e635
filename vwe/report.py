"""The browsable run report: `<out_dir>/report.html`, one self-contained page (every picture a base64 data URI, no
scripts, no external resources) that opens from disk; its PNGs are also kept in `<out_dir>/report/`. The run folder
may be a local or NFS path or an object-store URI (`vwe.storage`).

Sections: headline scores beside the all-background baseline, the config, stage timings, the CAM
background-threshold curve, per-class IoU, examples (image | CAM | pseudo label | prediction | ground truth) and the
codebook drawn as the image patches most similar to each visual word (the paper's codebook figure). Every part of a
run is optional: a section whose inputs are not there says so. Sampling is seeded, so a rebuild shows the same images.
"""
from __future__ import annotations

import base64
import datetime
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import yaml
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from vwe import storage
from vwe.cam import load_cam, normalize_image
from vwe.config import Config
from vwe.data.voc import IGNORE, VOCDataset, palette, read_image, read_mask
from vwe.errors import DataError
from vwe.io import atomic_path, write_text
from vwe.metrics import ConfusionMatrix
from vwe.models.classifier import get_variant
from vwe.stages.evaluate import CLASS_NAMES
from vwe.stages.make_cams import CAM_DIR, cam_path
from vwe.stages.make_pseudo_labels import LABEL_DIR
from vwe.stages.train_classifier import load_trained_classifier

REPORT_DIR = "report"
SEED = 0
_PALETTE = np.array(palette(), dtype=np.uint8).reshape(256, 3)  # index 255 (unsure / ignore) is off-white
_CELL = (150, 200)  # example cell box, H x W px; images are scaled to fit, keeping their aspect
_PATCH_PX = 64  # display size of a visual-word patch
_GAP = 6
_MISSING_GREY = 232

PictureReader = Callable[[str, np.ndarray], "np.ndarray | None"]


@dataclass
class SegmentationResult:
    """DeepLab outputs found in a run folder: scores ({miou, iou, ...}) and/or a folder of prediction PNGs."""

    name: str
    split: str
    scores: dict[str, Any] | None = None
    predictions: str | Path | None = None

    @property
    def label(self) -> str:
        crf = bool((self.scores or {}).get("crf")) or self.name.endswith("_crf")
        return f"DeepLab on {self.split}" + (" + CRF" if crf else "")


@dataclass
class Run:
    """The parts of a run folder the report shows; None (or empty) for those not produced yet."""

    out_dir: str | Path
    cfg: Config
    config_text: str
    stages: dict[str, Any]
    cam_eval: dict[str, Any] | None
    pseudo_eval: dict[str, Any] | None
    segmentation: list[SegmentationResult]


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


def find_segmentation(out_dir: str | Path, default_split: str) -> list[SegmentationResult]:
    """Segmentation results of a run: `eval_seg*/**/*.json` holding miou and iou (linked to their predictions by
    a "predictions" key), then the other prediction folders, `predictions*/` or `seg_predictions*/`, with PNGs
    directly inside (split `default_split`) or in one sub-folder per split."""
    names = storage.listdir(out_dir)
    results: list[SegmentationResult] = []
    for folder in [storage.join(out_dir, n) for n in names if n.startswith("eval_seg")]:
        for path in [storage.join(folder, p) for p in storage.walk_files(folder) if p.endswith(".json")]:
            scores = _read_json(path)
            if not isinstance(scores, dict) or "miou" not in scores or "iou" not in scores:
                continue
            predictions = storage.join(scores["predictions"]) if scores.get("predictions") else None
            results.append(SegmentationResult(storage.name(path).removesuffix(".json"),
                                              str(scores.get("split") or default_split), scores,
                                              predictions if predictions and storage.is_dir(predictions) else None))
    linked = {_canonical(r.predictions) for r in results if r.predictions}
    for name in [n for n in names if n.startswith(("predictions", "seg_predictions"))]:
        folder = storage.join(out_dir, name)
        inside = storage.listdir(folder)
        # only names that are not PNGs can be sub-folders: no request per prediction to find them
        subfolders = [n for n in inside if not n.endswith(".png") and storage.is_dir(storage.join(folder, n))]
        for candidate, pngs in [(folder, inside), *((storage.join(folder, n), None) for n in subfolders)]:
            pngs = storage.listdir(candidate) if pngs is None else pngs
            if _canonical(candidate) in linked or not any(n.endswith(".png") for n in pngs):
                continue
            nested = candidate != folder
            results.append(SegmentationResult(f"{name}/{storage.name(candidate)}" if nested else name,
                                              storage.name(candidate) if nested else default_split, None, candidate))
    return results


def _canonical(path: str | Path) -> str | Path:
    """A local path with its links resolved, to compare folders; a URI as it is."""
    return path if storage.is_uri(path) else Path(path).resolve()


def load_run(out_dir: str | Path) -> Run:
    """Reads what a run folder (a folder or URI) holds; one without `config.yaml` is a DataError."""
    out_dir = _canonical(storage.join(out_dir))
    config_path = storage.join(out_dir, "config.yaml")
    if not storage.is_file(config_path):
        raise DataError(f"{config_path}: missing; not a vwe run folder (`vwe run` writes it)")
    config_text = storage.read_text(config_path)
    # the run folder may have moved since the run: "{out_dir}" in data.root means this folder
    cfg = Config.from_dict(yaml.safe_load(config_text), source=str(config_path))
    cfg = cfg.with_overrides({"out_dir": str(out_dir)}).resolved()
    split = cfg.data.cam_split
    return Run(out_dir, cfg, config_text, _read_json(storage.join(out_dir, "stages.json")) or {},
               _read_json(storage.join(out_dir, "eval_cam", f"{split}.json")),
               _read_json(storage.join(out_dir, "eval_labels", f"pseudo_{split}.json")),
               find_segmentation(out_dir, cfg.data.eval_split))


def all_background_miou(voc: VOCDataset, ids: Iterable[str], num_classes: int = 21) -> float | None:
    """mIoU of labelling every pixel background, over the ground-truth masks of `ids` (ids without one are
    left out): the score any segmentation must beat. None when no id has a mask."""
    matrix = ConfusionMatrix(num_classes)
    for image_id in ids:
        path = voc.mask_path(image_id)
        if path is not None:
            gt = read_mask(path)
            matrix.update(gt, np.zeros_like(gt))
    return None if matrix.matrix.sum() == 0 else matrix.compute().miou


def sample_ids(ids: Sequence[str], count: int, seed: int = SEED) -> list[str]:
    """`count` ids drawn without replacement by a seeded generator, in their original order."""
    if count >= len(ids):
        return list(ids)
    picked = np.random.default_rng(seed).choice(len(ids), size=count, replace=False)
    return [ids[i] for i in sorted(picked)]


def colorize(label: np.ndarray) -> np.ndarray:
    """H x W index map -> H x W x 3 uint8 in the VOC palette (255 off-white)."""
    return _PALETTE[label]


def cam_overlay(image: np.ndarray, high_res: np.ndarray) -> np.ndarray:
    """The image blended half and half with the CAM as a jet heat map (blue 0 to red 1), max over its classes."""
    heat = high_res.max(axis=0) if len(high_res) else np.zeros(image.shape[:2], np.float32)
    rgb = colormaps["jet"](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    return (0.5 * image + 0.5 * rgb).round().astype(np.uint8)


def example_columns(run: Run, voc: VOCDataset,
                    predictions: str | Path | None) -> list[tuple[str, PictureReader, bool]]:
    """(title, reader, is_label) per column of the example grid; a reader returns an RGB picture or None."""
    def cam(image_id: str, image: np.ndarray) -> np.ndarray | None:
        path = cam_path(run.out_dir, image_id)
        return cam_overlay(image, load_cam(path).high_res) if storage.is_file(path) else None

    def label_in(folder: str | Path | None) -> PictureReader:
        def read(image_id: str, image: np.ndarray) -> np.ndarray | None:
            path = storage.join(folder, f"{image_id}.png") if folder is not None else None
            return colorize(read_mask(path)) if path is not None and storage.is_file(path) else None
        return read

    def ground_truth(image_id: str, image: np.ndarray) -> np.ndarray | None:
        path = voc.mask_path(image_id)
        return colorize(read_mask(path)) if path is not None else None

    return [("image", lambda image_id, image: image, False), ("CAM", cam, False),
            ("pseudo label", label_in(storage.join(run.out_dir, LABEL_DIR)), True),
            ("prediction", label_in(predictions), True), ("ground truth", ground_truth, True)]


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
                        device: str | torch.device = "cpu") -> list[WordPatches]:
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
            top_class=(CLASS_NAMES[top] if top < len(CLASS_NAMES) else str(top)) if classes[top] else None,
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
    _save_figure(fig, path)


def plot_cam_curve(summary: dict[str, Any], path: str | Path, configured: float, baseline: float | None) -> None:
    """CAM mIoU against the background threshold, with the best point, the configured threshold and the
    all-background baseline."""
    thresholds = np.asarray(summary["thresholds"], dtype=float)
    miou = 100 * np.asarray(summary["miou"], dtype=float)
    fig = Figure(figsize=(7.5, 3.8), dpi=100)
    ax = fig.add_subplot()
    ax.plot(thresholds, miou, marker=".", color="tab:blue", label="CAM mIoU")
    best_t, best = summary["best_threshold"], 100 * summary["best_miou"]
    ax.plot([best_t], [best], "o", color="tab:red", label=f"best: {best:.1f} at {best_t:.2f}")
    ax.axvline(configured, ls="--", color="grey", label=f"cam.bg_threshold = {configured:.2f}")
    if baseline is not None:
        ax.axhline(100 * baseline, ls=":", color="black", label=f"all background: {100 * baseline:.1f}")
    ax.set_xlabel("background threshold")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(f"CAM mIoU on {summary.get('split', 'the CAM split')} by background threshold", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    _save_figure(fig, path)


def build_report(out_dir: str | Path, num_examples: int = 6, num_words: int = 16, patches_per_word: int = 8, *,
                 word_images: int = 48, patch_size: int | None = None,
                 device: str | torch.device = "cpu") -> str | Path:
    """Writes `<out_dir>/report.html` and its PNGs in `<out_dir>/report/`; returns the HTML path.

    Args:
        out_dir: a run folder of `vwe run` (a folder or URI).
        num_examples: images in the example grid (sampled from data.cam_split with a fixed seed).
        num_words: visual words in the codebook figure, the most used first.
        patches_per_word: patches per word, from distinct images.
        word_images: images of data.cam_split whose features are searched for the patches.
        patch_size: side of a patch in image pixels (default 2 x the feature stride).
        device: where the classifier runs for the codebook figure.
    """
    if min(num_examples, num_words, patches_per_word, word_images) < 1:
        raise ValueError("build_report: num_examples, num_words, patches_per_word and word_images must be >= 1")
    run = load_run(out_dir)
    pictures = storage.join(run.out_dir, REPORT_DIR)
    storage.makedirs(pictures)
    written: list[str | Path] = []
    try:
        voc: VOCDataset | None = VOCDataset(run.cfg.data.root)
        data_note = ""
    except DataError as err:
        voc, data_note = None, f"The dataset is not readable, so no pictures and no baselines: {err}"
    num_classes = run.cfg.data.num_classes + 1
    baselines = {}
    if voc is not None:
        for split in dict.fromkeys([run.cfg.data.cam_split, *(s.split for s in run.segmentation if s.scores)]):
            baselines[split] = _try(lambda: all_background_miou(voc, voc.split_ids(split), num_classes), None)

    body = [_headline_html(run, baselines), _config_html(run), _stages_html(run),
            _curve_html(run, pictures, baselines.get(run.cfg.data.cam_split), written), _iou_html(run)]
    if voc is None:
        body += [f"<h2>Examples</h2>{_note(data_note)}", f"<h2>Visual words</h2>{_note(data_note)}"]
    else:
        body.append(_examples_html(run, voc, pictures, num_examples, written))
        body.append(_words_html(run, voc, pictures, num_words, patches_per_word, word_images, patch_size, device,
                                written))
    kept = {storage.name(p) for p in written}
    for stale in [n for n in storage.listdir(pictures) if n.endswith(".png") and n not in kept]:
        storage.delete(storage.join(pictures, stale))
    path = storage.join(run.out_dir, "report.html")
    write_text(path, _page(run, "\n".join(body)))
    return path


# ----------------------------------------------------------------------------------------------- sections


def _headline_html(run: Run, baselines: dict[str, float | None]) -> str:
    cfg = run.cfg
    rows = []
    if run.cam_eval:
        ev = run.cam_eval
        rows.append(("headline-cam", f"CAM mIoU on {cfg.data.cam_split}, best background threshold "
                                     f"({ev['best_threshold']:.2f})", ev["best_miou"]))
        if cfg.cam.bg_threshold in ev["thresholds"]:
            at = ev["miou"][ev["thresholds"].index(cfg.cam.bg_threshold)]
            rows.append(("headline-cam-configured", f"CAM mIoU at cam.bg_threshold = {cfg.cam.bg_threshold:.2f}",
                         at))
    if run.pseudo_eval:
        rows.append(("headline-pseudo", f"pseudo-label mIoU on {cfg.data.cam_split} (unsure pixels as background)",
                     run.pseudo_eval["miou"]))
    for seg in run.segmentation:
        if seg.scores:
            rows.append((f"headline-seg-{seg.name}", f"final mIoU, {seg.label}", seg.scores["miou"]))
    for split, value in baselines.items():
        rows.append((f"headline-baseline-{split}", f"baseline: all background on {split}", value))
    table = "".join(f'<tr><td>{html.escape(label)}</td><td id="{html.escape(key)}" class="num big">'
                    f"{_percent(value)}</td></tr>" for key, label, value in rows)
    model = cfg.model
    meta = (f"variant <b>{html.escape(model.variant)}</b>, backbone {html.escape(model.backbone)}"
            + (f", {model.num_words} visual words" if get_variant(model.variant).codebook else "")
            + f" &middot; data {html.escape(cfg.data.root)}")
    return (f'<p class="meta">{meta}</p><h2>Scores</h2>'
            + (f'<table class="scores"><tbody>{table}</tbody></table><p class="note">mIoU in %, the mean over the '
               "classes present in the ground truth.</p>" if rows else _note("No evaluation results in this run "
                                                                             "folder yet.")))


def _config_html(run: Run) -> str:
    return (f'<h2>Configuration</h2><details><summary>config.yaml ({len(run.config_text.splitlines())} lines, '
            f'click to open)</summary><pre id="config">{html.escape(run.config_text)}</pre></details>')


def _stages_html(run: Run) -> str:
    if not run.stages:
        return "<h2>Stage timings</h2>" + _note("No stages.json in this run folder.")
    rows, total = [], 0.0
    for name, record in run.stages.items():
        result = record.get("result") or {}
        seconds = record.get("seconds")
        skipped = bool(record.get("skipped"))
        if seconds is not None and not skipped:
            total += seconds
        state = "skipped (outputs complete)" if skipped else "ran"
        rows.append(f'<tr id="stage-{html.escape(name)}"><td>{html.escape(name)}</td><td>{state}</td>'
                    f'<td class="num">{_number(seconds, 1)}</td><td class="num">{_number(result.get("images"), 0)}'
                    f'</td><td class="num">{_number(record.get("images_per_s"), 1)}</td></tr>')
    return ("<h2>Stage timings</h2><table><thead><tr><th>stage</th><th>this run</th><th>seconds</th><th>images</th>"
            f"<th>images/s</th></tr></thead><tbody>{''.join(rows)}</tbody><tfoot><tr><td>total (stages that ran)"
            f'</td><td></td><td class="num">{total:.1f}</td><td></td><td></td></tr></tfoot></table>'
            + _note("A skipped stage shows the time of the run that made its outputs, where it was recorded."))


def _curve_html(run: Run, pictures: str | Path, baseline: float | None, written: list[str | Path]) -> str:
    head = "<h2>CAM background threshold</h2>"
    if not run.cam_eval:
        return head + _note(f"No CAM evaluation yet (eval_cam/{run.cfg.data.cam_split}.json).")
    path = storage.join(pictures, "cam_threshold_curve.png")
    plot_cam_curve({"split": run.cfg.data.cam_split, **run.cam_eval}, path, run.cfg.cam.bg_threshold, baseline)
    written.append(path)
    return head + _figure(path, "CAM mIoU by background threshold",
                          "A pixel is labelled with its best class when that class's normalised CAM exceeds the "
                          "threshold, else background.")


def _iou_html(run: Run) -> str:
    columns = []
    if run.cam_eval:
        columns.append((f"CAM (t = {run.cam_eval['best_threshold']:.2f})", run.cam_eval["iou"],
                        run.cam_eval["best_miou"]))
    if run.pseudo_eval:
        columns.append(("pseudo labels", run.pseudo_eval["iou"], run.pseudo_eval["miou"]))
    for seg in run.segmentation:
        if seg.scores:
            columns.append((seg.label, seg.scores["iou"], seg.scores["miou"]))
    if not columns:
        return "<h2>Per-class IoU</h2>" + _note("No evaluation results yet.")
    names = list(dict.fromkeys(name for _, iou, _ in columns for name in iou))
    head = "".join(f"<th>{html.escape(title)}</th>" for title, _, _ in columns)
    body = "".join(f'<tr id="iou-{html.escape(name)}"><td>{html.escape(name)}</td>'
                   + "".join(_bar_cell(iou.get(name)) for _, iou, _ in columns) + "</tr>" for name in names)
    foot = '<tr id="iou-mIoU"><td>mIoU</td>' + "".join(_bar_cell(m) for _, _, m in columns) + "</tr>"
    return (f"<h2>Per-class IoU</h2><table class=\"iou\"><thead><tr><th>class</th>{head}</tr></thead>"
            f"<tbody>{body}</tbody><tfoot>{foot}</tfoot></table>"
            + _note(f"IoU in %; CAM and pseudo labels on {run.cfg.data.cam_split}. "
                    "– = class absent from the ground truth."))


def _examples_html(run: Run, voc: VOCDataset, pictures: str | Path, num_examples: int,
                   written: list[str | Path]) -> str:
    cfg = run.cfg
    seg = next((s for s in run.segmentation if s.predictions), None)
    predictions = seg.predictions if seg else None
    columns = example_columns(run, voc, predictions)
    ids = _try(lambda: voc.split_ids(cfg.data.cam_split), [])
    # one listing per folder, not a request per id (slow in an object store)
    cam_dir = storage.join(run.out_dir, CAM_DIR)
    if storage.is_dir(cam_dir):
        with_cams = set(storage.listdir(cam_dir))
        ids = [i for i in ids if f"{i}.npz" in with_cams]
    grids = [(f"examples_{cfg.data.cam_split}", cfg.data.cam_split, sample_ids(ids, num_examples))]
    predicted = set(storage.listdir(predictions)) if predictions is not None else set()
    if predictions is not None and not any(f"{i}.png" in predicted for i in grids[0][2]):
        # DeepLab predicted another split (val): a second grid for its predictions
        seg_ids = [i for i in _try(lambda: voc.split_ids(seg.split), []) if f"{i}.png" in predicted]
        grids.append((f"predictions_{seg.split}", seg.split, sample_ids(seg_ids, num_examples)))
    parts = ["<h2>Examples</h2>"]
    for name, split, chosen in grids:
        if not chosen:
            parts.append(_note(f"No images of {split} to show."))
            continue
        titles, cells = example_cells(voc, chosen, columns)
        path = storage.join(pictures, f"{name}.png")
        save_mosaic(path, cells, [_row_title(voc, i) for i in chosen], [t for t, _ in titles], _CELL,
                    [is_label for _, is_label in titles])
        written.append(path)
        shown = [t for t, _ in titles]
        caption = f"{len(chosen)} images of {split} (a seeded sample): {', '.join(shown)}."
        if "CAM" in shown:
            caption += " CAM: the maximum over the image's classes, blue 0 to red 1, blended on the image."
        if "prediction" in shown:
            caption += f" Predictions: {seg.label}, from {_relative(predictions, run.out_dir)}."
        parts.append(_figure(path, f"examples of {split}", caption))
    classes = sorted({c for _, _, chosen in grids for i in chosen for c in _present(voc, i)})
    parts.append('<p class="legend">' + "".join(_swatch(c, CLASS_NAMES[c]) for c in classes if c < len(CLASS_NAMES))
                 + _swatch(IGNORE, "unsure / ignored (255)") + "</p>")
    return "".join(parts)


def _words_html(run: Run, voc: VOCDataset, pictures: str | Path, num_words: int, patches_per_word: int,
                word_images: int, patch_size: int | None, device: str | torch.device,
                written: list[str | Path]) -> str:
    head = "<h2>Visual words</h2>"
    if not storage.is_file(storage.join(run.out_dir, "classifier", "model.pth")):
        return head + _note("No trained classifier yet (classifier/model.pth).")
    model, model_cfg = load_trained_classifier(storage.join(run.out_dir, "classifier"), device)
    if model.words is None:
        return head + _note(f"The {model_cfg.model.variant} variant has no visual words, so there is no codebook "
                            "to show.", "no-words")
    split = run.cfg.data.cam_split
    ids = sample_ids(_try(lambda: voc.split_ids(split), []), word_images)
    if not ids:
        return head + _note(f"No images of {split} to search for patches.")
    images = [read_image(voc.image_path(i)) for i in ids]
    masks = [read_mask(p) if (p := voc.mask_path(i)) is not None else None for i in ids]
    words = visual_word_patches(model, images, masks, num_words, patches_per_word, patch_size, device)
    path = storage.join(pictures, "visual_words.png")
    titles = [f"word {w.word}: {_share(w.usage)}"
              + (f"\nbackground {_share(w.background_share)}" if w.background_share is not None else "")
              + (f"\n{w.top_class} {_share(w.top_share)}" if w.top_class else "") for w in words]
    save_mosaic(path, [w.patches for w in words], titles, None, (_PATCH_PX, _PATCH_PX),
                [False] * patches_per_word, left=210)
    written.append(path)
    size = patch_size or 2 * model.backbone.output_stride
    return head + _figure(path, "visual words", (
        f"The {len(words)} most used of the {model.words.num_words} words, one per row; in each row the {size} x "
        f"{size} px patches of {len(ids)} {split} images whose features are most similar (cosine) to the word, "
        "at most one per image, most similar on the left. The percentage is the share of feature locations whose "
        "nearest word it is; below it, the share of those locations on ground-truth background and on the object "
        "class most often found there."
        + (f" Only {len(words)} words are the nearest word of any sampled location." if len(words) < num_words
           else "")))


# ------------------------------------------------------------------------------------------------- helpers


def _page(run: Run, body: str) -> str:
    title = f"vwe run report: {storage.name(run.out_dir)}"
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 14px/1.45 "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 24px 32px; color: #222; }}
h1 {{ font-size: 22px; margin: 0 0 4px; }}
h2 {{ font-size: 17px; margin: 28px 0 8px; padding-bottom: 3px; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; margin: 6px 0; }}
th, td {{ padding: 3px 12px; border-bottom: 1px solid #eee; text-align: left; }}
thead th {{ border-bottom: 2px solid #ccc; }}
tfoot td {{ border-top: 2px solid #ccc; font-weight: 600; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
td.big {{ font-size: 16px; font-weight: 600; }}
.meta, .note, figcaption {{ color: #666; }}
.note, figcaption {{ font-size: 13px; max-width: 900px; }}
pre {{ background: #f6f6f6; padding: 10px; font-size: 12px; }}
figure {{ margin: 8px 0 16px; }}
img {{ display: block; max-width: 100%; height: auto; }}
.swatch {{ display: inline-block; width: 12px; height: 12px; border: 1px solid #999; margin: 0 4px 0 12px;
          vertical-align: -1px; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">run folder <code>{html.escape(str(run.out_dir))}</code> &middot; report built {when}</p>
{body}
<p class="note">The PNG files of this page are in <code>{REPORT_DIR}/</code> beside it.</p>
</body></html>
"""


def _figure(path: str | Path, alt: str, caption: str) -> str:
    data = storage.read_bytes(path)
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
    return (f'<figure><img src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}" width="{width}" '
            f'height="{height}" alt="{html.escape(alt)}"><figcaption>{html.escape(caption)}</figcaption></figure>')


def _relative(path: str | Path, folder: str | Path) -> str:
    prefix = f"{str(folder).rstrip('/')}/"
    return str(path).removeprefix(prefix)


def _note(text: str, element_id: str = "") -> str:
    attribute = f' id="{html.escape(element_id)}"' if element_id else ""
    return f'<p class="note"{attribute}>{html.escape(text)}</p>'


def _swatch(index: int, name: str) -> str:
    r, g, b = _PALETTE[index]
    return f'<span class="swatch" style="background: rgb({r}, {g}, {b})"></span>{html.escape(name)}'


def _bar_cell(value: float | None) -> str:
    if value is None or not np.isfinite(value):
        return '<td class="num">&ndash;</td>'
    fill = max(0.0, min(100.0, 100 * value))
    return (f'<td class="num" style="background: linear-gradient(90deg, #d6e6f5 {fill:.1f}%, transparent '
            f'{fill:.1f}%)">{100 * value:.1f}</td>')


def _percent(value: float | None) -> str:
    return "&ndash;" if value is None or not np.isfinite(value) else f"{100 * value:.1f}"


def _share(value: float) -> str:
    return f"{100 * value:.1f}%" if value >= 0.01 or value == 0 else f"{100 * value:.2g}%"


def _number(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _row_title(voc: VOCDataset, image_id: str) -> str:
    names = [CLASS_NAMES[c] for c in _present(voc, image_id) if 0 < c < len(CLASS_NAMES)]
    return image_id + "".join(f"\n{name}" for name in names[:4]) + ("\n..." if len(names) > 4 else "")


def _present(voc: VOCDataset, image_id: str) -> list[int]:
    """Labels 1..20 present in the image (from its mask or annotation)."""
    labels = _try(lambda: voc.labels(image_id), None)
    return [] if labels is None else [int(c) + 1 for c in np.flatnonzero(labels)]


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


def _save_figure(fig: Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi, facecolor="white")


def _read_json(path: str | Path) -> Any:
    if not storage.is_file(path):
        return None
    try:
        return json.loads(storage.read_text(path))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not readable as JSON ({err})") from err


def _try(compute: Callable[[], Any], default: Any) -> Any:
    """compute(), or `default` when the data it reads is missing or bad (the report shows what exists)."""
    try:
        return compute()
    except DataError:
        return default
