"""DeepLab v2 as deeplab-pytorch trains it on the pseudo labels (METHOD §5): a ResNet at output stride 8, an ASPP of
four dilated 3x3 convs whose outputs are summed, and the multi-scale (MSC) wrapper used for training and testing.

Every BN is fully frozen (running statistics and affine parameters); the backbone's convs train at the base LR, the
ASPP weights at 10x and its biases at 20x without weight decay (`DeepLabV2.param_groups`).

Initialisation (`seg.init`):
    imagenet  a torchvision ResNet checkpoint; torchvision layout; input = RGB with ImageNet mean/std.
    coco      deeplab-pytorch's `deeplabv1_resnet101-coco.pth` (converted from DeepLab's caffe COCO model); caffe
              layout (stride on the first 1x1 conv, ceil-mode stem pool) so the weights compute what they were
              trained to; input = BGR minus the caffe mean, no std (`vwe.data.datasets.deeplab_input`). Its names are
              mapped by `coco_to_backbone_names`; the ASPP is not loaded (METHOD §5).
    classifier
              the backbone of a `vwe train-cam` export (`<out_dir>/classifier/model.pth`), torchvision layout; not
              the paper: where no ImageNet weights fit (the synthetic demo's resnet-tiny), the classifier trained on
              the same image labels is the best start there is.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vwe.config import SegConfig
from vwe.models.resnet import FrozenBatchNorm2d, ResNetBackbone, build_backbone
from vwe.models.weights import classifier_to_backbone_names, load_backbone



class ASPP(nn.Module):
    """Parallel 3x3 convs with dilation = padding = rate, each in_channels -> num_classes with bias; outputs summed.

    Args:
        in_channels: backbone output channels (2048 for ResNet-101).
        num_classes: output classes, background included.
        rates: one dilation per branch (6, 12, 18, 24 in DeepLab v2).
    """

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=rate, dilation=rate, bias=True) for rate in rates)
        for branch in self.branches:
            nn.init.normal_(branch.weight, mean=0.0, std=0.01)
            nn.init.zeros_(branch.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class DeepLabV2(nn.Module):
    """ResNet (output stride 8) + ASPP; `forward` gives logits at 1/8 of the input size.

    Args:
        backbone: a `ResNetBackbone` built with output_stride=8.
        num_classes: output classes, background included (21 for VOC).
        rates: ASPP dilations.
    """

    def __init__(self, backbone: ResNetBackbone, num_classes: int, rates: Sequence[int] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.backbone = backbone
        self.aspp = ASPP(backbone.out_channels, num_classes, rates)
        # deeplab-pytorch optimises every backbone conv, the stem's included (the classifier backbone freezes it),
        # and no BN parameter at all
        backbone.requires_grad_(True)
        for module in backbone.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.aspp(self.backbone(x))

    def param_groups(self, weight_decay: float, aspp_weight_lr_mult: float = 10.0,
                     aspp_bias_lr_mult: float = 20.0) -> list[dict[str, Any]]:
        """SGD groups: backbone convs (lr x1), ASPP weights (x10), ASPP biases (x20, no weight decay); each group
        carries its `lr_mult` for `vwe.training.set_lr`."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        weights = [branch.weight for branch in self.aspp.branches]
        biases = [branch.bias for branch in self.aspp.branches]
        return [
            {"params": backbone, "lr_mult": 1.0, "weight_decay": weight_decay},
            {"params": weights, "lr_mult": aspp_weight_lr_mult, "weight_decay": weight_decay},
            {"params": biases, "lr_mult": aspp_bias_lr_mult, "weight_decay": 0.0},
        ]


def pyramid_logits(model: nn.Module, x: Tensor, scales: Sequence[float]) -> list[Tensor]:
    """Logits of `x` resized by each scale (bilinear, align_corners=False; 1.0 = as is), each at its own size."""
    outputs = []
    for scale in scales:
        scaled = x if scale == 1.0 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        outputs.append(model(scaled))
    return outputs


def max_fusion(logits: Sequence[Tensor]) -> Tensor:
    """Pixel-wise max of logits bilinearly resized to the size of the first (the scale-1.0 logits)."""
    size = logits[0].shape[-2:]
    resized = [logits[0]] + [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in logits[1:]]
    return torch.stack(resized).amax(dim=0)


