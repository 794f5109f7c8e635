"""Global pooling for the image head: hybrid spatial pyramid pooling (HSPP, paper eq. 4, METHOD §1.4), GAP, GMP."""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor


def gap(x: Tensor) -> Tensor:
    """Global average pooling: N x C x h x w -> N x C x 1 x 1."""
    return x.mean(dim=(2, 3), keepdim=True)


def hspp(x: Tensor, gamma: float = 2.0, levels: Sequence[int] = (1, 2, 4)) -> Tensor:
    """Hybrid spatial pyramid pooling: N x C x h x w -> N x C x 1 x 1.

    (gamma * GAP(x) + sum over r in `levels` of the mean over cells of each cell's max) / (gamma + len(levels)).
    Level r max-pools with kernel = stride = (h // r, w // r) and no padding, as the reference does: trailing
    rows/columns that do not fill a cell are dropped, and when h or w is not a multiple of r the level can have
    more than r cells along that side (e.g. h = 7, r = 4 gives kernel 1, i.e. seven cells).
    """
    h, w = x.shape[-2:]
    if min(h, w) < max(levels):
        raise ValueError(f"HSPP level {max(levels)} needs a feature map of at least that size, got {h}x{w}")
    total = gamma * gap(x)
    for r in levels:
        cells = F.max_pool2d(x, kernel_size=(h // r, w // r), stride=(h // r, w // r))
        total = total + gap(cells)
    return total / (gamma + len(levels))
