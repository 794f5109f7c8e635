"""Stage 3 (IRNet's cam_to_ir_label): CAMs -> pseudo labels for DeepLab, as palette PNGs in
`<out_dir>/pseudo_labels/<id>.png` (0 background, 1..20 classes, 255 unsure), with a Parquet manifest.

`pseudo.method: confident` (default) thresholds the CAMs twice (fg 0.30, bg 0.05), refines both with a dense CRF
over the image's classes + background only, and marks 255 where they disagree (METHOD §3). `threshold` takes the
CAM argmax at `cam.bg_threshold`, optionally refined by the CRF.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from vwe import storage
from vwe.cam import cam_to_label, load_cam
from vwe.config import Config
from vwe.crf import confident_pseudo_label, crf_labels, pseudo_label_params
from vwe.data.voc import IGNORE, read_image, write_mask
from vwe.errors import ConfigError, DataError
from vwe.stages.make_cams import cam_path

LABEL_DIR = "pseudo_labels"
METHODS = ("confident", "threshold")


def label_path(out_dir: str | Path, image_id: str) -> str | Path:
    return storage.join(out_dir, LABEL_DIR, f"{image_id}.png")


def label_is_complete(path: str | Path) -> bool:
    """A PNG that ends with its IEND chunk (writes are atomic; this also catches files copied in halfway)."""
    try:
        with storage.open_input(path) as f:
            f.seek(-12, 2)
            return f.read()[4:8] == b"IEND"
    except OSError:
        return False


def pseudo_label(cfg: Config, image: np.ndarray, cam_file: str | Path) -> np.ndarray:
    """The pseudo label of one image from its saved CAMs."""
    result = load_cam(cam_file)
    if result.high_res.shape[1:] != image.shape[:2]:
        raise DataError(f"{cam_file}: CAM size {result.high_res.shape[1:]} differs from the image {image.shape[:2]}")
    params = pseudo_label_params(cfg.pseudo)
    if cfg.pseudo.method == "confident":
        return confident_pseudo_label(image, result.high_res, result.keys, **params)
    if cfg.pseudo.method == "threshold":
        label = cam_to_label(result.high_res, result.keys, cfg.cam.bg_threshold)
        if not cfg.pseudo.crf or len(result.keys) == 0:
            return label
        # CRF over the image's classes + background only: indices 0..K, mapped back to class labels after
        index = np.searchsorted(np.concatenate([[0], result.keys + 1]), label)
        crf_params = {k: v for k, v in params.items() if k not in ("fg_threshold", "bg_threshold", "crf")}
        refined = crf_labels(image, index, len(result.keys) + 1, **crf_params)
        return np.concatenate([[0], result.keys + 1]).astype(np.uint8)[refined]
    raise ConfigError(f"pseudo.method must be one of {', '.join(METHODS)}, got {cfg.pseudo.method!r}")


def make_labels(batch: dict[str, np.ndarray], cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    """Ray Data task body: pseudo labels of a batch of {"id", "path"}; returns one manifest row per id."""
    config = Config.from_dict(cfg)
    rows: dict[str, list] = {"id": [], "path": [], "error": [], "foreground": [], "unsure": [], "seconds": []}
    for image_id, path in zip(batch["id"], batch["path"]):
        start = time.perf_counter()
        error, foreground, unsure = "", 0.0, 0.0
        try:
            label = pseudo_label(config, read_image(path), cam_path(config.out_dir, image_id))
            write_mask(label_path(config.out_dir, image_id), label)
            foreground = float(np.mean((label > 0) & (label != IGNORE)))
            unsure = float(np.mean(label == IGNORE))
        except DataError as err:
            error = str(err)
        for key, value in zip(rows, (image_id, path, error, foreground, unsure, time.perf_counter() - start)):
            rows[key].append(value)
    return {key: np.array(values, dtype=object if key in ("id", "path", "error") else None)
            for key, values in rows.items()}
