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
from vwe.report.figures import CELL, PALETTE, PATCH_PX, example_cells, example_columns, save_mosaic, visual_word_patches
from vwe.report.plots import loss_terms, plot_ablation, plot_cam_curves, plot_losses, plot_stage_seconds
from vwe.report.reading import TRAINED, Run, cam_eval_file, or_default, sample_ids
from vwe.report.reference import Key, Reference, references

Section = dict[str, Any]
_TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("vwe", "report"), autoescape=True,
                                trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)


def render(run: Run, sections: dict[str, Section]) -> str:
    """The whole page; `sections` are those the template names (headline, config, stages, losses, curve, iou,
    examples, words)."""
    return _TEMPLATES.get_template("page.html.j2").render(
        title=f"vwe run report: {storage.name(run.folder.root)}", out_dir=str(run.folder.root),
        built=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        pictures=storage.name(run.folder.report_pictures), **sections)


def note(text: str, element_id: str = "") -> Section:
    """A section (or part of one) that only says why it has nothing to show."""
    return {"note": {"text": text, "id": element_id}}


def headline(run: Run, baselines: dict[str, float | None]) -> Section:
    cfg = run.cfg
    refs = references(cfg)
    rows: list[tuple[str, str, float | None, Key | None]] = []  # (id, label, value, key of its reference)
    for split, ev in run.cam_evals.items():
        suffix = "" if split == cfg.data.cam_split else f"-{split}"  # data.cam_split's rows keep their first ids
        rows.append((f"headline-cam{suffix}", f"CAM mIoU on {split} at cam.background_score = "
                                              f"{ev['background_score']:.2f}", ev["miou"], ("cam", split)))
        rows.append((f"headline-cam-best{suffix}", f"CAM mIoU on {split}, the sweep's best background score "
                                                   f"({ev['best_threshold']:.2f}; optimistic: chosen on this split)",
                     ev["best_miou"], None))
    if run.pseudo_eval:
        rows.append(("headline-pseudo", f"CRF pseudo-label mIoU on {cfg.data.cam_split} (unsure pixels as "
                                        "background)", run.pseudo_eval["miou"], ("pseudo", cfg.data.cam_split)))
    if run.irnet_eval:
        rows.append(("headline-irnet", f"IRNet labels mIoU on {cfg.data.cam_split}", run.irnet_eval["miou"],
                     ("irnet", cfg.data.cam_split)))
    for seg in run.segmentation:
        rows.append((f"headline-seg-{seg.name}", f"final mIoU, {seg.label}", seg.scores["miou"],
                     ("deeplab_crf" if seg.scores["crf"] else "deeplab", seg.split)))
    for split, value in baselines.items():
        rows.append((f"headline-baseline-{split}", f"baseline: all background on {split}", value, None))
    model = cfg.model
    return {"model": {"variant": model.variant, "backbone": model.backbone, "data": cfg.data.root,
                      "words": model.num_words if get_variant(model.variant).codebook else None},
            "reference": {"title": refs.title, "note": refs.note},
            "rows": [{"id": key, "label": label, "value": _percent(value),
                      "reference": _reference(refs.values.get(ref) if ref else None)}
                     for key, label, value, ref in rows]}


def config(run: Run) -> Section:
    return {"file": storage.name(run.folder.config), "lines": len(run.config_text.splitlines()),
            "text": run.config_text}


def stages(run: Run, written: list[str | Path]) -> Section:
    if not run.stages:
        return note(f"No {storage.name(run.folder.stages)} in this run folder.", "stage-timings")
    rows, total, timed = [], 0.0, []
    for name, record in run.stages.items():
        result = record.get("result") or {}
        seconds = record.get("seconds")
        skipped = bool(record.get("skipped"))
        if seconds is not None:
            timed.append((name, seconds, skipped))
            total += 0.0 if skipped else seconds
        rows.append({"name": name, "state": "skipped (outputs complete)" if skipped else "ran",
                     "seconds": _number(seconds, 1), "images": _number(result.get("images"), 0),
                     "rate": _number(record.get("images_per_s"), 1)})
    chart = note("No stage recorded its time.", "stage-timings")
    if timed:
        path = storage.join(run.folder.report_pictures, "stage_timings.png")
        plot_stage_seconds(timed, path)
        written.append(path)
        chart = _figure(path, "seconds per stage", "Grey: skipped, with the time of the run that made its outputs.",
                        "stage-timings")
    return {"note": None, "rows": rows, "total": f"{total:.1f}", "chart": chart}


def losses(run: Run, written: list[str | Path]) -> Section:
    """A loss-curve figure per trained network, from its stage's metrics CSV; a note where there is none."""
    parts = []
    for stage, network in TRAINED.items():
        element_id = f"loss-{stage}"
        csv_name = _relative(run.folder.metrics(stage), run.folder.root)
        rows = run.metrics.get(stage)
        if not rows:
            why = (f"{csv_name} holds no reports yet." if stage in run.metrics else
                   f"No {csv_name} in this run folder: the stage has not run yet, or it ran before training stages "
                   "kept their metrics.")
            parts.append({"title": f"{network} ({stage})", **note(why, element_id)})
            continue
        path = storage.join(run.folder.report_pictures, f"loss_{stage}.png")
        split = run.cfg.data.cam_split
        plot_losses(rows, path, f"{network} training ({stage})", split)
        written.append(path)
        epoch_ends = sum(1 for row in rows if row.get("cam_miou") is not None)
        caption = (f"The {len(rows)} reports of {csv_name}: the total loss (black) and its terms "
                   f"({', '.join(loss_terms(rows)[1:]) or 'none logged'}) against the training step")
        caption += (f"; red squares, right axis: the CAM mIoU on {split} at cam.background_score at "
                    f"{epoch_ends} epoch ends (the first train.eval_images images)." if epoch_ends else ".")
        parts.append({"title": f"{network} ({stage})", **_figure(path, f"{network} loss curves", caption,
                                                                 element_id)})
    return {"parts": parts}


