"""torch Datasets over a VOC2012 folder: augmented crops for classifier training, full images for inference."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch.utils.data import Dataset

from vwe.data.transforms import TrainTransform
from vwe.data.voc import NUM_CLASSES, VOCDataset, read_image, read_mask
from vwe.errors import DataError


class ClassificationDataset(Dataset):
    """Items {"id": str, "image": float32 3 x crop x crop, "labels": float32[20]} of one split, augmented.

    With a `seed`, item i of epoch e always gets the same augmentation (the generator is seeded with
    (seed, e, i), so DataLoader worker processes do not repeat each other); call `set_epoch` before each epoch
    (it reaches the workers when they are recreated per epoch, the DataLoader default). Without a seed every call
    draws fresh randomness.
    """

    def __init__(self, root: str | Path, split: str, *, crop_size: int = 512,
                 resize_long: tuple[int, int] = (320, 640), flip: bool = True, seed: int | None = None,
                 exclude: Iterable[str] = ()):
        self.voc = VOCDataset(root)
        excluded = set(exclude)
        self.ids = [i for i in self.voc.split_ids(split) if i not in excluded]
        labels = self.voc.image_labels(exclude=excluded)
        unlabeled = [i for i in self.ids if i not in labels]
        if unlabeled:
            raise DataError(f"{self.voc.split_path(split)}: {len(unlabeled)} ids have no mask and no annotation, "
                            f"e.g. {unlabeled[0]} (no image-level labels to train on)")
        self.labels = {i: labels[i] for i in self.ids}
        self.transform = TrainTransform(crop_size=crop_size, resize_long=tuple(resize_long), flip=flip)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        rng = np.random.default_rng(None if self.seed is None else (self.seed, self.epoch, index))
        image = self.transform(read_image(self.voc.image_path(image_id)), rng)
        return {"id": image_id, "image": torch.from_numpy(image), "labels": torch.from_numpy(self.labels[image_id])}


class InferenceDataset(Dataset):
    """Items {"id", "image": uint8 H x W x 3, "labels": float32[20], "mask": uint8 H x W or None} of one split.

    Labels are all zero for an id with neither mask nor annotation (VOC test). Items differ in size and the mask
    may be None: iterate directly, or use a DataLoader with batch_size=None.
    """

    def __init__(self, root: str | Path, split: str, *, exclude: Iterable[str] = ()):
        self.voc = VOCDataset(root)
        excluded = set(exclude)
        self.ids = [i for i in self.voc.split_ids(split) if i not in excluded]
        self.labels = self.voc.image_labels(exclude=excluded)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        mask_path = self.voc.mask_path(image_id)
        labels = self.labels.get(image_id)
        return {
            "id": image_id,
            "image": read_image(self.voc.image_path(image_id)),
            "labels": np.zeros(NUM_CLASSES, np.float32) if labels is None else labels,
            "mask": None if mask_path is None else read_mask(mask_path),
        }
