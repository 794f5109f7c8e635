"""The last stage: `<out_dir>/report.html`, built from what the run folder holds (`vwe.report`)."""
from __future__ import annotations

from typing import Any

from vwe import storage
from vwe.config import Config
from vwe.report import build_report
from vwe.run_folder import RunFolder
from vwe.stages.stage import Stage


def run(cfg: Config) -> dict[str, Any]:
    return {"report": str(build_report(cfg.out_dir))}


STAGE = Stage(
    name="report", run=run,
    is_complete=lambda cfg: storage.is_file(RunFolder.of(cfg).report),
    outputs=lambda cfg: [RunFolder.of(cfg).report, RunFolder.of(cfg).report_pictures],
    depends_on=())
