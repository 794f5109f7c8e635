"""What each section of the page shows, as plain dicts of formatted strings, and their rendering by page.html.j2.

The template is autoescaped, so no text here is HTML. A section whose inputs are not there yet holds a note
instead; a section with a picture draws it into the run's report folder and embeds it as a PNG data URI.
"""
from __future__ import annotations

import base64
import datetime
import io
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import torch
from PIL import Image

from vwe import storage
from vwe.data.voc import IGNORE, VOCDataset, read_image, read_mask
from vwe.models.classifier import get_variant
from vwe.report.figures import (
    CELL,
    PALETTE,
    PATCH_PX,
    example_cells,
    example_columns,
    plot_cam_curve,
    save_mosaic,
    visual_word_patches,
)
from vwe.report.reading import Run, cam_eval_file, or_default, sample_ids
from vwe.evaluation import CLASS_NAMES

Section = dict[str, Any]
_TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("vwe", "report"), autoescape=True,
                                trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)


def render(run: Run, sections: dict[str, Section]) -> str:
    """The whole page; `sections` are those the template names (headline, config, stages, curve, iou, examples,
    words)."""
    return _TEMPLATES.get_template("page.html.j2").render(
        title=f"vwe run report: {storage.name(run.folder.root)}", out_dir=str(run.folder.root),
        built=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        pictures=storage.name(run.folder.report_pictures), **sections)


def note(text: str, element_id: str = "") -> Section:
    """A section (or part of one) that only says why it has nothing to show."""
    return {"note": {"text": text, "id": element_id}}


def headline(run: Run, baselines: dict[str, float | None]) -> Section:
    cfg = run.cfg
    rows = []
    if run.cam_eval:
        ev = run.cam_eval
        rows.append(("headline-cam", f"CAM mIoU on {cfg.data.cam_split} at cam.background_score = "
                                     f"{ev['background_score']:.2f}", ev["miou"]))
        rows.append(("headline-cam-best", f"CAM mIoU on {cfg.data.cam_split}, the sweep's best background score "
                                          f"({ev['best_threshold']:.2f}; optimistic: chosen on this split)",
                     ev["best_miou"]))
    if run.pseudo_eval:
        rows.append(("headline-pseudo", f"pseudo-label mIoU on {cfg.data.cam_split} (unsure pixels as background)",
                     run.pseudo_eval["miou"]))
    for seg in run.segmentation:
        rows.append((f"headline-seg-{seg.name}", f"final mIoU, {seg.label}", seg.scores["miou"]))
    for split, value in baselines.items():
        rows.append((f"headline-baseline-{split}", f"baseline: all background on {split}", value))
    model = cfg.model
    return {"model": {"variant": model.variant, "backbone": model.backbone, "data": cfg.data.root,
                      "words": model.num_words if get_variant(model.variant).codebook else None},
            "rows": [{"id": key, "label": label, "value": _percent(value)} for key, label, value in rows]}


def config(run: Run) -> Section:
    return {"file": storage.name(run.folder.config), "lines": len(run.config_text.splitlines()),
            "text": run.config_text}


def stages(run: Run) -> Section:
    if not run.stages:
        return note(f"No {storage.name(run.folder.stages)} in this run folder.")
    rows, total = [], 0.0
    for name, record in run.stages.items():
        result = record.get("result") or {}
        seconds = record.get("seconds")
        skipped = bool(record.get("skipped"))
        if seconds is not None and not skipped:
            total += seconds
        rows.append({"name": name, "state": "skipped (outputs complete)" if skipped else "ran",
                     "seconds": _number(seconds, 1), "images": _number(result.get("images"), 0),
                     "rate": _number(record.get("images_per_s"), 1)})
    return {"note": None, "rows": rows, "total": f"{total:.1f}"}


