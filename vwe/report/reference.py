"""The numbers a run's headline scores are compared with: the paper's on VOC, the README's measured demo on the
synthetic benchmark. mIoU in %, keyed by (score, split): score "cam" (CAMs at the fixed background score), "pseudo"
(the CRF pseudo labels), "irnet" (IRNet's labels), "deeplab" / "deeplab_crf" (DeepLab's predictions without / with
the CRF).

Sources:
- VOC: METHOD.md §7 ("Numbers to reproduce"): the VWE poster and tables (the v1 ablation rows, ResNet-50 CAMs; VWE
  CAMs + IRNet pseudo labels; DeepLab v2 ResNet-101 with and without CRF) and the VWL `v2/README.md` (VWL-L, VWL-M
  CAMs, ResNet-101). Numbers the sources do not give for a variant are left out.
- synthetic: README.md's demo table (`--config synthetic`, training seeds 1, 2, 3): the mean, and the sample
  standard deviation as the spread.
"""
from __future__ import annotations

from dataclasses import dataclass

from vwe.config import Config

Key = tuple[str, str]  # (score, split)


@dataclass(frozen=True)
class Reference:
    value: float  # mIoU %
    spread: float | None = None  # sample standard deviation over seeds, where several were measured
    source: str = ""


@dataclass(frozen=True)
class References:
    title: str  # the column's heading
    note: str  # what the column holds, under the table
    values: dict[Key, Reference]


_POSTER = "VWE poster (METHOD.md §7)"
_V2 = "VWL v2/README.md (METHOD.md §7)"
# model.variant -> (its name in the paper, its numbers)
PAPER: dict[str, tuple[str, dict[Key, Reference]]] = {
    "baseline": ("CAM baseline (GAP), ResNet-50", {("cam", "train"): Reference(48.3, source=_POSTER),
                                                   ("cam", "val"): Reference(47.0, source=_POSTER)}),
    "vwe": ("+ VWE, ResNet-50", {("cam", "train"): Reference(51.1, source=_POSTER),
                                 ("cam", "val"): Reference(50.2, source=_POSTER)}),
    "hspp": ("+ HSPP, ResNet-50", {("cam", "train"): Reference(50.6, source=_POSTER),
                                   ("cam", "val"): Reference(50.0, source=_POSTER)}),
    "vwe+hspp": ("VWE v1, ResNet-50 CAMs", {
        ("cam", "train"): Reference(52.9, source=_POSTER),
        ("cam", "val"): Reference(52.0, source=_POSTER),
        ("irnet", "train"): Reference(67.7, source=f"{_POSTER}: VWE CAMs refined by IRNet"),
        ("deeplab", "val"): Reference(66.3, source=f"{_POSTER}: DeepLab v2, ResNet-101, without CRF"),
        ("deeplab_crf", "val"): Reference(67.2, source=f"{_POSTER}: DeepLab v2, ResNet-101, with CRF")}),
    "vwl-l": ("VWL-L, ResNet-101 CAMs", {("cam", "train"): Reference(57.3, source=_V2),
                                         ("cam", "val"): Reference(56.9, source=_V2)}),
    "vwl-m": ("VWL-M, ResNet-101 CAMs", {("cam", "train"): Reference(56.9, source=_V2),
                                         ("cam", "val"): Reference(56.4, source=_V2)}),
}

_DEMO = "README.md demo table, mean ± sample SD of 3 seeds"
DEMO: dict[Key, Reference] = {
    ("cam", "train"): Reference(44.4, 1.6, _DEMO),
    ("cam", "val"): Reference(44.5, 1.7, _DEMO),
    ("pseudo", "train"): Reference(53.5, 4.7, _DEMO),
    ("deeplab_crf", "val"): Reference(52.2, 6.2, _DEMO),
}
_DEMO_NAMES = {"cam": "CAMs", "pseudo": "CRF pseudo labels", "irnet": "IRNet labels", "deeplab": "DeepLab",
               "deeplab_crf": "DeepLab + CRF"}


def references(cfg: Config) -> References:
    """The reference column for this run: the README's demo numbers on the synthetic benchmark, else the paper's
    row of model.variant."""
    if cfg.synth.enabled:
        spreads = ", ".join(f"{_DEMO_NAMES[score]} {split} ± {ref.spread:.1f}" for (score, split), ref in DEMO.items())
        return References(
            "reference: README demo (3 seeds)",
            "Reference: the README's measured demo (--config synthetic, CAMs at its background score 0.35), the "
            f"mean over training seeds 1, 2, 3; the sample standard deviations are {spreads}. A run with another "
            "config or size of the benchmark is not expected to match them.", DEMO)
    name, values = PAPER.get(cfg.model.variant, (cfg.model.variant, {}))
    return References("reference: paper", f"Reference: the paper's numbers on PASCAL VOC 2012 for {name} "
                      "(METHOD.md §7), – where the sources give none.", values)
