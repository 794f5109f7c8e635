"""Class activation maps: multi-scale inference, CAM -> label map, and the per-image CAM files (METHOD §2).

`multiscale_cam` is the reference: one image, fp32, PIL resizing, exactly as the authors' `infer_cam.py` computes it.
`batched_cams` is the fast path used by the pipeline: one forward pass per scale for a batch of images, resized on
the accelerator with PIL's own integer arithmetic (`pil_bicubic_resize`), so the network sees the reference's pixels
and the two agree to float rounding.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vwe import storage
from vwe.data.pil_resize import pil_bicubic_resize
from vwe.data.transforms import InferenceTransform, Normalize
from vwe.errors import DataError
from vwe.io import atomic_path

DEFAULT_SCALES = (1.0, 0.5, 1.5, 2.0)
CAM_STRIDE = 4  # the saved `cam` lives on the ceil(H/4) x ceil(W/4) grid that IRNet's random walk uses
_NORM_EPS = 1e-5  # cam_c / (max cam_c + eps), METHOD §2
_CAM_ARRAYS = ("keys", "cam", "high_res")
_NORMALIZE = Normalize()
_INFERENCE_TRANSFORM = InferenceTransform()


@dataclass
class CamResult:
    """One image's CAMs, kept for its ground-truth classes only and max-normalised per class.

    Attributes:
        keys: int64 (K,), 0-based class indices present in the image (segmentation label = key + 1).
        cam: float32 K x ceil(H/4) x ceil(W/4).
        high_res: float32 K x H x W.
    """

    keys: np.ndarray
    cam: np.ndarray
    high_res: np.ndarray


def normalize_image(image: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 RGB -> 3 x H x W float32, (x / 255 - mean) / std with the ImageNet statistics."""
    _check_image(image)
    return torch.from_numpy(_INFERENCE_TRANSFORM(image))


@torch.no_grad()
def multiscale_cam(
    model: nn.Module, image: np.ndarray, labels: np.ndarray, scales: Sequence[float] = DEFAULT_SCALES
) -> CamResult:
    """Reference multi-scale CAM of one image (METHOD §2), in fp32 on the model's device.

    Each scale: PIL-bicubic resize to (round(H*s), round(W*s)), normalise, batch with the h-flip, `model.cam`,
    merge the flip by element-wise max. The maps are summed over scales after a bilinear resize to the stride-4
    grid (`cam`) and to H x W (`high_res`); only the classes in `labels` (20-d multi-hot) are kept.
    """
    _check_image(image)
    _check_scales(scales)
    keys = _keys(labels)
    height, width = image.shape[:2]
    device = _model_device(model)
    cam = torch.zeros(len(keys), *strided_size(height, width), device=device)
    high_res = torch.zeros(len(keys), height, width, device=device)
    index = torch.from_numpy(keys).to(device)
    for scale in scales:
        size = _scaled_size(height, width, scale)
        x = normalize_image(_pil_resize(image, size)).to(device)
        maps = model.cam(torch.stack([x, x.flip(-1)])).float()
        merged = torch.maximum(maps[0], maps[1].flip(-1))[index]
        cam += _bilinear(merged, cam.shape[1:])
        high_res += _bilinear(merged, (height, width))
    return CamResult(keys, _max_normalize(cam).cpu().numpy(), _max_normalize(high_res).cpu().numpy())


@torch.no_grad()
def batched_cams(
    model: nn.Module,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    scales: Sequence[float] = DEFAULT_SCALES,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    resize_on_device: bool | None = None,
) -> list[CamResult]:
    """`multiscale_cam` for many images at once; returns one `CamResult` per image, in order.

    Images of the same size share one forward pass per scale (all images and their flips). `device` defaults to
    the model's. Scaled images are the reference's pixels either way: `pil_bicubic_resize` on the device, or PIL
    on the host; `resize_on_device=None` picks the device unless it is the CPU, where PIL is over 10x faster.
    `dtype` bfloat16/float16 runs the model under autocast; resizes and sums stay fp32. `channels_last` only sets
    the input layout: convert the model once (`model.to(memory_format=torch.channels_last)`) for the full gain.
    """
    if len(images) != len(labels):
        raise ValueError(f"batched_cams: {len(images)} images but {len(labels)} label vectors")
    _check_scales(scales)
    device = torch.device(device) if device is not None else _model_device(model)
    if resize_on_device is None:
        resize_on_device = device.type != "cpu"
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        _check_image(image)
        groups.setdefault(image.shape[:2], []).append(i)
    results: dict[int, CamResult] = {}
    for members in groups.values():
        keys = [_keys(labels[i]) for i in members]
        group = [images[i] for i in members]
        results.update(zip(members, _same_size_cams(
            model, group, keys, scales, device, dtype, channels_last, resize_on_device)))
    return [results[i] for i in range(len(images))]


