"""PIL's bicubic resize of uint8 images as tensor operations, bit-exact on any device.

torch's own bicubic differs from PIL by up to 2 grey levels (0.035 after normalisation) even with antialias=True,
because PIL filters one axis then the other with 22-bit fixed-point weights and rounds to uint8 after each pass.
Here each pass is a float64 matrix product with PIL's integer weights; every partial sum is an integer below 2**53,
so the result equals PIL's whatever the order of the sums. The CAM path (`vwe.cam.batched_cams`) and the training
augmentation on the device (`vwe.data.device_augment`) both resize this way, so the networks see the pixels the
PIL (host) paths give them.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

PIL_BITS = 22  # PIL's fixed-point precision for 8-bit resampling (32 - 8 - 2)
_HALF = 2.0 ** (PIL_BITS - 1)
_ONE = 2.0**PIL_BITS


def pil_bicubic_resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resizes N x C x H x W images holding 0..255 to `size` (h, w) exactly as PIL's bicubic resize of uint8 images.

    Returns float32 with integer values.
    """
    out_h, out_w = size
    in_h, in_w = images.shape[-2:]
    x = images.to(torch.float64)
    if height_first(in_h, in_w, out_h, out_w):
        x = _resize_rows(x, out_h)
        return _resize_columns(x, out_w).float()
    return _resize_rows(_resize_columns(x, out_w), out_h).float()


def height_first(in_h: int, in_w: int, out_h: int, out_w: int) -> bool:
    """Whether PIL filters the height before the width. Pillow 13 (python-pillow/Pillow#9549) does when it sheds
    more than twice as many rows as columns; older Pillow always starts with the width. Only images shrunk to
    less than about half their height are affected, and the tests pin the Pillow they run with."""
    return out_h < in_h and in_h - out_h > 2 * (in_w - out_w)


def to_uint8_levels(acc: torch.Tensor) -> torch.Tensor:
    """A pass's fixed-point sums -> the uint8 values PIL stores (as float64): round half up, clip to 0..255."""
    return torch.floor((acc + _HALF) / _ONE).clamp_(0, 255)


def _resize_columns(x: torch.Tensor, out_w: int) -> torch.Tensor:
    if out_w == x.shape[-1]:
        return x
    return to_uint8_levels(x @ pil_weights(x.shape[-1], out_w, x.device).T)


def _resize_rows(x: torch.Tensor, out_h: int) -> torch.Tensor:
    if out_h == x.shape[-2]:
        return x
    return to_uint8_levels(pil_weights(x.shape[-2], out_h, x.device) @ x)


@functools.lru_cache(maxsize=32)
def pil_weights(in_size: int, out_size: int, device: torch.device) -> torch.Tensor:
    """out x in float64 matrix of PIL's fixed-point bicubic weights (a = -0.5)."""
    first, weights = pil_taps(in_size, out_size)
    matrix = np.zeros((out_size, in_size))
    columns = first[:, None] + np.arange(weights.shape[1])
    inside = columns < in_size
    matrix[np.nonzero(inside)[0], columns[inside]] = weights[inside]
    return torch.from_numpy(matrix).to(device)


@functools.lru_cache(maxsize=512)
def pil_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """PIL's bicubic filter taps for resizing one axis from `in_size` to `out_size`: output i is the sum over k of
    weights[i, k] * input[first[i] + k] (int64 `first`, float64 integer `weights`, zero past each output's taps).

    The arithmetic follows PIL's own order, vectorised over the outputs: the float64 operations are the same ones,
    so the rounding is too, and the sum that normalises each output's weights runs tap by tap as PIL's does.
    """
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = 2.0 * filter_scale
    inverse = 1.0 / filter_scale
    center = (np.arange(out_size) + 0.5) * scale
    first = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    last = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64)
    taps = int((last - first).max())
    x = first[:, None] + np.arange(taps)
    valid = x < last[:, None]
    weights = np.where(valid, _bicubic((x - center[:, None] + 0.5) * inverse), 0.0)
    total = np.zeros(out_size)
    for k in range(taps):  # tap by tap, as PIL sums: the rounding of the total matters for exactness
        total = total + weights[:, k]
    weights = np.where(total[:, None] != 0.0, weights / np.where(total == 0.0, 1.0, total)[:, None], weights)
    weights = np.trunc(weights * _ONE + np.where(weights < 0, -0.5, 0.5))
    return first, np.where(valid, weights, 0.0)


def _bicubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))
