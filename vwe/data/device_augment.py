"""The classifier's training augmentation (`TrainTransform`) for a whole batch on the accelerator, pixel for pixel.

The DataLoader workers only decode: each item carries its uint8 image and the random choices `TrainTransform.draw`
makes for it (so item i of epoch e is augmented exactly as on the host), turned into PIL's filter taps for the
canvas rows and columns its crop shows, with the flip folded into the column taps. `augment_batch` then builds
each image's row and column weight matrices from the taps, resizes with two float64 matrix products exactly as
PIL's bicubic does (`vwe.data.pil_resize`; only the rows and columns the crop keeps are computed), normalises and
zero-fills outside the crop window, as the host path's canvas is. The result equals `TrainTransform`'s (a test
compares them).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from vwe.data.pil_resize import height_first, pil_taps, to_uint8_levels
from vwe.data.transforms import Normalize, TrainParams

_NORMALIZE = Normalize()


def device_item(image: np.ndarray, params: TrainParams, crop: int) -> dict[str, torch.Tensor]:
    """What a worker hands over for one uint8 H x W x 3 image augmented with `params` into a crop x crop canvas."""
    height, width = image.shape[:2]
    (src_y, dst_y, h), (src_x, dst_x, w) = params.window
    out_h, out_w = params.size
    row_first, row_weights = _canvas_taps(height, out_h, src_y, dst_y, h, crop, flip=False)
    col_first, col_weights = _canvas_taps(width, out_w, src_x, dst_x, w, crop, flip=params.flip)
    return {"image": torch.from_numpy(np.ascontiguousarray(image)),
            "row_first": row_first, "row_weights": row_weights, "col_first": col_first, "col_weights": col_weights,
            "window": torch.tensor([dst_y, h, dst_x, w]),
            "height_first": torch.tensor(height_first(height, width, out_h, out_w))}


def _canvas_taps(in_size: int, out_size: int, src: int, dst: int, length: int, crop: int,
                 flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Taps along one axis for the `crop` canvas positions: position dst + j shows resized position src + j of the
    (mirrored, when `flip`) resized image; the other positions get none."""
    first, weights = pil_taps(in_size, out_size)
    positions = src + np.arange(length)
    if flip:
        positions = out_size - 1 - positions
    canvas_first = np.zeros(crop, np.int64)
    canvas_weights = np.zeros((crop, weights.shape[1]))
    canvas_first[dst:dst + length] = first[positions]
    canvas_weights[dst:dst + length] = weights[positions]
    return torch.from_numpy(canvas_first), torch.from_numpy(canvas_weights)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batches `device_item`s (plus any other keys, collated as usual): images zero-padded to the largest height
    and width, taps to the most taps (zero weights)."""
    height = max(item["image"].shape[0] for item in items)
    width = max(item["image"].shape[1] for item in items)
    images = torch.zeros(len(items), height, width, 3, dtype=torch.uint8)
    for i, item in enumerate(items):
        image = item["image"]
        images[i, :image.shape[0], :image.shape[1]] = image
    batch = {"image": images}
    for axis in ("row", "col"):
        taps = max(item[f"{axis}_weights"].shape[1] for item in items)
        batch[f"{axis}_first"] = torch.stack([item[f"{axis}_first"] for item in items])
        batch[f"{axis}_weights"] = torch.stack([
            torch.nn.functional.pad(item[f"{axis}_weights"], (0, taps - item[f"{axis}_weights"].shape[1]))
            for item in items])
    rest = [{k: v for k, v in item.items() if k not in batch} for item in items]
    return {**batch, **default_collate(rest)}


def is_device_batch(batch: dict[str, Any]) -> bool:
    return "row_weights" in batch


def augment_batch(batch: dict[str, Any], device: torch.device | str) -> torch.Tensor:
    """float32 N x 3 x crop x crop on `device`: `TrainTransform`'s output for every item of a `collate`d batch."""
    device = torch.device(device)
    x = batch["image"].to(device, non_blocking=True).permute(0, 3, 1, 2).to(torch.float64)
    rows = _weight_matrix(batch["row_first"], batch["row_weights"], x.shape[2], device)  # N x crop x H
    cols = _weight_matrix(batch["col_first"], batch["col_weights"], x.shape[3], device)  # N x crop x W
    crop = rows.shape[1]
    # PIL's pass order depends on each image's sizes; both orders are exact, so they run as two groups
    first_rows = batch["height_first"].bool()
    if not first_rows.any():
        out = _resize(x, rows, cols, height_first=False)
    elif first_rows.all():
        out = _resize(x, rows, cols, height_first=True)
    else:
        out = torch.empty(len(x), 3, crop, crop, dtype=torch.float64, device=device)
        for flag in (False, True):
            index = torch.nonzero(first_rows == flag).flatten().to(device)
            out[index] = _resize(x[index], rows[index], cols[index], height_first=flag)
    window = batch["window"].to(device, non_blocking=True)
    span = torch.arange(crop, device=device)
    inside_rows = (span >= window[:, 0:1]) & (span < window[:, 0:1] + window[:, 1:2])
    inside_cols = (span >= window[:, 2:3]) & (span < window[:, 2:3] + window[:, 3:4])
    inside = inside_rows[:, None, :, None] & inside_cols[:, None, None, :]
    return torch.where(inside, _NORMALIZE.tensor(out.float()), 0.0)


def _resize(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, height_first: bool) -> torch.Tensor:
    rows, cols_t = rows[:, None], cols[:, None].transpose(-1, -2)
    if height_first:
        return to_uint8_levels(to_uint8_levels(rows @ x) @ cols_t)
    return to_uint8_levels(rows @ to_uint8_levels(x @ cols_t))


def _weight_matrix(first: torch.Tensor, weights: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    """N x crop x `size` float64 matrices with each canvas position's taps at first + k."""
    first = first.to(device, non_blocking=True)
    weights = weights.to(device, non_blocking=True)
    index = (first[..., None] + torch.arange(weights.shape[-1], device=device)).clamp_(max=size - 1)
    matrix = torch.zeros(*first.shape, size, dtype=torch.float64, device=device)
    return matrix.scatter_add_(-1, index, weights)
