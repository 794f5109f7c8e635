"""torch Datasets over a VOC2012 folder: augmented crops for classifier and DeepLab training, full images for
inference."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vwe import storage
from vwe.data import device_augment
from vwe.data.transforms import Normalize, RandomCrop, TrainTransform
from vwe.data.voc import IGNORE, NUM_CLASSES, VOCDataset, read_image, read_mask
from vwe.errors import DataError


class ClassificationDataset(Dataset):
    """Items {"id": str, "image": float32 3 x crop x crop, "labels": float32[num_classes]} of one split, augmented.

    With a `seed`, item i of epoch e always gets the same augmentation (the generator is seeded with
    (seed, e, i), so DataLoader worker processes do not repeat each other); call `set_epoch` before each epoch
    (it reaches the workers when they are recreated per epoch, the DataLoader default). Without a seed every call
    draws fresh randomness.

    `augment="device"`: items hold the decoded uint8 image and its augmentation's filter taps instead
    (`vwe.data.device_augment.device_item`); batch them with `collate_fn` and augment them on the accelerator with
    `augment_batch`, which gives the same pixels.
    """

    def __init__(self, root: str | Path, split: str, *, crop_size: int = 512,
                 resize_long: tuple[int, int] = (320, 640), flip: bool = True, seed: int | None = None,
                 exclude: Iterable[str] = (), num_classes: int = NUM_CLASSES, labels_from: str = "xml",
                 augment: str = "host"):
        self.voc = VOCDataset(root)
        excluded = set(exclude)
        self.ids = [i for i in self.voc.split_ids(split) if i not in excluded]
        labels = self.voc.image_labels(exclude=excluded, num_classes=num_classes, labels_from=labels_from)
        unlabeled = [i for i in self.ids if i not in labels]
        if unlabeled:
            raise DataError(f"{self.voc.split_path(split)}: {len(unlabeled)} ids have no mask and no annotation, "
                            f"e.g. {unlabeled[0]} (no image-level labels to train on)")
        self.labels = {i: labels[i] for i in self.ids}
        self.transform = TrainTransform(crop_size=crop_size, resize_long=tuple(resize_long), flip=flip)
        if augment not in ("host", "device"):
            raise ValueError(f"augment must be host or device, got {augment!r}")
        self.augment = augment
        self.collate_fn = device_augment.collate if augment == "device" else None
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        rng = np.random.default_rng(None if self.seed is None else (self.seed, self.epoch, index))
        image = read_image(self.voc.image_path(image_id))
        labels = torch.from_numpy(self.labels[image_id])
        if self.augment == "device":
            item = device_augment.device_item(image, self.transform.draw(image.shape, rng), self.transform.crop.size)
            return {"id": image_id, **item, "labels": labels}
        return {"id": image_id, "image": torch.from_numpy(self.transform(image, rng)), "labels": labels}


CAFFE_MEAN_BGR = (104.008, 116.669, 122.675)  # deeplab-pytorch's input mean for the caffe-converted COCO weights


def deeplab_input(image: np.ndarray, caffe: bool = False) -> np.ndarray:
    """uint8 H x W x 3 RGB -> float32 H x W x 3 DeepLab input.

    caffe: BGR channel order minus the caffe mean, no scaling (the COCO init, METHOD §5); otherwise RGB with
    ImageNet mean/std (`vwe.data.transforms.Normalize`), the input torchvision's ImageNet weights expect.
    """
    if caffe:
        return image[..., ::-1].astype(np.float32) - np.asarray(CAFFE_MEAN_BGR, np.float32)
    return _IMAGENET_INPUT(image)


_IMAGENET_INPUT = Normalize()


class SegmentationDataset(Dataset):
    """Items {"id": str, "image": float32 3 x crop x crop, "label": int64 crop x crop} of one split, augmented.

    Labels are the `<id>.png` index maps in `labels_dir` (pseudo labels, or any masks; 255 is ignored), which must
    have their image's size. Augmentation as deeplab-pytorch (METHOD §5, P12): one scale drawn from `scales` (image
    bilinear without antialiasing like cv2's INTER_LINEAR, label PIL nearest, size floor(side x scale)), padding at
    the bottom/right to the crop size (image 0 after normalisation, i.e. the mean; label 255), a random crop,
    a horizontal flip with p = 0.5. Seeded like `ClassificationDataset`: item i of epoch e uses (seed, e, i).
    """

    def __init__(self, root: str | Path, split: str, labels_dir: str | Path, *, crop_size: int = 321,
                 scales: Iterable[float] = (0.5, 0.75, 1.0, 1.25, 1.5), flip: bool = True, caffe: bool = False,
                 seed: int | None = None, hint: str = "run `vwe make-pseudo` first, or set seg.labels_dir"):
        self.voc = VOCDataset(root)
        self.labels_dir = storage.join(labels_dir)
        self.ids = self.voc.split_ids(split)
        missing = storage.missing(self.labels_dir, [f"{i}.png" for i in self.ids])
        if missing:
            raise DataError(f"{self.labels_dir}: {len(missing)} of the {len(self.ids)} ids of split {split!r} have no "
                            f"label file, e.g. {missing[0]}: {hint}")
        self.crop_size = crop_size
        self.scales = tuple(scales)
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be positive, got {self.scales}")
        self.flip = flip
        self.caffe = caffe
        self.seed = seed
        self.epoch = 0

    def label_path(self, image_id: str) -> str | Path:
        return storage.join(self.labels_dir, f"{image_id}.png")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        image = read_image(self.voc.image_path(image_id))
        label_path = self.label_path(image_id)
        label = read_mask(label_path)
        if label.shape != image.shape[:2]:
            raise DataError(f"{label_path}: label size {label.shape[1]}x{label.shape[0]} (WxH) differs from the "
                            f"image size {image.shape[1]}x{image.shape[0]}")
        rng = np.random.default_rng(None if self.seed is None else (self.seed, self.epoch, index))
        image, label = self.augment(self.prepare(image), label, rng)
        return {"id": image_id, "image": torch.from_numpy(image), "label": torch.from_numpy(label)}

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """The decoded uint8 image as `augment` takes it: DeepLab's normalised input."""
        return deeplab_input(image, self.caffe)

    def augment(self, image: np.ndarray, label: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Normalised float32 H x W x 3 image + uint8 H x W label -> float32 3 x crop x crop, int64 crop x crop."""
        scale = self.scales[int(rng.integers(len(self.scales)))]
        height, width = label.shape
        size = (max(1, int(height * scale)), max(1, int(width * scale)))
        if size != (height, width):
            tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
            tensor = torch.nn.functional.interpolate(tensor, size=size, mode="bilinear", align_corners=False)
            image = tensor[0].numpy().transpose(1, 2, 0)
            label = np.asarray(Image.fromarray(label).resize(size[::-1], Image.Resampling.NEAREST))
        crop = self.crop_size
        padded_h, padded_w = max(crop, size[0]), max(crop, size[1])
        canvas = np.zeros((padded_h, padded_w, 3), np.float32)
        canvas[:size[0], :size[1]] = image
        target = np.full((padded_h, padded_w), IGNORE, np.int64)
        target[:size[0], :size[1]] = label
        top = int(rng.integers(padded_h - crop + 1))
        left = int(rng.integers(padded_w - crop + 1))
        canvas = canvas[top:top + crop, left:left + crop]
        target = target[top:top + crop, left:left + crop]
        if self.flip and rng.random() < 0.5:
            canvas, target = canvas[:, ::-1], target[:, ::-1]
        return np.ascontiguousarray(canvas.transpose(2, 0, 1)), np.ascontiguousarray(target)


class AffinityDataset(SegmentationDataset):
    """Items {"id": str, "image": float32 3 x crop x crop, "label": int64 crop/4 x crop/4} for IRNet's boundary
    network: the confident labels of `labels_dir` (255 unsure), augmented as IRNet trains (METHOD §3): a random
    rescale by a factor uniform in `scale_range` (image PIL bicubic, label PIL nearest, sides rounded), a horizontal
    flip with p = 0.5, ImageNet normalisation, a random crop (image padded with 0, label with 255), and the label
    taken at stride 4 (the centre pixel of each 4 x 4 cell, as PIL's nearest x 0.25 picks it). Seeded like
    `ClassificationDataset`."""

    def __init__(self, root: str | Path, split: str, labels_dir: str | Path, *, crop_size: int = 512,
                 scale_range: tuple[float, float] = (0.5, 1.5), flip: bool = True, seed: int | None = None):
        super().__init__(root, split, labels_dir, crop_size=crop_size, flip=flip, seed=seed,
                         hint="run `vwe make-pseudo` first (IRNet trains on its confident labels)")
        if crop_size % 4:
            raise ValueError(f"crop_size must be a multiple of 4, got {crop_size}")
        self.scale_range = tuple(scale_range)
        self.crop = RandomCrop(size=crop_size)

    def prepare(self, image: np.ndarray) -> np.ndarray:
        return image  # rescaled as uint8 (PIL bicubic), normalised after

    def augment(self, image: np.ndarray, label: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """uint8 H x W x 3 image + uint8 H x W label -> float32 3 x crop x crop, int64 crop/4 x crop/4."""
        scale = rng.uniform(*self.scale_range)
        height, width = label.shape
        size = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL's (w, h)
        if size != (width, height):
            image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))
            label = np.asarray(Image.fromarray(label).resize(size, Image.Resampling.NEAREST))
        if self.flip and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        window = self.crop.window(label.shape, rng)
        image = self.crop.apply(_IMAGENET_INPUT(image), window)
        label = self.crop.apply(label, window, fill=IGNORE)[2::4, 2::4]
        return np.ascontiguousarray(image.transpose(2, 0, 1)), label.astype(np.int64)
