"""Classifier losses: multi-label soft margin, decorrelation, and which terms each variant adds."""
from __future__ import annotations

import math

import pytest
import torch

from vwe.config import ModelConfig
from vwe.losses import classifier_loss, decov_loss, multilabel_loss
from vwe.models import ClassifierOutput


def test_multilabel_loss_is_mean_binary_cross_entropy() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.0], [0.5, 3.0, -2.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    terms = [
        -(t * math.log(1 / (1 + math.exp(-z))) + (1 - t) * math.log(1 - 1 / (1 + math.exp(-z))))
        for z, t in zip(logits.flatten().tolist(), targets.flatten().tolist())
    ]
    assert multilabel_loss(logits, targets).item() == pytest.approx(sum(terms) / len(terms), rel=1e-6)


def test_decov_on_a_2x3_codebook_by_hand() -> None:
    codebook = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]])
    # rows minus their own means (2 and 1): [-1, 0, 1], [-1, -1, 2]; G = [[2, 3], [3, 6]]
    expected = 0.5 * (math.sqrt(4 + 9 + 9 + 36) - math.sqrt(4 + 36))  # norms, not squared norms
    assert decov_loss(codebook).item() == pytest.approx(expected, rel=1e-6)


def test_decov_is_zero_for_uncorrelated_rows_and_ignores_row_offsets() -> None:
    orthogonal = torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 2.0, -2.0]])
    assert decov_loss(orthogonal).item() == pytest.approx(0.0, abs=1e-6)
    assert decov_loss(orthogonal + torch.tensor([[5.0], [-3.0]])).item() == pytest.approx(0.0, abs=1e-5)


def fake_output(with_words: bool) -> ClassifierOutput:
    torch.manual_seed(0)
    n, c, k = 3, 4, 6
    return ClassifierOutput(
        img_logits=torch.randn(n, c, requires_grad=True),
        w2i_logits=torch.randn(n, c, requires_grad=True) if with_words else None,
        word_logits=torch.randn(n, k, requires_grad=True) if with_words else None,
        word_labels=(torch.rand(n, k) > 0.5).float() if with_words else None,
        features=torch.randn(n, 8, 2, 2),
    )


@pytest.mark.parametrize(
    "variant, names",
    [
        ("baseline", {"img"}),
        ("hspp", {"img"}),
        ("vwe", {"img", "w2i", "word"}),
        ("vwe+hspp", {"img", "w2i", "word"}),
        ("vwl-l", {"img", "w2i", "word", "decov"}),
        ("vwl-m", {"img", "word"}),
    ],
)
def test_terms_per_variant_and_weighted_total(variant: str, names: set[str]) -> None:
    out = fake_output(with_words=names != {"img"})
    labels = (torch.rand(3, 4) > 0.5).float()
    codebook = torch.randn(6, 8, requires_grad=True)
    cfg = ModelConfig(
        variant=variant, img_loss_weight=1.5, w2i_loss_weight=0.5, word_loss_weight=2.0, decov_loss_weight=0.25
    )
    total, terms = classifier_loss(out, labels, cfg, codebook)
    assert set(terms) == names
    weights = {"img": 1.5, "w2i": 0.5, "word": 2.0, "decov": 0.25}
    assert total.item() == pytest.approx(sum(weights[n] * terms[n].item() for n in names), rel=1e-6)
    assert terms["img"].item() == pytest.approx(multilabel_loss(out.img_logits, labels).item())
    if "word" in names:
        assert terms["word"].item() == pytest.approx(multilabel_loss(out.word_logits, out.word_labels).item())
    assert all(not t.requires_grad for t in terms.values())
    total.backward()
    assert (codebook.grad is not None) == ("decov" in names)
    if out.w2i_logits is not None:
        assert (out.w2i_logits.grad is not None) == ("w2i" in names)


def test_vwl_l_needs_the_codebook() -> None:
    with pytest.raises(ValueError, match="codebook"):
        classifier_loss(fake_output(True), torch.zeros(3, 4), ModelConfig(variant="vwl-l"))