def curve(run: Run, baselines: dict[str, float | None], written: list[str | Path]) -> Section:
    cfg = run.cfg
    if not run.cam_evals:
        missing = _relative(cam_eval_file(run.folder, cfg.data.cam_split), run.folder.root)
        return note(f"No CAM evaluation yet ({missing}).", "cam-curve")
    path = storage.join(run.folder.report_pictures, "cam_threshold_curve.png")
    plot_cam_curves(run.cam_evals, path, baselines)
    written.append(path)
    missing = [s for s in dict.fromkeys([cfg.data.cam_split, cfg.data.eval_split]) if s not in run.cam_evals]
    return _figure(path, "CAM mIoU by background score",
                   "A pixel is labelled with its best class when that class's normalised CAM exceeds the background "
                   "score, else background. The protocol's number is at the configured score (diamonds); the "
                   "sweep's best (rings) is optimistic, being chosen on the evaluated split."
                   + (f" No CAM evaluation of {', '.join(missing)} yet." if missing else ""), "cam-curve")


def ablation(run: Run, written: list[str | Path]) -> Section:
    """`vwe ablate`'s runs of this folder: each variant's CAM mIoU over the seeds, and how it compares with the
    first (the baseline)."""
    table = run.ablation
    if not table:
        return note("No ablation in this run folder (`vwe ablate --out <this folder> --seeds 3` makes one).",
                    "ablation")
    path = storage.join(run.folder.report_pictures, "ablation.png")
    plot_ablation(table["rows"], table["runs"], path, table["split"], table["background_score"])
    written.append(path)
    lines = []
    for row in table["rows"]:
        spread = f" ± {row['cam_miou_sd']:.1f}" if row["cam_miou_sd"] is not None else ""
        versus = (f", {row['vs_baseline']:+.1f} vs {table['rows'][0]['variant']} ({row['verdict']})"
                  if row["vs_baseline"] is not None else "")
        lines.append(f"{row['variant']} {row['cam_miou_mean']:.1f}{spread} over {row['seeds']} seed(s){versus}")
    return _figure(path, "CAM ablation over seeds",
                   f"CAM mIoU on {table['split']} at background score {table['background_score']:g}: "
                   + "; ".join(lines) + ". The verdict compares the paired per-seed differences' 95 % interval "
                   "with zero; ablation/ablation.csv has the diagnostics.", "ablation")


def iou(run: Run) -> Section:
    """One table per split, so that a table compares scores of the same images: CAMs at the fixed background
    score, the CRF and IRNet pseudo labels (data.cam_split) and DeepLab's predictions of that split."""
    tables = []
    for split in run.splits:
        columns = []
        ev = run.cam_evals.get(split)
        if ev:
            columns.append((f"CAM (background score {ev['background_score']:.2f})", ev["iou"], ev["miou"]))
        if run.pseudo_eval and split == run.cfg.data.cam_split:
            columns.append(("CRF pseudo labels", run.pseudo_eval["iou"], run.pseudo_eval["miou"]))
        if run.irnet_eval and split == run.cfg.data.cam_split:
            columns.append(("IRNet labels", run.irnet_eval["iou"], run.irnet_eval["miou"]))
        for seg in run.segmentation:
            if seg.split == split:
                columns.append((seg.label, seg.scores["iou"], seg.scores["miou"]))
        if not columns:
            continue
        names = list(dict.fromkeys(name for _, per_class, _ in columns for name in per_class))
        tables.append({"split": split, "columns": [title for title, _, _ in columns],
                       "rows": [{"name": name, "cells": [_bar(per_class.get(name)) for _, per_class, _ in columns]}
                                for name in names],
                       "miou": [_bar(miou) for _, _, miou in columns]})
    return {"tables": tables}


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
    names = ("background", *voc.classes)
    legend = [_swatch(c, names[c]) for c in classes if c < len(names)]
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
    found = visual_word_patches(model, images, masks, num_words, patches_per_word, patch_size, device,
                                ("background", *voc.classes))
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


def _figure(path: str | Path, alt: str, caption: str, element_id: str = "") -> Section:
    data = storage.read_bytes(path)
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
    return {"note": None, "figure": {"src": f"data:image/png;base64,{base64.b64encode(data).decode('ascii')}",
                                     "width": width, "height": height, "alt": alt, "caption": caption,
                                     "id": element_id}}


def _reference(ref: Reference | None) -> dict[str, str] | None:
    """A reference cell: its number, and in its title the spread over seeds and the source."""
    if ref is None:
        return None
    spread = f" ± {ref.spread:.1f}" if ref.spread is not None else ""
    return {"text": f"{ref.value:.1f}", "title": f"{ref.value:.1f}{spread}: {ref.source}"}


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
    names = [voc.classes[c - 1] for c in _present(voc, image_id) if 0 < c <= len(voc.classes)]
    return image_id + "".join(f"\n{name}" for name in names[:4]) + ("\n..." if len(names) > 4 else "")


def _present(voc: VOCDataset, image_id: str) -> list[int]:
    """Labels 1..20 present in the image (from its mask or annotation)."""
    labels = or_default(lambda: voc.labels(image_id), None)
    return [] if labels is None else [int(c) + 1 for c in np.flatnonzero(labels)]
