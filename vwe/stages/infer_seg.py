"""Stage 5: DeepLab predictions of a split as deeplab-pytorch tests (METHOD §5): each image alone at full size,
logits at scales 1.0, 0.5, 0.75 fused by pixel-wise max (no flip), bilinearly upsampled to the image, argmax; with
the CRF, the softmax and the raw RGB image go through a dense CRF (METHOD §4, P11) first.

Output: `<out_dir>/seg/<split>/<id>.png` (`seg_crf/` with the CRF), VOC palette PNGs of class indices, and a
`manifest.parquet` beside them. On Ray Data: decoding (tasks) -> `SegPredictor` (an actor pool, one GPU per actor
when ray.use_gpu) gives the fused logits at 1/8 of the image size -> `write_labels` (CPU tasks, one core each: the
CRF is single-threaded and the GPU never waits for it) upsamples them, runs the CRF and writes the PNG. Only ids
without a complete PNG of their image's size are processed, so a re-run resumes.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vwe.accelerator import Accelerator
from vwe.checkpoint import read_export
from vwe.config import Config, CrfConfig, SegConfig
from vwe.crf import Backend, crf_probs, resolve_backend
from vwe.data.datasets import deeplab_input
from vwe.data.voc import write_mask
from vwe.models.deeplab import caffe_input, max_fusion, pyramid_logits
from vwe.ray.cluster import quiet_worker
from vwe.ray.data import Actors, Tasks, finish_manifest, map_items, objects, read_images, writable
from vwe.run_folder import RunFolder
from vwe.stages.stage import Stage, label_done, split_items
from vwe.stages.train_seg import load_trained_deeplab

log = logging.getLogger(__name__)


def fused_logits(model: nn.Module, image: np.ndarray, scales: Sequence[float], caffe: bool,
                 accel: Accelerator) -> torch.Tensor:
    """C x h x w float32 CPU logits of one uint8 H x W x 3 RGB image: max over `scales` at the scale-1.0 size."""
    x = accel.inputs(torch.from_numpy(np.ascontiguousarray(deeplab_input(image, caffe).transpose(2, 0, 1)))[None])
    with torch.inference_mode(), accel.autocast():
        logits = max_fusion(pyramid_logits(model, x, scales))
    return logits[0].float().cpu()


def logits_to_label(logits: torch.Tensor, image: np.ndarray, crf: CrfConfig | None = None,
                    backend: Backend = "pydensecrf", device: torch.device | str = "cpu") -> np.ndarray:
    """uint8 H x W labels: logits bilinearly upsampled to the image, then argmax (of the CRF marginals of their
    softmax when `crf` is given, with that CRF backend on `device`)."""
    upsampled = F.interpolate(logits[None].float(), size=image.shape[:2], mode="bilinear", align_corners=False)[0]
    if crf is None:
        return upsampled.argmax(dim=0).to(torch.uint8).numpy()
    probs = torch.softmax(upsampled, dim=0).numpy()
    return crf_probs(image, probs, crf, backend, device).argmax(axis=0).astype(np.uint8)


def crf_on_actors(cfg: Config, crf: bool) -> bool:
    """Whether the CRF runs in the prediction actors (the torch backend; auto: with ray.use_gpu) rather than in
    one CPU task per image (pydensecrf)."""
    return crf and resolve_backend(cfg.seg.crf, cfg.ray.use_gpu) == "torch"


def predict(model: nn.Module, image: np.ndarray, seg: SegConfig, crf: bool = False,
            device: torch.device | str = "cpu") -> np.ndarray:
    """The label map of one uint8 H x W x 3 RGB image (the whole test protocol in one call)."""
    logits = fused_logits(model, image, seg.test_scales, caffe_input(seg), Accelerator.of(seg, device))
    return logits_to_label(logits, image, seg.crf if crf else None)


class SegPredictor:
    """Loads the trained DeepLab once; each call gives the fused logits of a batch of decoded images."""

    def __init__(self, cfg: Config, crf: bool = False):
        quiet_worker(cfg.ray.cpus_per_worker, cfg.out_dir, "infer_seg")
        self.cfg = cfg
        self.crf = crf_on_actors(cfg, crf)  # the torch CRF runs here, on the actor's device
        self.accel = Accelerator.of(cfg.seg, "cuda" if cfg.ray.use_gpu else "cpu")
        self.device = self.accel.device
        model, trained = load_trained_deeplab(RunFolder.of(cfg).deeplab)
        self.model = self.accel.prepare(model)
        self.seg = trained.seg  # the network's own input convention, whatever the current config says

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        logits = [np.zeros((1, 1, 1), np.float32) if error else
                  fused_logits(self.model, image, self.cfg.seg.test_scales, caffe_input(self.seg),
                               self.accel).numpy()
                  for image, error in zip(batch["image"], batch["error"])]
        out = {"id": batch["id"], "path": batch["path"], "error": batch["error"], "image": batch["image"]}
        if self.crf:
            out["label"] = objects([np.zeros((1, 1), np.uint8) if error else
                                    logits_to_label(torch.from_numpy(x), image, self.cfg.seg.crf, "torch", self.device)
                                    for x, image, error in zip(logits, batch["image"], batch["error"])])
        else:
            out["logits"] = objects(logits)
        out["seconds"] = np.full(len(logits), (time.perf_counter() - start) / max(1, len(logits)))
        return out


def write_labels(batch: dict[str, np.ndarray], cfg: Config, split: str, crf: bool) -> dict[str, np.ndarray]:
    """A task step: upsamples (and CRFs) the logits of a batch, writes each label PNG; returns the manifest rows."""
    run = RunFolder.of(cfg)
    heights, widths, label_seconds = [], [], []
    done = batch.get("label")  # the prediction actors ran the torch CRF already
    for i, (image_id, image, error) in enumerate(zip(batch["id"], batch["image"], batch["error"])):
        start = time.perf_counter()
        if not error:
            label = done[i] if done is not None else logits_to_label(torch.from_numpy(writable(batch["logits"][i])),
                                                                     image, cfg.seg.crf if crf else None)
            write_mask(run.prediction(split, crf, image_id), label)
        heights.append(image.shape[0])
        widths.append(image.shape[1])
        label_seconds.append(time.perf_counter() - start)
    return {"id": batch["id"], "path": batch["path"], "error": batch["error"], "height": np.array(heights),
            "width": np.array(widths), "seconds": batch["seconds"], "label_seconds": np.array(label_seconds),
            "crf": np.full(len(heights), crf)}


def predict_split(cfg: Config, split: str | None = None, crf: bool | None = None) -> dict[str, Any]:
    """Predictions of every image of `split` (default data.eval_split) that has none yet (`vwe infer-seg`); `crf`
    defaults to seg.crf.enabled."""
    run = RunFolder.of(cfg)
    split = split or cfg.data.eval_split
    crf = cfg.seg.crf.enabled if crf is None else crf
    todo, done = split_items(cfg, split, label_done(lambda image_id: run.prediction(split, crf, image_id)))
    if todo:
        read_export(run.deeplab, "train-seg")  # a missing or truncated model.pth is named here, not in an actor
    batch = cfg.seg.infer_batch_size
    items = [{"id": item["id"], "path": item["path"]} for item in todo]
    # pydensecrf takes seconds per image: one image per task spreads it over every core of the cluster (on the CPU
    # nodes when ray.crf_resource marks them, as for make-pseudo); the torch CRF runs in the actors instead
    crf_tasks = crf and not crf_on_actors(cfg, crf)
    rows = map_items(items, [
        Tasks(read_images, batch),
        Actors(SegPredictor, batch, {"cfg": cfg, "crf": crf}, cfg.seg.num_actors, cfg.ray.use_gpu),
        Tasks(write_labels, 1 if crf_tasks else batch, {"cfg": cfg, "split": split, "crf": crf},
              cfg.ray.crf_resource if crf_tasks else "")], cfg.ray, f"infer-seg {split}{' + CRF' if crf else ''}",
        len(done))
    predictions = run.predictions(split, crf)
    summary = finish_manifest("infer-seg", rows, len(done), run.manifest(predictions), cfg.data.skip_bad)
    return {"split": split, "crf": crf, "predictions": str(predictions), **summary}


def run(cfg: Config) -> dict[str, Any]:
    result = predict_split(cfg, cfg.data.eval_split)
    return {**result, "images": result["processed"]}


def is_complete(cfg: Config) -> bool:
    folder, split, crf = RunFolder.of(cfg), cfg.data.eval_split, cfg.seg.crf.enabled
    return not split_items(cfg, split, label_done(lambda image_id: folder.prediction(split, crf, image_id)))[0]


STAGE = Stage(
    name="infer_seg", run=run, is_complete=is_complete,
    outputs=lambda cfg: RunFolder.of(cfg).prediction_roots,
    depends_on=("data.eval_split", "seg.test_scales", "seg.crf", "seg.amp"))
