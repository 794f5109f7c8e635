"""`vwe ablate` over seeds: the statistics against hand-computed values, the diagnostics on hand-built cases, and
the command on the tiny config (mean, spread, the paired comparison, its files and the report's figure); a re-run
skipping complete runs is the pipeline's own skipping (test_pipeline.py)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from vwe.ablation import paired, summarize, verdict
from vwe.cli import main
from vwe.diagnostics import CamMass, word_diagnostics
from vwe.models.classifier import ClassifierOutput


def record(variant: str, seed: int, miou: float, **diagnostics: float) -> dict:
    return {"variant": variant, "seed": seed, "cam_miou": miou, "best_cam_miou": miou + 0.01, "best_threshold": 0.2,
            **diagnostics}


def test_the_paired_comparison_uses_the_same_seeds_and_students_t():
    difference = paired([0.52, 0.55, 0.535], [0.48, 0.50, 0.49])
    d = np.array([0.04, 0.05, 0.045])
    assert difference["mean"] == pytest.approx(d.mean())
    assert difference["sd"] == pytest.approx(d.std(ddof=1))
    assert difference["ci95"] == pytest.approx(4.303 * d.std(ddof=1) / math.sqrt(3))
    assert verdict(difference) == "better"
    assert verdict(paired([0.40, 0.41], [0.50, 0.52])) == "worse"
    assert verdict(paired([0.50, 0.60], [0.55, 0.50])) == "within the seed spread"
    assert verdict(paired([0.5], [0.4])) == "one seed: no spread"


def test_the_table_has_mean_spread_and_the_difference_per_variant():
    records = [record("baseline", 1, 0.40), record("baseline", 2, 0.44), record("baseline", 3, 0.42),
               record("vwe+hspp", 1, 0.45, codebook_used=10, cam_on_part=0.5),
               record("vwe+hspp", 2, 0.47, codebook_used=14, cam_on_part=0.3),
               record("vwe+hspp", 3, 0.46, codebook_used=12, cam_on_part=0.4)]
    baseline, words = summarize(records)
    assert (baseline["cam_miou_mean"], baseline["cam_miou_sd"], baseline["cam_miou_per_seed"]) == (42.0, 2.0,
                                                                                                   "40.0 / 44.0 / 42.0")
    assert baseline["vs_baseline"] is None and baseline["codebook_used"] is None and baseline["paper_voc_train"] == 48.3
    assert words["cam_miou_mean"] == 46.0 and words["vs_baseline"] == 4.0
    assert words["vs_baseline_ci95"] == round(4.303 * 1.0 / math.sqrt(3), 2) and words["verdict"] == "better"
    assert words["codebook_used"] == 12.0 and words["cam_on_part"] == 0.4


class FixedWords(nn.Module):
    """A stand-in classifier whose word head says `logits` and whose features' words are `labels`."""

    def __init__(self, logits: torch.Tensor, labels: torch.Tensor | None):
        super().__init__()
        self.logits, self.labels = logits, labels

    def forward(self, images: torch.Tensor) -> ClassifierOutput:
        rows = slice(0, len(images))
        return ClassifierOutput(torch.zeros(len(images), 3), None,
                                None if self.labels is None else self.logits[rows],
                                None if self.labels is None else self.labels[rows], torch.zeros(1))


def test_word_diagnostics_count_the_words_that_win_and_score_the_word_head():
    labels = torch.tensor([[1, 0, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.float32)
    logits = torch.tensor([[2.0, -1, -1, -1, 1], [3.0, 1, -2, -1, -1]])  # 2 true positives + 1, 1 miss, 1 false
    found = word_diagnostics(FixedWords(logits, labels), [torch.zeros(2, 3, 4, 4)])
    assert found["codebook_used"] == 3 and found["codebook_size"] == 5  # words 0, 1, 2 win somewhere
    # predicted [1,0,0,0,1], [1,1,0,0,0]: 8 of 10 right; tp 3, fp 1, fn 1
    assert found["word_label_accuracy"] == pytest.approx(0.8) and found["word_label_f1"] == pytest.approx(6 / 8)
    assert word_diagnostics(FixedWords(logits, None), [torch.zeros(2, 3, 4, 4)]) == {}


def test_cam_mass_is_split_into_part_body_and_elsewhere():
    mask = np.array([[0, 3, 3, 3], [0, 3, 3, 255], [0, 0, 5, 5]], np.uint8)  # class 2 (label 3), class 4 (label 5)
    parts = np.array([[0, 3, 0, 0], [0, 0, 0, 0], [0, 0, 0, 5]], np.uint8)
    cams = np.zeros((2, 3, 4), np.float32)
    cams[0] = [[1, 4, 1, 0], [0, 2, 0, 2], [0, 0, 0, 0]]  # part 4, body 1 + 2 = 3, elsewhere 1 + 2 = 3
    cams[1] = [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]]  # part 1, body 1
    mass = CamMass()
    mass.add(cams, np.array([2, 4]), mask, parts)
    assert mass.shares() == pytest.approx({"cam_on_part": 5 / 12, "cam_on_body": 4 / 12, "cam_elsewhere": 3 / 12,
                                           "cam_part_of_object": 5 / 9})


def test_vwe_ablate_over_two_seeds_on_the_tiny_config(ray_local, tmp_path, capsys):
    args = ["ablate", "--config", "tiny", "--out", str(tmp_path), "--variants", "baseline", "vwe+hspp", "--seeds", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "cam_miou_mean" in out and "cam_miou_sd" in out
    table = json.loads((tmp_path / "ablation" / "ablation.json").read_text())
    baseline, words = table["rows"]
    assert [r["seed"] for r in table["runs"]] == [1, 2, 1, 2]
    for row in (baseline, words):
        values = [100 * r["cam_miou"] for r in table["runs"] if r["variant"] == row["variant"]]
        assert row["seeds"] == 2 and row["cam_miou_mean"] == pytest.approx(np.mean(values), abs=0.01)
        assert row["cam_miou_sd"] == pytest.approx(np.std(values, ddof=1), abs=0.01)
    assert words["vs_baseline"] is not None and words["vs_baseline_ci95"] is not None and words["verdict"]
    assert 1 <= words["codebook_used"] <= 32 and 0 <= words["word_label_accuracy"] <= 1
    assert baseline["codebook_used"] is None and baseline["cam_on_part"] is not None  # CAM shares for every variant
    for name in ("ablation.csv", "runs.csv", "ablation.png"):
        assert (tmp_path / "ablation" / name).stat().st_size > 0
    page = (tmp_path / "report.html").read_text()
    assert '<img id="ablation"' in page and "over 2 seed(s)" in page
    # each run in its own folder, with its seed in its config
    for variant in ("baseline", "vwe_hspp"):
        for seed in (1, 2):
            run = tmp_path / "ablation" / variant / f"seed_{seed}"
            assert f"seed: {seed}" in (run / "classifier" / "config.yaml").read_text()
            assert json.loads((run / "ablation_record.json").read_text())["seed"] == seed