def curve(run: Run, baseline: float | None, written: list[str | Path]) -> Section:
    if not run.cam_eval:
        split = run.cfg.data.cam_split
        return note(f"No CAM evaluation yet ({_relative(cam_eval_file(run.folder, split), run.folder.root)}).")
    path = storage.join(run.folder.report_pictures, "cam_threshold_curve.png")
    plot_cam_curve({"split": run.cfg.data.cam_split, **run.cam_eval}, path, baseline)
    written.append(path)
    return _figure(path, "CAM mIoU by background score",
                   "A pixel is labelled with its best class when that class's normalised CAM exceeds the background "
                   "score, else background. The protocol's number is at the configured score; the sweep's best is "
                   "optimistic, being chosen on the evaluated split.")


def iou(run: Run) -> Section:
    columns = []
    if run.cam_eval:
        columns.append((f"CAM (background score {run.cam_eval['background_score']:.2f})", run.cam_eval["iou"],
                        run.cam_eval["miou"]))
    if run.pseudo_eval:
        columns.append(("pseudo labels", run.pseudo_eval["iou"], run.pseudo_eval["miou"]))
    for seg in run.segmentation:
        columns.append((seg.label, seg.scores["iou"], seg.scores["miou"]))
    names = list(dict.fromkeys(name for _, per_class, _ in columns for name in per_class))
    return {"split": run.cfg.data.cam_split, "columns": [title for title, _, _ in columns],
            "rows": [{"name": name, "cells": [_bar(per_class.get(name)) for _, per_class, _ in columns]}
                     for name in names],
            "miou": [_bar(miou) for _, _, miou in columns]}


def examples(run: Run, voc: VOCDataset, num_examples: int, written: list[str | Path]) -> Section:
    split = run.cfg.data.cam_split
    seg = next((s for s in run.segmentation if s.predictions), None)
    predictions = seg.predictions if seg else None
    columns = example_columns(run, voc, predictions)
    ids = or_default(lambda: voc.split_ids(split), [])
    # one listing per folder, not a request per id (slow in an object store)
    if storage.is_dir(run.folder.cams):
        with_cams = set(storage.listdir(run.folder.cams))
        ids = [i for i in ids if storage.name(run.folder.cam(i)) in with_cams]
    grids = [(f"examples_{split}", split, sample_ids(ids, num_examples))]
    predicted = set(storage.listdir(predictions)) if predictions is not None else set()
    if seg is not None and not any(f"{i}.png" in predicted for i in grids[0][2]):
        # DeepLab predicted another split (val): a second grid for its predictions
        seg_ids = [i for i in or_default(lambda: voc.split_ids(seg.split), []) if f"{i}.png" in predicted]
        grids.append((f"predictions_{seg.split}", seg.split, sample_ids(seg_ids, num_examples)))
    parts = []
    for name, grid_split, chosen in grids:
        if not chosen:
            parts.append(note(f"No images of {grid_split} to show."))
            continue
        titles, cells = example_cells(voc, chosen, columns)
        path = storage.join(run.folder.report_pictures, f"{name}.png")
        shown = [title for title, _ in titles]
        save_mosaic(path, cells, [_row_title(voc, i) for i in chosen], shown, CELL,
                    [is_label for _, is_label in titles])
        written.append(path)
        caption = f"{len(chosen)} images of {grid_split} (a seeded sample): {', '.join(shown)}."
        if "CAM" in shown:
            caption += " CAM: the maximum over the image's classes, blue 0 to red 1, blended on the image."
        if "prediction" in shown:
            caption += f" Predictions: {seg.label}, from {_relative(predictions, run.folder.root)}."
        parts.append(_figure(path, f"examples of {grid_split}", caption))
    classes = sorted({c for _, _, chosen in grids for i in chosen for c in _present(voc, i)})
    legend = [_swatch(c, CLASS_NAMES[c]) for c in classes if c < len(CLASS_NAMES)]
    return {"note": None, "parts": parts, "legend": [*legend, _swatch(IGNORE, "unsure / ignored (255)")]}


