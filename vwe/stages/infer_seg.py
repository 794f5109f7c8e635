"""Stage 5: DeepLab predictions of a split as deeplab-pytorch tests (METHOD §5): each image alone at full size,
logits at scales 1.0, 0.5, 0.75 fused by pixel-wise max (no flip), bilinearly upsampled to the image, argmax; with
the CRF, the softmax and the raw RGB image go through a dense CRF (METHOD §4, P11) first.

Output: `<out_dir>/seg/<split>/<id>.png` (`seg_crf/` with the CRF), VOC palette PNGs of class indices, and a
`manifest.parquet` beside them. The pieces here are plain Python; `vwe.ray.segmentation` runs them on Ray Data:
`SegPredictor` (an actor, on a GPU when there is one) gives the fused logits at 1/8 of the image size, and
`write_labels` (CPU tasks) upsamples them, runs the CRF and writes the PNG.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vwe import storage
from vwe.config import Config, SegConfig
from vwe.crf import crf_probs
from vwe.data.datasets import deeplab_input
from vwe.data.voc import read_mask, write_mask
from vwe.errors import DataError
from vwe.models.deeplab import caffe_input, max_fusion, pyramid_logits
from vwe.stages.make_cams import _objects
from vwe.stages.train_deeplab import MODEL_DIR, load_trained_deeplab

PRED_DIR = "seg"


def prediction_dir(out_dir: str | Path, split: str, crf: bool) -> str | Path:
    return storage.join(out_dir, f"{PRED_DIR}_crf" if crf else PRED_DIR, split)


def prediction_path(out_dir: str | Path, split: str, crf: bool, image_id: str) -> str | Path:
    return storage.join(prediction_dir(out_dir, split, crf), f"{image_id}.png")


def prediction_is_complete(path: str | Path) -> bool:
    """A prediction counts as done when its PNG decodes (writes are atomic; this also catches damaged files)."""
    try:
        read_mask(path)
    except DataError:
        return False
    return True


def fused_logits(model: nn.Module, image: np.ndarray, scales: Sequence[float], caffe: bool,
                 device: torch.device, amp: bool = True) -> torch.Tensor:
    """C x h x w float32 CPU logits of one uint8 H x W x 3 RGB image: max over `scales` at the scale-1.0 size."""
    x = torch.from_numpy(np.ascontiguousarray(deeplab_input(image, caffe).transpose(2, 0, 1)))[None].to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                enabled=device.type == "cuda" and amp):
        logits = max_fusion(pyramid_logits(model, x, scales))
    return logits[0].float().cpu()


def crf_params(seg: SegConfig) -> dict[str, Any]:
    """Keyword arguments of `vwe.crf.crf_probs` from the `seg` config section."""
    return {"iterations": seg.crf_iterations, "gaussian_sxy": seg.crf_gaussian_sxy,
            "gaussian_compat": seg.crf_gaussian_compat, "bilateral_sxy": seg.crf_bilateral_sxy,
            "bilateral_srgb": seg.crf_bilateral_srgb, "bilateral_compat": seg.crf_bilateral_compat}


def logits_to_label(logits: torch.Tensor, image: np.ndarray, crf: dict[str, Any] | None = None) -> np.ndarray:
    """uint8 H x W labels: logits bilinearly upsampled to the image, then argmax (of the CRF marginals of their
    softmax when `crf` holds the `crf_probs` arguments)."""
    upsampled = F.interpolate(logits[None].float(), size=image.shape[:2], mode="bilinear", align_corners=False)[0]
    if crf is None:
        return upsampled.argmax(dim=0).to(torch.uint8).numpy()
    probs = torch.softmax(upsampled, dim=0).numpy()
    return crf_probs(image, probs, **crf).argmax(axis=0).astype(np.uint8)


def predict(model: nn.Module, image: np.ndarray, seg: SegConfig, crf: bool = False,
            device: torch.device | str = "cpu") -> np.ndarray:
    """The label map of one uint8 H x W x 3 RGB image (the whole test protocol in one call)."""
    logits = fused_logits(model, image, seg.test_scales, caffe_input(seg), torch.device(device), seg.amp)
    return logits_to_label(logits, image, crf_params(seg) if crf else None)


class SegPredictor:
    """Loads the trained DeepLab once; each call gives the fused logits of a batch of decoded images."""

    def __init__(self, cfg: dict[str, Any], use_gpu: bool = False):
        self.cfg = Config.from_dict(cfg)
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.model, trained = load_trained_deeplab(storage.join(self.cfg.out_dir, MODEL_DIR), self.device)
        self.seg = trained.seg  # the network's own input convention, whatever the current config says
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        logits = [np.zeros((1, 1, 1), np.float32) if error else
                  fused_logits(self.model, image, self.cfg.seg.test_scales, caffe_input(self.seg), self.device,
                               self.cfg.seg.amp).numpy()
                  for image, error in zip(batch["image"], batch["error"])]
        seconds = (time.perf_counter() - start) / max(1, len(logits))
        return {"id": batch["id"], "path": batch["path"], "error": batch["error"], "image": batch["image"],
                "logits": _objects(logits), "seconds": np.full(len(logits), seconds)}


def write_labels(batch: dict[str, np.ndarray], cfg: dict[str, Any], split: str, crf: bool) -> dict[str, np.ndarray]:
    """Upsamples (and CRFs) the logits of a batch, writes each label PNG; returns the manifest rows."""
    config = Config.from_dict(cfg)
    params = crf_params(config.seg) if crf else None
    heights, widths, label_seconds = [], [], []
    for image_id, image, logits, error in zip(batch["id"], batch["image"], batch["logits"], batch["error"]):
        start = time.perf_counter()
        if not error:
            # Ray Data hands out read-only arrays; torch wants writable ones
            label = logits_to_label(torch.from_numpy(np.require(logits, requirements="W")), image, params)
            write_mask(prediction_path(config.out_dir, split, crf, image_id), label)
        heights.append(image.shape[0])
        widths.append(image.shape[1])
        label_seconds.append(time.perf_counter() - start)
    return {"id": batch["id"], "path": batch["path"], "error": batch["error"], "height": np.array(heights),
            "width": np.array(widths), "seconds": batch["seconds"], "label_seconds": np.array(label_seconds),
            "crf": np.full(len(heights), crf)}