def _same_size_cams(
    model: nn.Module,
    images: list[np.ndarray],
    keys: list[np.ndarray],
    scales: Sequence[float],
    device: torch.device,
    dtype: torch.dtype,
    channels_last: bool,
    resize_on_device: bool,
) -> list[CamResult]:
    height, width = images[0].shape[:2]
    n = len(images)
    batch = torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2) if resize_on_device else None
    # Every (image, present class) pair becomes one plane, so the resizes below run once for the whole batch.
    owner = torch.cat([torch.full((len(k),), j, dtype=torch.long) for j, k in enumerate(keys)]).to(device)
    classes = torch.from_numpy(np.concatenate(keys)).to(device)
    cam = torch.zeros(len(classes), *strided_size(height, width), device=device)
    high_res = torch.zeros(len(classes), height, width, device=device)
    for scale in scales:
        size = _scaled_size(height, width, scale)
        if batch is not None:
            x = _NORMALIZE.tensor(pil_bicubic_resize(batch, size))
            x = torch.cat([x, x.flip(-1)])
        else:
            scaled = [normalize_image(_pil_resize(image, size)) for image in images]
            x = torch.stack(scaled + [s.flip(-1) for s in scaled]).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            maps = model.cam(x)
        maps = maps.float()
        merged = torch.maximum(maps[:n], maps[n:].flip(-1))[owner, classes]
        cam += _bilinear(merged, cam.shape[1:])
        high_res += _bilinear(merged, (height, width))
    counts = [len(k) for k in keys]
    cams = _max_normalize(cam).cpu().numpy()
    high_reses = _max_normalize(high_res).cpu().numpy()
    bounds = np.cumsum([0, *counts])
    return [CamResult(k, cams[a:b], high_reses[a:b]) for k, a, b in zip(keys, bounds[:-1], bounds[1:])]


def _pil_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if size == image.shape[:2]:
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BICUBIC))


def strided_size(height: int, width: int, stride: int = CAM_STRIDE) -> tuple[int, int]:
    """(ceil(H/stride), ceil(W/stride)): the grid of the saved `cam`."""
    return -(-height // stride), -(-width // stride)


def cam_argmax(scores: np.ndarray, bg_threshold: float) -> np.ndarray:
    """Index map of argmax([bg_threshold plane; scores]): 0 = background, i > 0 = scores[i-1].

    Ties go to the lower index, so a pixel whose best score equals the threshold is background. Scores are
    compared in float32 (the threshold rounded to float32), the dtype CAMs are loaded in.
    """
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 3:
        raise ValueError(f"scores must be K x H x W, got shape {scores.shape}")
    if scores.shape[0] == 0:
        return np.zeros(scores.shape[1:], dtype=np.intp)
    best = scores.argmax(axis=0)
    top = np.take_along_axis(scores, best[None], axis=0)[0]
    return np.where(top > np.float32(bg_threshold), best + 1, 0)


def cam_to_label(scores: np.ndarray, keys: np.ndarray, bg_threshold: float) -> np.ndarray:
    """K x H x W CAM scores (`high_res` or `cam`) -> uint8 segmentation labels (0 = background, key + 1)."""
    keys = np.asarray(keys, dtype=np.int64)
    if len(keys) != np.shape(scores)[0]:
        raise ValueError(f"{len(keys)} keys for {np.shape(scores)[0]} CAM planes")
    lookup = np.concatenate([[0], keys + 1]).astype(np.uint8)
    return lookup[cam_argmax(scores, bg_threshold)]


def save_cam(path: str | Path, result: CamResult, dtype: np.dtype | str = np.float16) -> None:
    """Writes `result` as an uncompressed .npz (arrays keys, cam, high_res; maps stored as `dtype`), atomically.

    Uncompressed: deflate saves only ~20% on CAM maps and costs ~10x the write time.
    """
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"CAM storage dtype must be a float type, got {dtype}")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, keys=np.asarray(result.keys, dtype=np.int64),
                 cam=result.cam.astype(dtype), high_res=result.high_res.astype(dtype))


