"""Stage 0: the dataset. Writes the synthetic benchmark into data.root when synth.enabled, then checks the VOC
folder (every split's files, masks against images) and records the counts in `<out_dir>/data_check.json`."""
from __future__ import annotations

import logging
from typing import Any

from vwe import storage
from vwe.config import Config
from vwe.data.synth import generate
from vwe.data.voc import VOCDataset
from vwe.io import write_json
from vwe.run_folder import RunFolder
from vwe.stages.stage import Stage

log = logging.getLogger(__name__)


def run(cfg: Config) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    if cfg.synth.enabled:
        synth = cfg.synth
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
    depends_on=("data.root", "data.sbd_root", "data.skip_bad", "synth"))
