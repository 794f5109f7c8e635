"""Dense CRF (pydensecrf) and IRNet's confident pseudo labels from CAMs (METHOD §3, §4).

Every function takes the raw RGB uint8 image: the bilateral term compares colours, and feeding it a normalised
image cast to uint8 (deeplab-pytorch's `main.py`, METHOD P11) silently wrecks it.
"""
from __future__ import annotations

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels, unary_from_softmax

from vwe.cam import cam_argmax
from vwe.config import CrfConfig, PseudoLabelConfig, SegConfig
from vwe.data.voc import IGNORE


# IRNet's label CRF for the pseudo labels, and deeplab-pytorch's VOC test CRF on DeepLab's softmax (METHOD §4)
LABEL_CRF = PseudoLabelConfig().crf
SOFTMAX_CRF = SegConfig().crf


def crf_labels(image: np.ndarray, labels: np.ndarray, n_labels: int, crf: CrfConfig = LABEL_CRF) -> np.ndarray:
    """Refines an H x W label map (values 0..n_labels-1) with a dense CRF; returns uint8 H x W labels.

    IRNet's `crf_inference_label`: label unary (`crf.gt_prob` on the given label, the rest spread evenly, label 0
    not treated as unsure), Potts Gaussian and bilateral kernels, `crf.iterations` mean-field steps.
    """
    image = _rgb_image(image)
    labels = np.asarray(labels)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"label map shape {labels.shape} does not match image {image.shape[:2]}")
    if not 1 <= n_labels <= 256:
        raise ValueError(f"n_labels must be in 1..256, got {n_labels}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
        raise ValueError(f"labels must lie in 0..{n_labels - 1}, got {labels.min()}..{labels.max()}")
    if n_labels == 1:  # nothing to choose; pydensecrf's label unary divides by n_labels - 1
        return np.zeros(labels.shape, dtype=np.uint8)
    unary = unary_from_labels(labels.astype(np.intp), n_labels, gt_prob=crf.gt_prob, zero_unsure=False)
    return _mean_field(image, unary, n_labels, crf).argmax(axis=0).astype(np.uint8)


def crf_probs(image: np.ndarray, probs: np.ndarray, crf: CrfConfig = SOFTMAX_CRF) -> np.ndarray:
    """Refines C x H x W class probabilities with a dense CRF; returns the C x H x W float32 marginals.

    Unary = -log(clip(p, 1e-5, 1)); take the argmax over classes for labels.
    """
    image = _rgb_image(image)
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2] or probs.shape[0] < 1:
        raise ValueError(f"probs must be C x H x W with H x W = {image.shape[:2]}, got {probs.shape}")
    return _mean_field(image, unary_from_softmax(probs), probs.shape[0], crf)


def confident_pseudo_label(image: np.ndarray, high_res: np.ndarray, keys: np.ndarray,
                           fg_background_score: float = 0.30, bg_background_score: float = 0.05,
                           crf: CrfConfig = LABEL_CRF) -> np.ndarray:
    """IRNet's `cam_to_ir_label` for one image: uint8 H x W with 0 (background), key + 1 (class) or 255 (unsure).

    A high background score (`fg_background_score`) keeps only confident foreground; a low one
    (`bg_background_score`) keeps only confident background. Each map is refined by `crf_labels` over the image's
    own classes plus background, when `crf.enabled`. Label = the foreground map's class where it is not
    background, 0 where both maps say background, 255 elsewhere.
    """
    keys = np.asarray(keys, dtype=np.int64)
    if np.ndim(high_res) != 3 or np.shape(high_res)[0] != len(keys) or np.shape(high_res)[1:] != np.shape(image)[:2]:
        raise ValueError(f"high_res must be K x H x W with K = {len(keys)} keys and H x W = {np.shape(image)[:2]}, "
                         f"got {np.shape(high_res)}")
    lookup = np.concatenate([[0], keys + 1]).astype(np.uint8)

    def confident(background_score: float) -> np.ndarray:
        index = cam_argmax(high_res, background_score)
        if crf.enabled:
            index = crf_labels(image, index, len(lookup), crf)
        return lookup[index]

    foreground = confident(fg_background_score)
    background = confident(bg_background_score)
    label = np.where(background == 0, 0, IGNORE).astype(np.uint8)
    return np.where(foreground != 0, foreground, label)


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
