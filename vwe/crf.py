"""Dense CRF and IRNet's confident pseudo labels from CAMs (METHOD §3, §4), on two backends: pydensecrf (C++, one
CPU core per image) and `vwe.dense_crf` (the same CRF in PyTorch, batched, on the CPU or a GPU).

Every function takes the raw RGB uint8 image: the bilateral term compares colours, and feeding it a normalised
image cast to uint8 (deeplab-pytorch's `main.py`, METHOD P11) silently wrecks it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pydensecrf.densecrf as dcrf
import torch
from pydensecrf.utils import unary_from_labels, unary_from_softmax

from vwe import dense_crf
from vwe.cam import cam_argmax
from vwe.config import CrfConfig, PseudoLabelConfig, SegConfig
from vwe.data.voc import IGNORE


# IRNet's label CRF for the pseudo labels, and deeplab-pytorch's VOC test CRF on DeepLab's softmax (METHOD §4)
LABEL_CRF = PseudoLabelConfig().crf
SOFTMAX_CRF = SegConfig().crf


Backend = Literal["pydensecrf", "torch"]


def resolve_backend(crf: CrfConfig, gpu: bool) -> Backend:
    """`crf.backend`, with auto read as torch on a GPU and pydensecrf on the CPU."""
    if crf.backend == "auto":
        return "torch" if gpu else "pydensecrf"
    return crf.backend


def crf_labels(image: np.ndarray, labels: np.ndarray, n_labels: int, crf: CrfConfig = LABEL_CRF,
               backend: Backend = "pydensecrf", device: str | torch.device = "cpu") -> np.ndarray:
    """Refines an H x W label map (values 0..n_labels-1) with a dense CRF; returns uint8 H x W labels.

    IRNet's `crf_inference_label`: label unary (`crf.gt_prob` on the given label, the rest spread evenly, label 0
    not treated as unsure), Potts Gaussian and bilateral kernels, `crf.iterations` mean-field steps; pydensecrf on
    this core, or the same CRF in PyTorch (`vwe.dense_crf`) on `device`.
    """
    return crf_labels_many([image], [labels], [n_labels], crf, backend, device)[0]


def crf_labels_many(images: Sequence[np.ndarray], label_maps: Sequence[np.ndarray], n_labels: Sequence[int],
                    crf: CrfConfig = LABEL_CRF, backend: Backend = "pydensecrf",
                    device: str | torch.device = "cpu") -> list[np.ndarray]:
    """`crf_labels` of several problems: one after the other with pydensecrf, in one batched call with torch (the
    images may differ in size and label count; each gets the labels of a call of its own)."""
    images = [_rgb_image(image) for image in images]
    maps = []
    for image, labels, count in zip(images, label_maps, n_labels):
        labels = np.asarray(labels)
        if labels.shape != image.shape[:2]:
            raise ValueError(f"label map shape {labels.shape} does not match image {image.shape[:2]}")
        if not 1 <= count <= 256:
            raise ValueError(f"n_labels must be in 1..256, got {count}")
        if labels.size and (labels.min() < 0 or labels.max() >= count):
            raise ValueError(f"labels must lie in 0..{count - 1}, got {labels.min()}..{labels.max()}")
        maps.append(labels)
    if backend == "torch":
        return dense_crf.crf_labels_batch(images, maps, list(n_labels), **_kernels(crf), gt_prob=crf.gt_prob,
                                          device=device)
    out = []
    for image, labels, count in zip(images, maps, n_labels):
        if count == 1:  # nothing to choose; pydensecrf's label unary divides by n_labels - 1
            out.append(np.zeros(labels.shape, dtype=np.uint8))
            continue
        unary = unary_from_labels(labels.astype(np.intp), count, gt_prob=crf.gt_prob, zero_unsure=False)
        out.append(_mean_field(image, unary, count, crf).argmax(axis=0).astype(np.uint8))
    return out


def crf_probs(image: np.ndarray, probs: np.ndarray, crf: CrfConfig = SOFTMAX_CRF, backend: Backend = "pydensecrf",
              device: str | torch.device = "cpu") -> np.ndarray:
    """Refines C x H x W class probabilities with a dense CRF; returns the C x H x W float32 marginals.

    Unary = -log(clip(p, 1e-5, 1)); take the argmax over classes for labels.
    """
    image = _rgb_image(image)
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2] or probs.shape[0] < 1:
        raise ValueError(f"probs must be C x H x W with H x W = {image.shape[:2]}, got {probs.shape}")
    if backend == "torch":
        return dense_crf.crf_probs_torch(image, probs, **_kernels(crf), device=device)
    return _mean_field(image, unary_from_softmax(probs), probs.shape[0], crf)


def confident_pseudo_label(image: np.ndarray, high_res: np.ndarray, keys: np.ndarray,
                           fg_background_score: float = 0.30, bg_background_score: float = 0.05,
                           crf: CrfConfig = LABEL_CRF, backend: Backend = "pydensecrf",
                           device: str | torch.device = "cpu") -> np.ndarray:
    """IRNet's `cam_to_ir_label` for one image: uint8 H x W with 0 (background), key + 1 (class) or 255 (unsure).

    A high background score (`fg_background_score`) keeps only confident foreground; a low one
    (`bg_background_score`) keeps only confident background. Each map is refined by `crf_labels` over the image's
    own classes plus background, when `crf.enabled`. Label = the foreground map's class where it is not
    background, 0 where both maps say background, 255 elsewhere.
    """
    return confident_pseudo_labels([image], [high_res], [keys], fg_background_score, bg_background_score, crf,
                                   backend, device)[0]


def confident_pseudo_labels(images: Sequence[np.ndarray], high_reses: Sequence[np.ndarray],
                            keys: Sequence[np.ndarray], fg_background_score: float = 0.30,
                            bg_background_score: float = 0.05, crf: CrfConfig = LABEL_CRF,
                            backend: Backend = "pydensecrf", device: str | torch.device = "cpu") -> list[np.ndarray]:
    """`confident_pseudo_label` of several images, their 2 CRFs each in one `crf_labels_many` call."""
    lookups, maps = [], []
    for image, high_res, image_keys in zip(images, high_reses, keys):
        image_keys = np.asarray(image_keys, dtype=np.int64)
        if (np.ndim(high_res) != 3 or np.shape(high_res)[0] != len(image_keys)
                or np.shape(high_res)[1:] != np.shape(image)[:2]):
            raise ValueError(f"high_res must be K x H x W with K = {len(image_keys)} keys and H x W = "
                             f"{np.shape(image)[:2]}, got {np.shape(high_res)}")
        lookups.append(np.concatenate([[0], image_keys + 1]).astype(np.uint8))
        maps += [cam_argmax(high_res, fg_background_score), cam_argmax(high_res, bg_background_score)]
    if crf.enabled:
        maps = crf_labels_many([image for image in images for _ in range(2)], maps,
                               [len(lookup) for lookup in lookups for _ in range(2)], crf, backend, device)
    labels = []
    for lookup, foreground, background in zip(lookups, maps[0::2], maps[1::2]):
        foreground, background = lookup[foreground], lookup[background]
        label = np.where(background == 0, 0, IGNORE).astype(np.uint8)
        labels.append(np.where(foreground != 0, foreground, label))
    return labels


def _kernels(crf: CrfConfig) -> dict[str, float]:
    """The kernel parameters of `vwe.dense_crf`'s functions from a CrfConfig."""
    return {"gaussian_sxy": crf.gaussian_sxy, "gaussian_compat": crf.gaussian_compat,
            "bilateral_sxy": crf.bilateral_sxy, "bilateral_srgb": crf.bilateral_srgb,
            "bilateral_compat": crf.bilateral_compat, "iterations": crf.iterations}


def _mean_field(image: np.ndarray, unary: np.ndarray, n_labels: int, crf: CrfConfig) -> np.ndarray:
    height, width = image.shape[:2]
    model = dcrf.DenseCRF2D(width, height, n_labels)
    model.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    model.addPairwiseGaussian(sxy=crf.gaussian_sxy, compat=crf.gaussian_compat)
    model.addPairwiseBilateral(sxy=crf.bilateral_sxy, srgb=crf.bilateral_srgb, rgbim=image,
                               compat=crf.bilateral_compat)
    return np.asarray(model.inference(crf.iterations), dtype=np.float32).reshape(n_labels, height, width)


def _rgb_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"the CRF needs the raw H x W x 3 uint8 RGB image, got {dtype} {shape}")
    # pydensecrf wants a writable C-contiguous buffer; images from Ray's object store are read-only views
    return np.require(image, requirements=["C_CONTIGUOUS", "WRITEABLE"])
