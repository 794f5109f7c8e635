"""How a stage runs its network: the device, bf16 autocast, channels_last, torch.compile and folded frozen BN.

Every choice comes from the stage's config section (`train`, `cam`, `irn`, `seg`), never from the device type, so
the tests run the branches a GPU run takes on the CPU (which supports bf16 autocast, channels_last and compile
too). The device itself follows `ray.use_gpu`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vwe.models.resnet import fold_frozen_bn


@dataclass(frozen=True)
class Accelerator:
    device: torch.device
    amp: bool = False  # bf16 autocast of the network
    channels_last: bool = False  # NHWC model and inputs (tensor cores read NHWC without transposes)
    compile: bool = False  # torch.compile the training model
    fuse_bn: bool = False  # frozen BN folded into the conv before it

    @classmethod
    def of(cls, section: Any, device: torch.device | str) -> Accelerator:
        """From a config section's `amp`, `channels_last`, `compile` and `fuse_bn` (absent ones are off)."""
        return cls(torch.device(device), **{name: bool(getattr(section, name, False))
                                            for name in ("amp", "channels_last", "compile", "fuse_bn")})

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.amp else torch.float32

    def on_device(self, choice: str) -> bool:
        """Whether an `auto | host | device` setting (image resizing, augmentation) means the device: auto is
        the device unless that is the CPU, where PIL is faster."""
        return choice == "device" or (choice == "auto" and self.device.type != "cpu")

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model on the device, in the configured memory format, with frozen BN folded when asked."""
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed crop sizes: the fastest conv algorithms pay back at once
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        fold_frozen_bn(model, self.fuse_bn)
        return model

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """A batch of N x C x H x W images on the device in the model's memory format (the copy does not block)."""
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images
