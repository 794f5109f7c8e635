"""Image augmentation for the classifier, kept apart from decoding (a GPU path can replace it).

Each transform is a small callable on numpy arrays; the random ones take a `numpy.random.Generator`, so a caller
that seeds the generator gets the same output every time. Training follows METHOD §1.6: resize so the long side is a
random integer in [320, 640] (PIL bicubic), horizontal flip with p = 0.5, ImageNet normalisation, random 512 x 512
crop where a side shorter than the crop is placed at a random offset in a zero (post-normalisation) canvas.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize:
    """uint8 H x W x 3 RGB -> float32 H x W x 3: (x / 255 - mean) / std."""

    def __init__(self, *, mean: tuple[float, float, float] = IMAGENET_MEAN,
                 std: tuple[float, float, float] = IMAGENET_STD):
        self.scale = (1.0 / (255.0 * np.asarray(std))).astype(np.float32)
        self.shift = (-np.asarray(mean) / np.asarray(std)).astype(np.float32)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return image.astype(np.float32) * self.scale + self.shift

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        """The same on a float32 (..., 3, H, W) tensor holding 0..255, on its device: the same float32 operations
        (a product, then a sum), so the same values."""
        scale = torch.from_numpy(self.scale).to(x.device).view(3, 1, 1)
        shift = torch.from_numpy(self.shift).to(x.device).view(3, 1, 1)
        return x * scale + shift


class RandomResizeLong:
    """Resizes (PIL bicubic) so the long side is a random integer in [low, high]; the short side is rounded."""

    def __init__(self, *, low: int, high: int):
        if not 0 < low <= high:
            raise ValueError(f"resize range must satisfy 0 < low <= high, got [{low}, {high}]")
        self.low, self.high = low, high

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        height, width = self.size(image.shape, rng)
        return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))

    def size(self, shape: tuple[int, ...], rng: np.random.Generator) -> tuple[int, int]:
        """The (height, width) an image of `shape` is resized to, drawn from `rng`."""
        long_side = int(rng.integers(self.low, self.high + 1))
        height, width = shape[:2]
        scale = long_side / max(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))


class RandomHorizontalFlip:
    """Mirrors the image left-right with probability p."""

    def __init__(self, *, p: float = 0.5):
        self.p = p

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return image[:, ::-1] if self.draw(rng) else image

    def draw(self, rng: np.random.Generator) -> bool:
        return bool(rng.random() < self.p)


class RandomCrop:
    """A random size x size window; a side shorter than `size` lands at a random offset in a zero canvas."""

    def __init__(self, *, size: int):
        self.size = size

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(image, self.window(image.shape[:2], rng))

    def window(self, shape: tuple[int, ...], rng: np.random.Generator) -> tuple[tuple[int, int, int], ...]:
        """A random window for an image of `shape`, to crop several aligned arrays (an image and its labels) alike."""
        return self._offsets(shape[0], rng), self._offsets(shape[1], rng)

    def apply(self, image: np.ndarray, window: tuple[tuple[int, int, int], ...], fill: int = 0) -> np.ndarray:
        (src_y, dst_y, h), (src_x, dst_x, w) = window
        canvas = np.full((self.size, self.size) + image.shape[2:], fill, dtype=image.dtype)
        canvas[dst_y:dst_y + h, dst_x:dst_x + w] = image[src_y:src_y + h, src_x:src_x + w]
        return canvas

    def _offsets(self, length: int, rng: np.random.Generator) -> tuple[int, int, int]:
        """(offset in the image, offset in the canvas, copied length) along one axis."""
        spare = length - self.size
        if spare >= 0:
            return int(rng.integers(spare + 1)), 0, self.size
        return 0, int(rng.integers(-spare + 1)), length


@dataclass(frozen=True)
class TrainParams:
    """One image's training augmentation: the resized (height, width), the flip, and the crop window
    ((src_y, dst_y, h), (src_x, dst_x, w)) in the resized, flipped image (`RandomCrop.window`)."""

    size: tuple[int, int]
    flip: bool
    window: tuple[tuple[int, int, int], ...]


class TrainTransform:
    """Classifier training augmentation: uint8 H x W x 3 RGB -> float32 3 x crop x crop (METHOD §1.6)."""

    def __init__(self, *, crop_size: int = 512, resize_long: tuple[int, int] = (320, 640), flip: bool = True):
        self.resize = RandomResizeLong(low=resize_long[0], high=resize_long[1])
        self.flip = RandomHorizontalFlip(p=0.5 if flip else 0.0)
        self.normalize = Normalize()
        self.crop = RandomCrop(size=crop_size)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(image, self.draw(image.shape, rng))

    def draw(self, shape: tuple[int, ...], rng: np.random.Generator) -> TrainParams:
        """The random choices for an image of `shape`, in the order `__call__` has always drawn them, so the device
        path (`vwe.data.device_augment`) augments item i of epoch e exactly as this one does."""
        size = self.resize.size(shape, rng)
        flip = self.flip.draw(rng)
        return TrainParams(size, flip, self.crop.window(size, rng))

    def apply(self, image: np.ndarray, params: TrainParams) -> np.ndarray:
        if params.size != image.shape[:2]:
            image = np.asarray(Image.fromarray(image).resize(params.size[::-1], Image.Resampling.BICUBIC))
        if params.flip:
            image = image[:, ::-1]
        image = self.crop.apply(self.normalize(image), params.window)
        return np.ascontiguousarray(image.transpose(2, 0, 1))


class InferenceTransform:
    """Full-image normalisation only: uint8 H x W x 3 RGB -> float32 3 x H x W."""

    def __init__(self) -> None:
        self.normalize = Normalize()

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.normalize(image).transpose(2, 0, 1))