class MultiScaleDeepLab(nn.Module):
    """deeplab-pytorch's MSC for training: logits at x1 and at each extra scale, then their max (METHOD §5).

    `forward` returns [x1, x0.5, x0.75, max] (for scales 0.5, 0.75), each at its own size; the max is at the x1 size.
    Without extra scales it returns [x1] alone.
    The loss sums cross-entropy over all of them. One forward runs every scale, so DDP sees a single graph.

    Args:
        base: the DeepLab v2 network.
        scales: the extra input scales.
    """

    def __init__(self, base: DeepLabV2, scales: Sequence[float] = (0.5, 0.75)) -> None:
        super().__init__()
        self.base = base
        self.scales = tuple(scales)

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = pyramid_logits(self.base, x, (1.0, *self.scales))
        return [*outputs, max_fusion(outputs)] if self.scales else outputs


def caffe_input(seg: SegConfig) -> bool:
    """Whether the network takes caffe-style input (BGR minus the caffe mean): only with the COCO init."""
    return seg.init == "coco"


def build_deeplab(seg: SegConfig, num_classes: int = 21, load_pretrained: bool = True) -> DeepLabV2:
    """DeepLab v2 from the `seg` config section; loads `seg.pretrained` into the backbone unless told not to."""
    style = "caffe" if caffe_input(seg) else "torchvision"
    backbone = build_backbone(seg.backbone, detach_layer2=False, output_stride=8, style=style)
    model = DeepLabV2(backbone, num_classes, seg.aspp_rates)
    if load_pretrained and seg.pretrained:
        rename = {"coco": coco_to_backbone_names, "classifier": classifier_to_backbone_names}.get(seg.init)
        load_backbone(model.backbone, seg.pretrained, rename=rename)
    return model


# deeplab-pytorch's ResNet names (libs/models/resnet.py, deeplabv2.py): layer1 is the stem (conv1 = conv + bn),
# layer2..layer5 are the four stages of `block1..blockN`, each block of `reduce` (1x1), `conv3x3`, `increase` (1x1)
# and, in the first block, `shortcut`, each a conv + bn pair; the ASPP is `aspp.c0..c3`.
_COCO_STEM = re.compile(r"layer1\.conv1\.(conv|bn)\.(\w+)")
_COCO_BLOCK = re.compile(r"layer([2-5])\.block(\d+)\.(reduce|conv3x3|increase|shortcut)\.(conv|bn)\.(\w+)")
_COCO_UNITS = {("reduce", "conv"): "conv1", ("reduce", "bn"): "bn1", ("conv3x3", "conv"): "conv2",
               ("conv3x3", "bn"): "bn2", ("increase", "conv"): "conv3", ("increase", "bn"): "bn3",
               ("shortcut", "conv"): "downsample.0", ("shortcut", "bn"): "downsample.1"}


def coco_to_backbone_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Renames a deeplab-pytorch DeepLab state dict to `ResNetBackbone` names and drops its ASPP.

    `layer1.conv1.conv.weight` -> `conv1.weight`, `layer1.conv1.bn.*` -> `bn1.*`;
    `layer{k}.block{j}.reduce|conv3x3|increase.conv|bn.*` -> `layer{k-1}.{j-1}.conv1|bn1|conv2|bn2|conv3|bn3.*`;
    `...shortcut.conv|bn.*` -> `layer{k-1}.{j-1}.downsample.0|1.*`. A leading `base.` (the MSC wrapper) is removed;
    BN `num_batches_tracked` counters and `aspp.*` are dropped; any other key is kept as it is, so loading names it.
    """
    renamed = {}
    for name, value in state.items():
        name = name.removeprefix("base.")
        if name.startswith("aspp.") or name.endswith("num_batches_tracked"):
            continue
        if stem := _COCO_STEM.fullmatch(name):
            part, param = stem.groups()
            name = f"{'conv1' if part == 'conv' else 'bn1'}.{param}"
        elif block := _COCO_BLOCK.fullmatch(name):
            layer, index, unit, part, param = block.groups()
            name = f"layer{int(layer) - 1}.{int(index) - 1}.{_COCO_UNITS[unit, part]}.{param}"
        renamed[name] = value
    return renamed
