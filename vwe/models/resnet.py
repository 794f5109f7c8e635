"""ResNet backbone: torchvision layout and names, frozen BN, output stride 16 for the classifier (METHOD §1.1) or 8
for DeepLab (METHOD §5).

Parameter names match torchvision's `resnet50` / `resnet101` (minus `fc`), so the standard ImageNet checkpoints
load as they are (`vwe.models.weights.load_backbone`). `style="caffe"` gives the MSRA/caffe variant DeepLab's COCO
weights were trained with: the stride on each stage's first 1x1 conv and a ceil-mode stem max-pool.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
        scale, shift = self.scale_shift()
        # cast so a bf16 activation under autocast is not promoted to fp32 by the fp32 statistics
        return x * scale.to(x.dtype).view(1, -1, 1, 1) + shift.to(x.dtype).view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        return scale, self.bias - self.running_mean * scale


def conv_bn(conv: nn.Conv2d, bn: FrozenBatchNorm2d, x: Tensor, folded: bool) -> Tensor:
    """bn(conv(x)); `folded`: as one conv with the BN's scale in its weight and its shift as the bias, which saves
    a pass over the activations. Both the conv weight and the BN affine parameters still get their gradients."""
    if not folded:
        return bn(conv(x))
    scale, shift = bn.scale_shift()
    return F.conv2d(x, conv.weight * scale.view(-1, 1, 1, 1), shift, conv.stride, conv.padding, conv.dilation,
                    conv.groups)


def fold_frozen_bn(model: nn.Module, folded: bool = True) -> nn.Module:
    """Switches every ResNet conv + frozen BN pair in `model` to the folded form (or back). The parameters and
    the state dict stay as they are; only the forward computation changes."""
    for module in model.modules():
        if isinstance(module, (Bottleneck, ResNetBackbone)):
            module.folded_bn = folded
    return model


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (stride on the 3x3 conv, or on the first 1x1 with `stride_in_1x1`) with frozen BN."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 stride_in_1x1: bool = False) -> None:
        super().__init__()
        out = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride_1x1, bias=False)
        self.bn1 = FrozenBatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride_3x3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = FrozenBatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = FrozenBatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), FrozenBatchNorm2d(out)
            )

    folded_bn = False  # see `fold_frozen_bn`

    def forward(self, x: Tensor) -> Tensor:
        fold = self.folded_bn
        identity = x if self.downsample is None else conv_bn(self.downsample[0], self.downsample[1], x, fold)
        y = self.relu(conv_bn(self.conv1, self.bn1, x, fold))
        y = self.relu(conv_bn(self.conv2, self.bn2, y, fold))
        y = conv_bn(self.conv3, self.bn3, y, fold)
        return self.relu(y + identity)


# output stride -> (stride, dilation) of layer1..layer4; a stage whose stride is replaced dilates all its blocks
_STAGE_GEOMETRY = {16: ((1, 1), (2, 1), (2, 1), (1, 1)), 8: ((1, 1), (2, 1), (1, 2), (1, 4))}
STYLES = ("torchvision", "caffe")


class ResNetBackbone(nn.Module):
    """ResNet without `fc`: conv1 / bn1 / maxpool / layer1..layer4.

    Output stride 16: strides (2, 2, 2, 1), no dilation (the classifier, METHOD §1.1). Output stride 8: layer3 and
    layer4 keep stride 1 with dilation 2 and 4 in every block (DeepLab v2, METHOD §5).
    conv1 and bn1 are frozen at construction. With `detach_layer2`, the output of layer2 is detached and
    conv1..layer2 are frozen (`requires_grad=False`), so only layer3 and layer4 train (METHOD §1.1, D4).

    Args:
        layers: bottleneck blocks in layer1..layer4.
        width: stem channels (64 in torchvision); stage i uses width * 2**i bottleneck channels.
        detach_layer2: stop gradients below layer3.
        output_stride: 16 or 8.
        style: "torchvision" (stride on the 3x3 conv) or "caffe" (stride on the first 1x1, ceil-mode max-pool).
    """

    def __init__(self, layers: Sequence[int], width: int = 64, detach_layer2: bool = True, output_stride: int = 16,
                 style: str = "torchvision") -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"expected block counts for 4 stages, got {list(layers)}")
        if output_stride not in _STAGE_GEOMETRY:
            raise ValueError(f"output_stride must be one of {sorted(_STAGE_GEOMETRY)}, got {output_stride}")
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        caffe = style == "caffe"
        self.detach_layer2 = detach_layer2
        self.output_stride = output_stride
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=caffe)
        inplanes = width
        stages = []
        for i, (blocks, (stride, dilation)) in enumerate(zip(layers, _STAGE_GEOMETRY[output_stride])):
            planes = width * 2**i
            stage = [Bottleneck(inplanes, planes, stride, dilation, stride_in_1x1=caffe)]
            inplanes = planes * Bottleneck.expansion
            stage += [Bottleneck(inplanes, planes, dilation=dilation) for _ in range(blocks - 1)]
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

    folded_bn = False  # see `fold_frozen_bn`

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(conv_bn(self.conv1, self.bn1, x, self.folded_bn)))
        x = self.layer2(self.layer1(x))
        if self.detach_layer2:
            x = x.detach()
        return self.layer4(self.layer3(x))


def build_backbone(name: str, detach_layer2: bool = True, output_stride: int = 16,
                   style: str = "torchvision") -> ResNetBackbone:
    """Returns a randomly initialised backbone: "resnet50", "resnet101" or "resnet-tiny"."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r} (known: {', '.join(BACKBONES)})")
    layers, width = BACKBONES[name]
    return ResNetBackbone(layers, width=width, detach_layer2=detach_layer2, output_stride=output_stride, style=style)
