"""Reading a run folder for the report: what each stage left there, None (or empty) for what is not there yet."""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import yaml

from vwe import storage
from vwe.config import Config
from vwe.data.voc import VOCDataset, read_mask
from vwe.errors import DataError
from vwe.io import MetricsLog
from vwe.metrics import ConfusionMatrix
from vwe.run_folder import RunFolder

SEED = 0
T = TypeVar("T")
# the training stages (vwe.stages.train_cam / train_seg NAME) and the network each trains
TRAINED = {"train_cam": "classifier", "train_irn": "IRNet boundary network", "train_seg": "DeepLab"}


@dataclass
class SegmentationResult:
    """One score file of eval-seg: {miou, iou, split, crf, predictions, ...}."""

    name: str  # the file name without ".json": <split>[_crf]
    split: str
    scores: dict[str, Any]
    predictions: str | Path | None  # the folder of its prediction PNGs; None when it is gone

    @property
    def label(self) -> str:
        return f"DeepLab on {self.split}" + (" + CRF" if self.scores["crf"] else "")


@dataclass
class Run:
    """The parts of a run folder the report shows."""

    folder: RunFolder
    cfg: Config
    config_text: str
    stages: dict[str, Any]
    cam_evals: dict[str, dict[str, Any]]  # split -> its CAM sweep (eval-cam), data.cam_split first
    pseudo_eval: dict[str, Any] | None  # the CRF pseudo labels of data.cam_split (make-pseudo)
    irnet_eval: dict[str, Any] | None  # IRNet's labels of data.cam_split (make-sem-seg)
    segmentation: list[SegmentationResult]
    metrics: dict[str, list[dict[str, Any]]]  # training stage -> its metrics CSV's rows, for those that have one
    ablation: dict[str, Any] | None  # `vwe ablate`'s table (ablation/ablation.json)

    @property
    def splits(self) -> list[str]:
        """The splits the report shows scores of: data.cam_split, data.eval_split, then any other with scores."""
        cfg = self.cfg
        return list(dict.fromkeys([cfg.data.cam_split, cfg.data.eval_split, *self.cam_evals,
                                   *(s.split for s in self.segmentation)]))


def load_run(out_dir: str | Path) -> Run:
    """Reads what a run folder (a folder or URI) holds; one without `config.yaml` is a DataError."""
    out_dir = storage.join(out_dir)
    if not storage.is_uri(out_dir):
        out_dir = Path(out_dir).resolve()  # absolute: the page names it, and the config's "{out_dir}" means it
    folder = RunFolder(out_dir)
    if not storage.is_file(folder.config):
        raise DataError(f"{folder.config}: missing; not a vwe run folder (`vwe run` writes it)")
    config_text = storage.read_text(folder.config)
    # the run folder may have moved since the run: "{out_dir}" in data.root means this folder
    cfg = Config.from_dict(yaml.safe_load(config_text), source=str(folder.config))
    cfg = cfg.with_overrides({"out_dir": str(out_dir)}).resolved()
    split = cfg.data.cam_split
    cam_evals = {s: _read_json(cam_eval_file(folder, s)) for s in dict.fromkeys([split, cfg.data.eval_split])}
    metrics = {stage: _read_metrics(folder.metrics(stage)) for stage in TRAINED}
    return Run(folder, cfg, config_text, _read_json(folder.stages) or {},
               {s: scores for s, scores in cam_evals.items() if scores is not None},
               _read_json(storage.join(folder.pseudo_label_scores, f"pseudo_{split}.json")),
               _read_json(storage.join(folder.sem_seg_label_scores, f"{split}.json")), _segmentation(folder),
               {stage: rows for stage, rows in metrics.items() if rows is not None},
               _read_json(storage.join(folder.ablation, "ablation.json")))


def cam_eval_file(folder: RunFolder, split: str) -> str | Path:
    """The CAM sweep of `split` (eval-cam)."""
    return storage.join(folder.cam_scores, f"{split}.json")


def _segmentation(folder: RunFolder) -> list[SegmentationResult]:
    """The score files of eval-seg, `<split>[_crf].json`, each naming the folder of the predictions it scored."""
    results = []
    for name in storage.listdir(folder.seg_scores):
        if name.endswith(".json"):
            scores = _read_json(storage.join(folder.seg_scores, name))
            predictions = storage.join(scores["predictions"])
            results.append(SegmentationResult(name.removesuffix(".json"), scores["split"], scores,
                                              predictions if storage.is_dir(predictions) else None))
    return results


def all_background_miou(voc: VOCDataset, ids: Iterable[str], num_classes: int = 21) -> float | None:
    """mIoU of labelling every pixel background, over the ground-truth masks of `ids` (ids without one are
    left out): the score any segmentation must beat. None when no id has a mask."""
    matrix = ConfusionMatrix(num_classes)
    for image_id in ids:
        path = voc.mask_path(image_id)
        if path is not None:
            gt = read_mask(path)
            matrix.update(gt, np.zeros_like(gt))
    return None if matrix.matrix.sum() == 0 else matrix.compute().miou


def baselines(run: Run, voc: VOCDataset) -> dict[str, float | None]:
    """The all-background mIoU of the CAM split and of each split with CAM or DeepLab scores."""
    num_classes = run.cfg.data.num_classes + 1
    splits = dict.fromkeys([run.cfg.data.cam_split, *run.cam_evals, *(s.split for s in run.segmentation)])

    def baseline(split: str) -> float | None:
        return or_default(lambda: all_background_miou(voc, voc.split_ids(split), num_classes), None)

    return {split: baseline(split) for split in splits}


def sample_ids(ids: Sequence[str], count: int, seed: int = SEED) -> list[str]:
    """`count` ids drawn without replacement by a seeded generator, in their original order."""
    if count >= len(ids):
        return list(ids)
    picked = np.random.default_rng(seed).choice(len(ids), size=count, replace=False)
    return [ids[i] for i in sorted(picked)]


def or_default(compute: Callable[[], T], default: T) -> T:
    """compute(), or `default` when the data it reads is missing or bad (the report shows what exists)."""
    try:
        return compute()
    except DataError:
        return default


def _read_metrics(path: str | Path) -> list[dict[str, Any]] | None:
    if not storage.is_file(path):
        return None
    try:
        return MetricsLog(path).rows
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not readable as a metrics CSV ({err})") from err


def _read_json(path: str | Path) -> Any:
    if not storage.is_file(path):
        return None
    try:
        return json.loads(storage.read_text(path))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not readable as JSON ({err})") from err