def load_cam(path: str | Path) -> CamResult:
    """Reads a file written by `save_cam`; maps come back as float32. A bad file raises DataError naming it."""
    try:
        with storage.open_input(path) as f, np.load(f, allow_pickle=False) as data:
            arrays = {name: data[name] for name in _CAM_ARRAYS if name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: unreadable CAM file ({err})") from err
    missing = [name for name in _CAM_ARRAYS if name not in arrays]
    if missing:
        raise DataError(f"{path}: CAM file lacks array(s) {', '.join(missing)}")
    keys = arrays["keys"]
    cam = arrays["cam"].astype(np.float32)
    high_res = arrays["high_res"].astype(np.float32)
    if keys.ndim != 1 or keys.dtype.kind not in "iu":
        raise DataError(f"{path}: `keys` must be a 1-d integer array, got {keys.dtype} {keys.shape}")
    if cam.ndim != 3 or high_res.ndim != 3 or not cam.shape[0] == high_res.shape[0] == len(keys):
        raise DataError(f"{path}: inconsistent shapes keys {keys.shape}, cam {cam.shape}, high_res {high_res.shape}")
    if cam.shape[1:] != strided_size(*high_res.shape[1:]):
        raise DataError(f"{path}: cam grid {cam.shape[1:]} does not match high_res {high_res.shape[1:]} at stride 4")
    return CamResult(keys.astype(np.int64), cam, high_res)


def cam_is_complete(path: str | Path, image_size: tuple[int, int] | None = None,
                    keys: np.ndarray | None = None) -> bool:
    """True when `path` is a whole CAM file that later stages can read: all three arrays, shapes consistent with
    each other and, when given, with the image's H x W `image_size` and its class `keys`. Reads only the array
    headers and the (small) keys, not the maps."""
    try:
        with storage.open_input(path) as f, zipfile.ZipFile(f) as archive:
            shapes = {}
            for name in _CAM_ARRAYS:
                with archive.open(f"{name}.npy") as member:
                    major, _ = np.lib.format.read_magic(member)
                    read_header = np.lib.format.read_array_header_1_0 if major == 1 else \
                        np.lib.format.read_array_header_2_0
                    shapes[name], _, _ = read_header(member)
            with archive.open("keys.npy") as member:
                saved_keys = np.lib.format.read_array(member, allow_pickle=False)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False
    k = len(saved_keys)
    if shapes["keys"] != (k,) or len(shapes["high_res"]) != 3 or shapes["high_res"][0] != k:
        return False
    size = shapes["high_res"][1:]
    if shapes["cam"] != (k, *strided_size(*size)):
        return False
    if image_size is not None and size != tuple(image_size):
        return False
    return keys is None or np.array_equal(saved_keys, keys)


def _bilinear(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if maps.shape[0] == 0:  # an image without classes; interpolate rejects empty inputs
        return maps.new_zeros(0, *size)
    return F.interpolate(maps[None], size=tuple(size), mode="bilinear", align_corners=False)[0]


def _max_normalize(maps: torch.Tensor) -> torch.Tensor:
    return maps / (maps.amax(dim=(1, 2), keepdim=True) + _NORM_EPS)


def _scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    return round(height * scale), round(width * scale)


def _keys(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"image labels must be a 1-d multi-hot vector, got shape {labels.shape}")
    return np.flatnonzero(labels).astype(np.int64)


def _model_device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _check_scales(scales: Sequence[float]) -> None:
    if not scales or scales[0] != 1.0 or any(s <= 0 for s in scales):
        raise ValueError(f"CAM scales must be positive and start with 1.0 (the output size), got {list(scales)}")


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {type(image).__name__} {shape}")
