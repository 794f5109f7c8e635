"""Classifier losses (METHOD §1.5): multi-label soft margin on each head, plus codebook decorrelation for VWL-L;
IRNet's affinity loss (METHOD §3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vwe.config import ModelConfig
from vwe.models.classifier import ClassifierOutput, get_variant


def multilabel_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over batch and classes of BCE-with-logits (= `multilabel_soft_margin_loss`), in fp32 or wider."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return F.multilabel_soft_margin_loss(logits.to(dtype), targets.to(dtype))


def decov_loss(codebook: Tensor) -> Tensor:
    """VWL-L decorrelation: 0.5 * (||G||_F - ||diag G||_2), G = M M^T, M = codebook rows minus their own mean.

    Norms, not squared norms, and rows centred over the feature dimension, not over words (METHOD P10).
    """
    centred = codebook - codebook.mean(dim=1, keepdim=True)
    gram = centred @ centred.T
    return 0.5 * (torch.linalg.norm(gram) - torch.linalg.norm(torch.diagonal(gram)))


def classifier_loss(
    output: ClassifierOutput, labels: Tensor, model_cfg: ModelConfig, codebook: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted training loss of `model_cfg.variant` and its unweighted terms.

    Terms: "img" (image logits vs labels), "w2i" (word-to-image logits vs labels; not for vwl-m), "word" (word
    logits vs word labels) and "decov" (vwl-l; needs `codebook`, see `Classifier.codebook_for_loss`). The terms are
    detached 0-dim tensors, so logging them syncs with the device only when the caller reads them.
    """
    variant = get_variant(model_cfg.variant)
    terms = {"img": multilabel_loss(output.img_logits, labels)}
    weights = {"img": model_cfg.img_loss_weight}
    if variant.codebook is not None:
        if output.w2i_logits is None or output.word_logits is None or output.word_labels is None:
            raise ValueError(f"variant {model_cfg.variant!r} needs the word heads, but the output has none")
        if variant.w2i_loss:
            terms["w2i"] = multilabel_loss(output.w2i_logits, labels)
            weights["w2i"] = model_cfg.w2i_loss_weight
        terms["word"] = multilabel_loss(output.word_logits, output.word_labels)
        weights["word"] = model_cfg.word_loss_weight
    if variant.decov_loss:
        if codebook is None:
            raise ValueError("variant 'vwl-l' adds the decorrelation loss: pass the codebook")
        terms["decov"] = decov_loss(codebook.to(torch.promote_types(codebook.dtype, torch.float32)))
        weights["decov"] = model_cfg.decov_loss_weight
    total = sum(weights[name] * term for name, term in terms.items())
    return total, {name: term.detach() for name, term in terms.items()}


_AFFINITY_EPS = 1e-5


def affinity_loss(affinity: Tensor, background_pairs: Tensor, foreground_pairs: Tensor,
                  negative_pairs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """IRNet's boundary loss: (pos + neg) / 2 with pos = (bg_pos + fg_pos) / 2, where bg_pos and fg_pos average
    -log(affinity) over the background and the foreground pairs and neg averages -log(1 - affinity) over the
    negative pairs (masks from `vwe.affinity.affinity_labels`, all the shape of `affinity`). An empty set of pairs
    contributes 0."""
    affinity = affinity.float()

    def mean(values: Tensor, mask: Tensor) -> Tensor:
        mask = mask.to(values.dtype)
        return (values * mask).sum() / (mask.sum() + _AFFINITY_EPS)

    bg_pos = mean(-torch.log(affinity + _AFFINITY_EPS), background_pairs)
    fg_pos = mean(-torch.log(affinity + _AFFINITY_EPS), foreground_pairs)
    neg = mean(-torch.log(1.0 + _AFFINITY_EPS - affinity), negative_pairs)
    total = ((bg_pos + fg_pos) / 2 + neg) / 2
    return total, {"bg_pos": bg_pos.detach(), "fg_pos": fg_pos.detach(), "neg": neg.detach()}
