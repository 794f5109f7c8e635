"""The browsable run report: `<out_dir>/report.html`, one self-contained page (every picture a base64 data URI, no
scripts, no external resources) that opens from disk; its PNGs are also kept in `<out_dir>/report/`. The run folder
may be a local or NFS path or an object-store URI (`vwe.storage`).

Sections: headline scores beside the all-background baseline and a reference (the paper's numbers on VOC, the
README's measured demo on the synthetic benchmark), the config, stage timings (a table and a bar chart), the loss
curves of the classifier and of DeepLab, the CAM background-threshold curves of train and val, per-class IoU (one
table per split), examples (image | CAM | pseudo label | prediction | ground truth) and the codebook drawn as the
image patches most similar to each visual word (the paper's codebook figure). Every part of a run is optional: a
section whose inputs are not there says so. Sampling is seeded, so a rebuild shows the same images.

`reading` reads the run folder, `reference` holds the reference numbers, `figures` draws the pictures and `plots`
the charts, `page` turns them into the page (`page.html.j2`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from vwe import storage
from vwe.data.voc import VOCDataset
from vwe.errors import DataError
from vwe.io import write_text
from vwe.report import page
from vwe.report.figures import example_cells, example_columns, visual_word_patches
from vwe.report.reading import all_background_miou, baselines, load_run

__all__ = ["all_background_miou", "build_report", "example_cells", "example_columns", "load_run",
           "visual_word_patches"]


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
    pictures = run.folder.report_pictures
    storage.makedirs(pictures)
    try:
        voc: VOCDataset | None = VOCDataset(run.cfg.data.root)
        data_note = ""
    except DataError as err:
        voc, data_note = None, f"The dataset is not readable, so no pictures and no baselines: {err}"
    scores = baselines(run, voc) if voc is not None else {}
    written: list[str | Path] = []
    sections = {"headline": page.headline(run, scores), "config": page.config(run),
                "stages": page.stages(run, written), "losses": page.losses(run, written),
                "curve": page.curve(run, scores, written), "iou": page.iou(run),
                "ablation": page.ablation(run, written)}
    if voc is None:
        sections |= {"examples": page.note(data_note), "words": page.note(data_note)}
    else:
        sections["examples"] = page.examples(run, voc, num_examples, written)
        sections["words"] = page.words(run, voc, num_words, patches_per_word, word_images, patch_size, device,
                                       written)
    # a figure this build did not draw (the section lost its inputs) must not linger beside the page
    kept = {storage.name(p) for p in written}
    for stale in [n for n in storage.listdir(pictures) if n.endswith(".png") and n not in kept]:
        storage.delete(storage.join(pictures, stale))
    write_text(run.folder.report, page.render(run, sections))
    return run.folder.report
