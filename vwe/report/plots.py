"""The report's charts, saved as PNGs: the CAM background-score curves, the training loss curves, the stage
timings and the ablation over seeds."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from vwe.report.figures import save_figure

SPLIT_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown")
# the columns of a training stage's metrics CSV (vwe.io.MetricsLog) that are not loss terms
NOT_TERMS = frozenset({"step", "epoch", "lr", "loss", "images_per_s", "cam_miou", "cam_best_miou",
                       "cam_best_threshold"})


def plot_cam_curves(summaries: dict[str, dict[str, Any]], path: str | Path,
                    baselines: dict[str, float | None]) -> None:
    """CAM mIoU against the background score, one eval-cam sweep per split (keyed by split), each with its
    protocol's point (the configured score), the sweep's optimistic best and its all-background baseline."""
    fig = Figure(figsize=(9.0, 4.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for (split, summary), color in zip(summaries.items(), SPLIT_COLORS):
        ax.plot(summary["sweep"]["thresholds"], 100 * np.asarray(summary["sweep"]["miou"], dtype=float),
                marker=".", color=color, label=f"{split}: sweep")
        fixed, at = summary["background_score"], 100 * summary["miou"]
        ax.plot([fixed], [at], "D", color=color, markersize=7,
                label=f"{split} at cam.background_score {fixed:.2f}: {at:.1f}")
        best_t, best = summary["best_threshold"], 100 * summary["best_miou"]
        ax.plot([best_t], [best], "o", mfc="none", mec=color, mew=1.5, markersize=11,
                label=f"{split}, best of the sweep (optimistic): {best:.1f} at {best_t:.2f}")
        baseline = baselines.get(split)
        if baseline is not None:
            ax.axhline(100 * baseline, ls=":", color=color, label=f"{split}, all background: {100 * baseline:.1f}")
    for score in sorted({s["background_score"] for s in summaries.values()}):
        ax.axvline(score, ls="--", lw=0.8, color="grey")
    ax.set_xlabel("background score")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(f"CAM mIoU by background score: {', '.join(summaries)}", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    save_figure(fig, path)


def loss_terms(rows: list[dict[str, Any]]) -> list[str]:
    """The loss columns of a metrics CSV's rows, the total "loss" first, then its terms in the file's order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return [c for c in ("loss",) if c in columns] + [c for c in columns if c not in NOT_TERMS]


def plot_losses(rows: list[dict[str, Any]], path: str | Path, title: str, cam_split: str) -> None:
    """The total loss and each term against the step; the epoch-end CAM mIoU (cam_miou) on a second axis."""
    fig = Figure(figsize=(9.0, 3.8), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for column in loss_terms(rows):
        steps, values = _series(rows, column)
        total = column == "loss"
        ax.plot(steps, values, color="black" if total else None, lw=2.0 if total else 1.0,
                marker="." if len(steps) < 50 else None, label="total loss" if total else column)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    steps, miou = _series(rows, "cam_miou")
    if steps:
        right = ax.twinx()
        right.plot(steps, 100 * np.asarray(miou), "s--", color="tab:red", markersize=6,
                   label=f"CAM mIoU on {cam_split}, epoch ends")
        right.set_ylabel("CAM mIoU (%)", color="tab:red")
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.1 if steps else 1.02, 1.0))
    save_figure(fig, path)


def plot_stage_seconds(stages: list[tuple[str, float, bool]], path: str | Path) -> None:
    """Seconds per stage as horizontal bars, in run order; (name, seconds, skipped): a skipped stage's bar is the
    recorded time of the run that made its outputs, drawn grey."""
    fig = Figure(figsize=(4.8, 0.9 + 0.32 * len(stages)), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    seconds = [s for _, s, _ in stages]
    rows = np.arange(len(stages))
    ax.barh(rows, seconds, color=["#bbbbbb" if skipped else "tab:blue" for _, _, skipped in stages])
    for row, (_, value, skipped) in zip(rows, stages):
        ax.text(value, row, f" {value:,.1f} s" + (" (skipped)" if skipped else ""), va="center", fontsize=8)
    ax.set_yticks(rows, [name for name, _, _ in stages], fontsize=9)
    ax.invert_yaxis()  # run order from the top
    ax.set_xlim(0, 1.3 * max(seconds, default=0) or 1.0)  # room for the labels
    ax.set_xlabel("seconds")
    ax.grid(axis="x", alpha=0.3)
    save_figure(fig, path)


def _series(rows: list[dict[str, Any]], column: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows that have `column` (epoch-end columns are empty in the other rows)."""
    kept = [row for row in rows if row.get(column) is not None and "step" in row]
    return [row["step"] for row in kept], [row[column] for row in kept]


def plot_ablation(rows: list[dict[str, Any]], records: list[dict[str, Any]], path: Any, split: str,
                  background_score: float) -> None:
    """Each variant's CAM mIoU per seed (dots), its mean and SD (bar), and the paper's VOC number (cross)."""
    fig = Figure(figsize=(7.5, 3.8), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for x, row in enumerate(rows):
        values = [100 * r["cam_miou"] for r in records if r["variant"] == row["variant"]]
        ax.errorbar([x], [row["cam_miou_mean"]], yerr=[row["cam_miou_sd"] or 0], fmt="s", color="tab:blue",
                    capsize=6, label="mean ± SD over seeds" if x == 0 else None)
        ax.plot([x] * len(values), values, ".", color="tab:blue", alpha=0.6, label="one seed" if x == 0 else None)
        if row["paper_voc_train"] is not None:
            ax.plot([x], [row["paper_voc_train"]], "x", color="tab:red",
                    label="paper (VOC train, ResNet-50)" if x == 0 else None)
    ax.set_xticks(range(len(rows)), [row["variant"] for row in rows])
    ax.set_ylabel(f"CAM mIoU (%) on {split}")
    ax.set_title(f"CAM ablation at background score {background_score:g}")
    ax.legend(fontsize=8)
    save_figure(fig, path)
