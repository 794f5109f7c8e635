"""The multi-label classifier that yields CAMs: ResNet backbone + image head + visual-word heads (METHOD §1.2).

Variants (config `model.variant`, METHOD §1.7):
    baseline   GAP image head only
    vwe        GAP image head + visual words (word-to-image and word heads)
    hspp       HSPP image head only
    vwe+hspp   HSPP + visual words (VWE, IJCAI'21)
    vwl-l      vwe+hspp + codebook decorrelation loss (VWL-L)
    vwl-m      HSPP + memory-bank codebook, layer1/layer2 trained, losses img + word only (VWL-M)

Training loop contract: `out = model(images)`, `loss, terms = vwe.losses.classifier_loss(out, labels, cfg.model,
net.codebook_for_loss())`, and for VWL-M (`net.uses_memory_bank`) call `net.update_memory_bank(out.features)` once per
step after the forward pass on every rank (`net` = the unwrapped model, e.g. `ddp_model.module`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from vwe.config import Config, ModelConfig
from vwe.models.hspp import gap, hspp
from vwe.models.resnet import build_backbone
from vwe.models.visual_words import VisualWords
from vwe.models.weights import load_backbone


@dataclass(frozen=True)
class Variant:
    pool: str  # image-head pooling: "gap" or "hspp"
    codebook: str | None  # None (no visual words), "learned" or "memory"
    w2i_loss: bool  # the word-to-image logits are trained
    decov_loss: bool  # codebook decorrelation loss (VWL-L)
    detach_layer2: bool  # default for model.detach_layer2


VARIANTS: dict[str, Variant] = {
    "baseline": Variant("gap", None, w2i_loss=False, decov_loss=False, detach_layer2=True),
    "vwe": Variant("gap", "learned", w2i_loss=True, decov_loss=False, detach_layer2=True),
    "hspp": Variant("hspp", None, w2i_loss=False, decov_loss=False, detach_layer2=True),
    "vwe+hspp": Variant("hspp", "learned", w2i_loss=True, decov_loss=False, detach_layer2=True),
    "vwl-l": Variant("hspp", "learned", w2i_loss=True, decov_loss=True, detach_layer2=True),
    "vwl-m": Variant("hspp", "memory", w2i_loss=False, decov_loss=False, detach_layer2=False),
}


def get_variant(name: str) -> Variant:
    """The heads, losses and defaults of a `model.variant` name."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r} (known: {', '.join(VARIANTS)})")
    return VARIANTS[name]


class ClassifierOutput(NamedTuple):
    img_logits: Tensor  # N x C, from the pooled features
    w2i_logits: Tensor | None  # N x C, from the word histogram; None without visual words
    word_logits: Tensor | None  # N x k, from GAP of the features; None without visual words
    word_labels: Tensor | None  # N x k multi-hot targets for word_logits (no gradient); None without visual words
    features: Tensor  # N x d x h x w backbone output (layer4)


