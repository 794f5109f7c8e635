"""Stage 0: the dataset. Writes the synthetic benchmark into data.root when synth.enabled (for data.dataset coco:
in COCO's format into data.coco_root, then converted into data.root as `vwe data prepare-coco` does), then checks
the VOC-format folder (every split's files, masks against images) and records the counts in
`<out_dir>/data_check.json`."""
from __future__ import annotations

import logging
from typing import Any

from vwe import storage
from vwe.config import Config
from vwe.data.coco import prepare_coco
from vwe.data.synth import generate
from vwe.data.synth_coco import generate_coco
from vwe.data.voc import VOCDataset
from vwe.io import write_json
from vwe.run_folder import RunFolder
from vwe.stages.stage import Stage

log = logging.getLogger(__name__)


def run(cfg: Config) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    synth = cfg.synth
    if cfg.data.dataset == "coco":
        if synth.enabled:
            splits = {"train2014": synth.splits["train_aug"], "val2014": synth.splits["val"]}
            # a few images without annotations and with crowd regions, so a run meets what real COCO holds
            summary["synth"] = generate_coco(cfg.data.coco_root, splits, synth.height, synth.width, seed=synth.seed,
                                             num_classes=synth.num_classes, empty_every=25, crowd_every=5)
        summary["coco"] = prepare_coco(cfg.data.coco_root, cfg.data.root)
    elif synth.enabled:
        summary["synth"] = generate(cfg.data.root, synth.splits, synth.height, synth.width,
                                    num_classes=synth.num_classes, seed=synth.seed, part_scale=synth.part_scale,
                                    context_bias=synth.context_bias)
        summary["synth"].pop("classes", None)
    report = VOCDataset(cfg.data.root).check(skip_bad=cfg.data.skip_bad, sbd_root=cfg.data.sbd_root or None)
    for note in report.notes:
        log.info("%s", note)
    summary["counts"] = report.counts
    summary["bad_files"] = len(report.bad)
    write_json(RunFolder.of(cfg).data_check, summary)
    return summary


STAGE = Stage(
    name="data", run=run,
    is_complete=lambda cfg: storage.is_file(RunFolder.of(cfg).data_check),
    outputs=lambda cfg: [RunFolder.of(cfg).data_check],
    depends_on=("data.dataset", "data.root", "data.sbd_root", "data.coco_root", "data.skip_bad", "synth"))
