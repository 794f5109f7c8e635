"""IRNet's boundary network (METHOD §3): a frozen ResNet and five side outputs fused into one edge map at stride 4.

Only the boundary branch: IRNet's displacement branch serves instance masks, and the semantic labels come from the
boundaries alone (REFINEMENT §2). The backbone is the classifier's (strides 2, 2, 2, 1), fully frozen: its features
are computed without gradients and only the side convolutions and the fusion learn.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from vwe.config import IrnConfig
from vwe.models.resnet import ResNetBackbone, build_backbone
from vwe.models.weights import classifier_to_backbone_names, load_backbone

SIDE_CHANNELS = 32
SIDE_GROUPS = 4  # GroupNorm groups of each side output


def side_output(in_channels: int, upsample: int) -> nn.Sequential:
    """1x1 conv to 32 channels, GroupNorm, bilinear upsampling to stride 4, ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, SIDE_CHANNELS, 1, bias=False),
                               nn.GroupNorm(SIDE_GROUPS, SIDE_CHANNELS)]
    if upsample > 1:
        layers.append(nn.Upsample(scale_factor=upsample, mode="bilinear", align_corners=False))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BoundaryNet(nn.Module):
    """Edge logits N x 1 x ceil(H/4) x ceil(W/4) of N x 3 x H x W images.

    Side outputs from the stem (stride 4), layer1 (4), layer2 (8), layer3 (16) and layer4 (16), each brought to
    stride 4, cropped to the stem's grid, concatenated (160 channels) and fused by a 1x1 conv with a bias.
    """

    def __init__(self, backbone: ResNetBackbone) -> None:
        super().__init__()
        if backbone.output_stride != 16:
            raise ValueError(f"IRNet uses the output-stride-16 backbone, got {backbone.output_stride}")
        self.backbone = backbone.requires_grad_(False)
        width = backbone.conv1.out_channels
        channels = (width, 4 * width, 8 * width, 16 * width, 32 * width)
        self.sides = nn.ModuleList(side_output(c, up) for c, up in zip(channels, (1, 1, 2, 4, 4)))
        self.fuse = nn.Conv2d(len(channels) * SIDE_CHANNELS, 1, 1, bias=True)

    def features(self, x: Tensor) -> list[Tensor]:
        """The five stage outputs: stem (stride 4), layer1 (4), layer2 (8), layer3 (16), layer4 (16)."""
        b = self.backbone
        stem = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        layer1 = b.layer1(stem)
        layer2 = b.layer2(layer1)
        layer3 = b.layer3(layer2)
        return [stem, layer1, layer2, layer3, b.layer4(layer3)]

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            features = self.features(x)
        height, width = features[0].shape[-2:]
        sides = [side(f)[..., :height, :width] for side, f in zip(self.sides, features)]
        return self.fuse(torch.cat(sides, dim=1))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def build_boundary_net(irn: IrnConfig, load_pretrained: bool = True) -> BoundaryNet:
    """The boundary network of the `irn` config section; loads `irn.pretrained` into the backbone unless told not
    to (a torchvision ImageNet checkpoint, or a `vwe train-cam` export for `init: classifier`)."""
    model = BoundaryNet(build_backbone(irn.backbone, detach_layer2=True, output_stride=16))
    if load_pretrained and irn.pretrained:
        rename = classifier_to_backbone_names if irn.init == "classifier" else None
        load_backbone(model.backbone, irn.pretrained, rename=rename)
    return model