class Classifier(nn.Module):
    """Backbone plus the heads of one variant.

    Args:
        backbone: "resnet50", "resnet101" or "resnet-tiny".
        variant: a key of `VARIANTS`.
        num_classes: foreground classes C.
        num_words: codebook size k.
        hspp_gamma: weight of the GAP term in HSPP.
        hspp_levels: HSPP pyramid levels.
        detach_layer2: stop gradients below layer3; None takes the variant's default.
        memory_momentum: VWL-M codebook update rate.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        variant: str = "vwe+hspp",
        num_classes: int = 20,
        num_words: int = 256,
        hspp_gamma: float = 2.0,
        hspp_levels: Sequence[int] = (1, 2, 4),
        detach_layer2: bool | None = None,
        memory_momentum: float = 1e-3,
    ) -> None:
        super().__init__()
        self.variant = get_variant(variant)
        self.hspp_gamma = hspp_gamma
        self.hspp_levels = tuple(hspp_levels)
        self.memory_momentum = memory_momentum
        detach = self.variant.detach_layer2 if detach_layer2 is None else detach_layer2
        self.backbone = build_backbone(backbone, detach_layer2=detach)
        dim = self.backbone.out_channels
        self.classifier = nn.Conv2d(dim, num_classes, 1, bias=False)
        self.words: VisualWords | None = None
        self.fc_a: nn.Conv2d | None = None
        self.fc_b: nn.Conv2d | None = None
        if self.variant.codebook is not None:
            self.words = VisualWords(num_words, dim, learnable=self.variant.codebook == "learned")
            self.fc_a = nn.Conv2d(num_words, num_classes, 1, bias=False)
            self.fc_b = nn.Conv2d(dim, num_words, 1, bias=False)
            if not self.variant.w2i_loss:
                # VWL-M computes p_w2i but never trains it (METHOD §1.5); frozen, DDP does not wait for its gradient
                self.fc_a.requires_grad_(False)

    @property
    def uses_memory_bank(self) -> bool:
        return self.words is not None and not self.words.learnable

    def forward_features(self, x: Tensor) -> Tensor:
        """Backbone output N x d x h x w for images N x 3 x H x W (h, w = ceil(H / 16), ceil(W / 16))."""
        return self.backbone(x)

    def forward(self, x: Tensor) -> ClassifierOutput:
        return self.forward_heads(self.forward_features(x))

    def forward_heads(self, features: Tensor) -> ClassifierOutput:
        """All heads of this variant on backbone features."""
        if self.variant.pool == "hspp":
            pooled = hspp(features, self.hspp_gamma, self.hspp_levels)
        else:
            pooled = gap(features)
        img_logits = self.classifier(pooled).flatten(1)
        if self.words is None or self.fc_a is None or self.fc_b is None:
            return ClassifierOutput(img_logits, None, None, None, features)
        words = self.words(features)
        w2i_logits = self.fc_a(words.histogram[:, :, None, None]).flatten(1)
        word_logits = self.fc_b(gap(features)).flatten(1)
        return ClassifierOutput(img_logits, w2i_logits, word_logits, words.word_labels, features)

    def cam(self, x: Tensor) -> Tensor:
        """Class activation maps N x C x h x w for images N x 3 x H x W."""
        return self.cam_from_features(self.forward_features(x))

    def cam_from_features(self, features: Tensor) -> Tensor:
        """ReLU of the image classifier applied at every location of the backbone features."""
        return F.relu(F.conv2d(features, self.classifier.weight))

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, new-layer parameters) that require grad; new layers train at 10x LR (METHOD §1.1)."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        new = [p for name, p in self.named_parameters() if p.requires_grad and not name.startswith("backbone.")]
        return backbone, new

    def codebook_for_loss(self) -> Tensor | None:
        """The codebook when the variant adds the decorrelation loss on it, else None."""
        if self.variant.decov_loss and self.words is not None:
            return self.words.codebook
        return None

    def update_memory_bank(self, features: Tensor) -> None:
        """VWL-M: one codebook update from this step's (detached) backbone features; see `VisualWords.update_memory`."""
        if self.words is None or self.words.learnable:
            raise RuntimeError("update_memory_bank: this variant has no memory-bank codebook (only vwl-m has one)")
        self.words.update_memory(features, self.memory_momentum)


def build_classifier(
    cfg: Config | ModelConfig, num_classes: int | None = None, load_pretrained: bool = True
) -> Classifier:
    """The classifier described by `cfg.model` (or a ModelConfig), with ImageNet weights when `model.pretrained` is set.

    `num_classes` defaults to `cfg.data.num_classes` for a Config, else 20. Pass `load_pretrained=False` when a
    training checkpoint will be loaded over the weights anyway.
    """
    model_cfg = cfg.model if isinstance(cfg, Config) else cfg
    if num_classes is None:
        num_classes = cfg.data.num_classes if isinstance(cfg, Config) else 20
    model = Classifier(
        backbone=model_cfg.backbone,
        variant=model_cfg.variant,
        num_classes=num_classes,
        num_words=model_cfg.num_words,
        hspp_gamma=model_cfg.hspp_gamma,
        hspp_levels=model_cfg.hspp_levels,
        detach_layer2=model_cfg.detach_layer2,
        memory_momentum=model_cfg.memory_momentum,
    )
    if load_pretrained and model_cfg.pretrained:
        load_backbone(model.backbone, model_cfg.pretrained)
    return model
