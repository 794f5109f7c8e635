"""IRNet's inter-pixel affinities and random walk (METHOD §3, REFINEMENT §2), in plain PyTorch.

Everything lives on the stride-4 grid of an image (its saved `cam`). A cell forms a pair with every cell closer than
`radius`; the affinity of a pair is 1 - the largest edge probability on the straight path between the two cells
(both ends included), so a boundary anywhere between them separates them. Pairs are named by the offset (dy, dx)
from the first cell to the second; `path_directions` lists half of them, the other half being the same pairs seen
from the other end.

Training compares the affinities of pairs within `irn.train_radius` (10) with pairs of confident labels
(`affinity_labels`, `vwe.losses.affinity_loss`). Inference walks the CAMs over the pairs within `irn.radius` (5):
with A the affinity matrix and T = A^beta normalised so that each column sums to 1, IRNet computes
cam @ T^(2^exp_times) by squaring a dense HW x HW matrix exp_times times. `random_walk` applies the sparse T
2^exp_times times instead, one neighbourhood sum per step: the same product in exact arithmetic, in O(HW) memory.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vwe.data.voc import IGNORE

Offset = tuple[int, int]


@functools.lru_cache(maxsize=None)
def path_directions(radius: int) -> tuple[Offset, ...]:
    """The offsets (dy, dx) with dy^2 + dx^2 < radius^2 that point forward: (0, 1..r-1), then dy = 1..r-1 with any dx
    (34 for radius 5, 152 for radius 10)."""
    if radius < 2:
        raise ValueError(f"radius must be at least 2, got {radius}")
    directions = [(0, dx) for dx in range(1, radius)]
    directions += [(dy, dx) for dy in range(1, radius) for dx in range(1 - radius, radius)
                   if dy * dy + dx * dx < radius * radius]
    return tuple(directions)


@functools.lru_cache(maxsize=None)
def path_cells(direction: Offset) -> tuple[Offset, ...]:
    """The cells (y, x), relative to the first cell, that the path to `direction` crosses: those of the two cells'
    bounding box whose distance to the line through them is below one cell (both ends included)."""
    dy, dx = direction
    length_sq = dy * dy + dx * dx
    return tuple((y, x) for y in range(min(0, dy), max(0, dy) + 1) for x in range(min(0, dx), max(0, dx) + 1)
                 if (dy * x - dx * y) ** 2 < length_sq)


def path_affinity(edge: Tensor, radius: int) -> Tensor:
    """N x H x W edge probabilities -> N x D x H x W affinities, D = len(path_directions(radius)): entry (d, y, x) is
    1 - the max edge on the path from (y, x) to (y, x) + direction d, and 0 where that cell is off the grid (the
    grid is padded with edge 1, as IRNet pads it)."""
    height, width = edge.shape[-2:]
    pad = radius - 1
    padded = F.pad(edge, (pad, pad, 0, pad), value=1.0)  # forward offsets have dy >= 0
    views: dict[Offset, Tensor] = {}

    def shifted(cell: Offset) -> Tensor:  # the edge at (y, x) + cell for every (y, x) of the grid
        if cell not in views:
            y, x = cell
            views[cell] = padded[..., y:y + height, pad + x:pad + x + width]
        return views[cell]

    maxima = []
    for direction in path_directions(radius):
        cells = path_cells(direction)
        top = shifted(cells[0])
        for cell in cells[1:]:
            top = torch.maximum(top, shifted(cell))
        maxima.append(top)
    return 1.0 - torch.stack(maxima, dim=1)


def affinity_labels(labels: Tensor, radius: int) -> tuple[Tensor, Tensor, Tensor]:
    """N x H x W labels (0 background, classes > 0, 255 unsure) -> three boolean N x D x H x W masks of the pairs of
    `path_affinity`: background pairs (both 0), foreground pairs (the same class), and negative pairs (different
    labels). A pair with an unsure or off-grid cell is in none of them."""
    height, width = labels.shape[-2:]
    pad = radius - 1
    padded = F.pad(labels.long(), (pad, pad, 0, pad), value=IGNORE)
    first = labels.long()[:, None]
    second = torch.stack([padded[..., dy:dy + height, pad + dx:pad + dx + width]
                          for dy, dx in path_directions(radius)], dim=1)
    valid = (first != IGNORE) & (second != IGNORE)
    same = valid & (first == second)
    return same & (first == 0), same & (first > 0), valid & (first != second)


def walk_offsets(radius: int) -> tuple[Offset, ...]:
    """The neighbourhood of one step of the walk: the cell itself, then the forward offsets, then the backward ones
    (69 for radius 5)."""
    forward = path_directions(radius)
    return ((0, 0), *forward, *((-dy, -dx) for dy, dx in forward))


def transition_weights(edge: Tensor, radius: int, beta: float) -> Tensor:
    """N x H x W edge probabilities -> N x O x H x W weights, O = len(walk_offsets(radius)): entry (o, j) is
    T[j + o, j], the share of cell j + o's mass that one step moves to cell j, with T = A^beta normalised over
    each column (A's diagonal is 1; A is 0 between cells farther apart than the radius)."""
    pad = radius - 1
    height, width = edge.shape[-2:]
    forward = path_affinity(edge, radius).pow(beta)  # (d, j): A[j, j + d]^beta
    padded = F.pad(forward, (pad, pad, pad, pad))
    # A is symmetric: A[j, j - d] = A[j - d, j], the forward weight of cell j - d
    backward = torch.stack([padded[:, k, pad - dy:pad - dy + height, pad - dx:pad - dx + width]
                            for k, (dy, dx) in enumerate(path_directions(radius))], dim=1)
    weights = torch.cat([torch.ones_like(edge)[:, None], forward, backward], dim=1)
    # column j of T sums A[i, j]^beta over i, which by symmetry is row j's sum over the offsets
    return weights / weights.sum(dim=1, keepdim=True)


def walk_step(values: Tensor, weights: Tensor, radius: int) -> Tensor:
    """One step v <- v T of P x H x W maps, each with its P x O x H x W `transition_weights`."""
    pad = radius - 1
    height, width = values.shape[-2:]
    padded = F.pad(values, (pad, pad, pad, pad))
    out = torch.zeros_like(values)
    for k, (dy, dx) in enumerate(walk_offsets(radius)):
        out.addcmul_(padded[:, pad + dy:pad + dy + height, pad + dx:pad + dx + width], weights[:, k])
    return out


def random_walk(cams: Sequence[Tensor], edges: Sequence[Tensor], radius: int = 5, beta: float = 10.0,
                exp_times: int = 8) -> list[Tensor]:
    """IRNet's propagation of each image's K x h x w CAMs over its h x w edge map: (cam * (1 - edge)) T^(2^exp_times),
    as 2^exp_times sparse steps, for a batch of images at once; returns the walked K x h x w maps in order.

    Grids of different sizes are padded at the bottom/right to the largest with edge 1: padded cells have no
    affinity with any real cell, so each image walks exactly as it would alone.
    """
    if len(cams) != len(edges):
        raise ValueError(f"random_walk: {len(cams)} CAM stacks but {len(edges)} edge maps")
    for cam, edge in zip(cams, edges):
        if cam.ndim != 3 or edge.shape != cam.shape[1:]:
            raise ValueError(f"random_walk: CAMs {tuple(cam.shape)} do not fit the edge map {tuple(edge.shape)}")
    if not cams:
        return []
    height = max(edge.shape[0] for edge in edges)
    width = max(edge.shape[1] for edge in edges)
    grid = torch.stack([F.pad(edge, (0, width - edge.shape[1], 0, height - edge.shape[0]), value=1.0)
                        for edge in edges])
    weights = transition_weights(grid, radius, beta)
    owner = torch.cat([torch.full((len(cam),), i, dtype=torch.long) for i, cam in enumerate(cams)]).to(grid.device)
    values = torch.cat([F.pad(cam * (1 - edge), (0, width - edge.shape[1], 0, height - edge.shape[0]))
                        for cam, edge in zip(cams, edges)])
    if len(values):
        plane_weights = weights[owner]
        for _ in range(2 ** exp_times):
            values = walk_step(values, plane_weights, radius)
    bounds = np.cumsum([0, *(len(cam) for cam in cams)])
    return [values[a:b, :edge.shape[0], :edge.shape[1]] for a, b, edge in zip(bounds[:-1], bounds[1:], edges)]


def walk_to_label(walked: Tensor, keys: np.ndarray, size: tuple[int, int], background_score: float = 0.25,
                  stride: int = 4) -> np.ndarray:
    """IRNet's semantic label from the walked K x h x w maps: bilinear x stride, cropped to the image's H x W,
    divided by the largest value of any class, argmax against a background plane at `background_score`; returns
    uint8 H x W labels (0 background, key + 1)."""
    keys = np.asarray(keys, dtype=np.int64)
    if len(keys) != len(walked):
        raise ValueError(f"{len(keys)} keys for {len(walked)} walked maps")
    height, width = size
    if len(keys) == 0:
        return np.zeros(size, np.uint8)
    up = F.interpolate(walked[None].float(), scale_factor=stride, mode="bilinear", align_corners=False)
    up = up[0, :, :height, :width]
    up = up / up.max().clamp(min=torch.finfo(up.dtype).tiny)
    scores = torch.cat([up.new_full((1, height, width), background_score), up])
    lookup = np.concatenate([[0], keys + 1]).astype(np.uint8)
    return lookup[scores.argmax(dim=0).cpu().numpy()]