def words(run: Run, voc: VOCDataset, num_words: int, patches_per_word: int, word_images: int,
          patch_size: int | None, device: str | torch.device, written: list[str | Path]) -> Section:
    weights = storage.join(run.folder.classifier, "model.pth")
    if not storage.is_file(weights):
        return note(f"No trained classifier yet ({_relative(weights, run.folder.root)}).")
    from vwe.stages.train_cam import load_trained_classifier  # here: vwe.stages imports this package

    model, model_cfg = load_trained_classifier(run.folder.classifier, device)
    if model.words is None:
        return note(f"The {model_cfg.model.variant} variant has no visual words, so there is no codebook to show.",
                    "no-words")
    split = run.cfg.data.cam_split
    ids = sample_ids(or_default(lambda: voc.split_ids(split), []), word_images)
    if not ids:
        return note(f"No images of {split} to search for patches.")
    images = [read_image(voc.image_path(i)) for i in ids]
    masks = [read_mask(p) if (p := voc.mask_path(i)) is not None else None for i in ids]
    found = visual_word_patches(model, images, masks, num_words, patches_per_word, patch_size, device)
    path = storage.join(run.folder.report_pictures, "visual_words.png")
    titles = [f"word {w.word}: {_share(w.usage)}"
              + (f"\nbackground {_share(w.background_share)}" if w.background_share is not None else "")
              + (f"\n{w.top_class} {_share(w.top_share)}" if w.top_class else "") for w in found]
    save_mosaic(path, [w.patches for w in found], titles, None, (PATCH_PX, PATCH_PX), [False] * patches_per_word,
                left=210)
    written.append(path)
    size = patch_size or 2 * model.backbone.output_stride
    return _figure(path, "visual words", (
        f"The {len(found)} most used of the {model.words.num_words} words, one per row; in each row the {size} x "
        f"{size} px patches of {len(ids)} {split} images whose features are most similar (cosine) to the word, "
        "at most one per image, most similar on the left. The percentage is the share of feature locations whose "
        "nearest word it is; below it, the share of those locations on ground-truth background and on the object "
        "class most often found there."
        + (f" Only {len(found)} words are the nearest word of any sampled location." if len(found) < num_words
           else "")))


def _figure(path: str | Path, alt: str, caption: str) -> Section:
    data = storage.read_bytes(path)
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
    return {"note": None, "figure": {"src": f"data:image/png;base64,{base64.b64encode(data).decode('ascii')}",
                                     "width": width, "height": height, "alt": alt, "caption": caption}}


def _swatch(index: int, name: str) -> dict[str, str]:
    r, g, b = PALETTE[index]
    return {"color": f"rgb({r}, {g}, {b})", "name": name}


def _bar(value: float | None) -> dict[str, str] | None:
    """An IoU cell: its text and how far its bar fills it; None for a class absent from the ground truth."""
    if value is None or not np.isfinite(value):
        return None
    return {"text": f"{100 * value:.1f}", "fill": f"{max(0.0, min(100.0, 100 * value)):.1f}"}


def _percent(value: float | None) -> str | None:
    return None if value is None or not np.isfinite(value) else f"{100 * value:.1f}"


def _share(value: float) -> str:
    return f"{100 * value:.1f}%" if value >= 0.01 or value == 0 else f"{100 * value:.2g}%"


def _number(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _relative(path: str | Path, folder: str | Path) -> str:
    return str(path).removeprefix(f"{str(folder).rstrip('/')}/")


def _row_title(voc: VOCDataset, image_id: str) -> str:
    names = [CLASS_NAMES[c] for c in _present(voc, image_id) if 0 < c < len(CLASS_NAMES)]
    return image_id + "".join(f"\n{name}" for name in names[:4]) + ("\n..." if len(names) > 4 else "")


def _present(voc: VOCDataset, image_id: str) -> list[int]:
    """Labels 1..20 present in the image (from its mask or annotation)."""
    labels = or_default(lambda: voc.labels(image_id), None)
    return [] if labels is None else [int(c) + 1 for c in np.flatnonzero(labels)]
