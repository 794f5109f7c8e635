"""Whether a trained classifier's word branch does its job, and where its CAMs fall (the ablation's diagnostics,
`vwe ablate`).

- Codebook usage: how many of the k visual words are the nearest word of some feature location of some image.
- Word-label accuracy and F1: how well the word head (GAP features -> k logits) predicts which words occur in an
  image (the targets the word loss trains it on).
- CAM mass shares: of each present class's CAM mass, the share on that class's discriminative part, on the rest
  of its objects (the body the part-only CAM misses) and elsewhere (background, other objects), and the part's
  share of the mass on the objects. Needs the part masks that the synthetic benchmark writes
  (`SegmentationParts/`).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vwe.data.voc import IGNORE


@torch.no_grad()
def word_diagnostics(model: nn.Module, batches: Iterable[Tensor]) -> dict[str, Any]:
    """Codebook usage and word-label accuracy / F1 of `model` over image batches (N x 3 x H x W, normalised);
    {} for a variant without visual words."""
    used: Tensor | None = None
    correct = total = true_pos = false_pos = false_neg = 0
    for images in batches:
        output = model(images)
        if output.word_labels is None or output.word_logits is None:
            return {}
        labels = output.word_labels > 0.5
        predicted = output.word_logits > 0
        used = labels.any(0) if used is None else used | labels.any(0)
        correct += int((predicted == labels).sum())
        total += labels.numel()
        true_pos += int((predicted & labels).sum())
        false_pos += int((predicted & ~labels).sum())
        false_neg += int((~predicted & labels).sum())
    if used is None:
        return {}
    return {"codebook_used": int(used.sum()), "codebook_size": int(used.numel()),
            "word_label_accuracy": correct / max(total, 1),
            "word_label_f1": 2 * true_pos / max(2 * true_pos + false_pos + false_neg, 1)}


class CamMass:
    """Sums, over images and their classes, the CAM mass on the class's part, on the rest of its objects, and
    elsewhere."""

    def __init__(self) -> None:
        self.part = self.body = self.total = 0.0

    def add(self, high_res: np.ndarray, keys: np.ndarray, mask: np.ndarray, parts: np.ndarray) -> None:
        """One image: K x H x W CAMs of classes `keys` (0-based), its mask (0 background, key + 1, 255 band) and
        its part map (key + 1 on the class's discriminative part, else 0)."""
        for cam, key in zip(high_res, keys):
            on_part = parts == key + 1
            on_body = (mask == key + 1) & ~on_part
            self.part += float(cam[on_part].sum())
            self.body += float(cam[on_body & (mask != IGNORE)].sum())
            self.total += float(cam.sum())

    def shares(self) -> dict[str, float]:
        total = max(self.total, 1e-12)
        return {"cam_on_part": self.part / total, "cam_on_body": self.body / total,
                "cam_elsewhere": (self.total - self.part - self.body) / total,
                # of the mass on the class's objects, the share its part takes: 1 = the CAM sees the part only
                "cam_part_of_object": self.part / max(self.part + self.body, 1e-12)}
