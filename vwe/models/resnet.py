"""ResNet backbone for the classifier: torchvision layout and names, frozen BN, output stride 16 (METHOD §1.1).

Parameter names match torchvision's `resnet50` / `resnet101` (minus `fc`), so the standard ImageNet checkpoints
load as they are (`vwe.models.weights.load_backbone`).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from vwe.errors import ConfigError

# name -> (blocks per stage, stem width); stage i has width * 2**i bottleneck channels, 4x that at its output
BACKBONES: dict[str, tuple[tuple[int, int, int, int], int]] = {
    "resnet50": ((3, 4, 6, 3), 64),
    "resnet101": ((3, 4, 23, 3), 64),
    "resnet-tiny": ((1, 1, 1, 1), 8),  # 256 output channels; for CPU tests and the demo
}


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm that always normalises with its stored statistics and never updates them, in train and eval mode.

    The affine weight and bias stay trainable. Buffer names match `nn.BatchNorm2d`, so checkpoints load unchanged.

    Args:
        num_features: number of channels.
        eps: added to the variance, as in `nn.BatchNorm2d`.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # torchvision checkpoints since 0.4 carry a batch counter this module has no use for
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        # cast so a bf16 activation under autocast is not promoted to fp32 by the fp32 statistics
        return x * scale.to(x.dtype).view(1, -1, 1, 1) + shift.to(x.dtype).view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (stride on the 3x3 conv) with frozen BN."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = FrozenBatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = FrozenBatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = FrozenBatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), FrozenBatchNorm2d(out)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNetBackbone(nn.Module):
    """ResNet without `fc`: conv1 / bn1 / maxpool / layer1..layer4, strides (2, 2, 2, 1) -> output stride 16.

    conv1 and bn1 never train. With `detach_layer2`, the output of layer2 is detached and conv1..layer2 are
    frozen (`requires_grad=False`), so only layer3 and layer4 train (METHOD §1.1, D4).

    Args:
        layers: bottleneck blocks in layer1..layer4.
        width: stem channels (64 in torchvision); stage i uses width * 2**i bottleneck channels.
        detach_layer2: stop gradients below layer3.
    """

    def __init__(self, layers: Sequence[int], width: int = 64, detach_layer2: bool = True) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"expected block counts for 4 stages, got {list(layers)}")
        self.detach_layer2 = detach_layer2
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = width
        stages = []
        for i, (blocks, stride) in enumerate(zip(layers, (1, 2, 2, 1))):
            planes = width * 2**i
            stage = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * Bottleneck.expansion
            stage += [Bottleneck(inplanes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = inplanes

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        frozen: list[nn.Module] = [self.conv1, self.bn1]
        if detach_layer2:
            frozen += [self.layer1, self.layer2]
        for module in frozen:
            module.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        if self.detach_layer2:
            x = x.detach()
        return self.layer4(self.layer3(x))


def build_backbone(name: str, detach_layer2: bool = True) -> ResNetBackbone:
    """Returns a randomly initialised backbone: "resnet50", "resnet101" or "resnet-tiny"."""
    if name not in BACKBONES:
        raise ConfigError(f"model.backbone: unknown backbone {name!r} (known: {', '.join(BACKBONES)})")
    layers, width = BACKBONES[name]
    return ResNetBackbone(layers, width=width, detach_layer2=detach_layer2)
