"""`vwe run`: the stages of `vwe.stages.STAGES` in order, each skipped when its outputs are complete and were made
from the same config.

Like IRNet's run_sample.py, but a stage decides from its outputs on disk whether it still has work, so an
interrupted run is re-run cheaply with the same command (per-image stages also resume image by image). Each stage
records in `<out_dir>/stages.json` the config fields it depends on (its fingerprint) and when it ran: a changed
field makes it run again, with a line saying which, and once a stage has run, every later stage runs afresh, in
this command or the next one: its old outputs came from the old inputs. Stage wall times and throughput go to
stages.json too. out_dir (and data.root) may be a local or NFS path or an object-store URI such as s3://bucket/run:
every stage reads and writes through `vwe.storage`.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any

from vwe import storage
from vwe.config import Config
from vwe.errors import ConfigError
from vwe.io import write_json
from vwe.run_folder import RunFolder, RunLock
from vwe.stages import STAGE_NAMES, STAGES, stages_of
from vwe.stages.stage import changed_keys

log = logging.getLogger(__name__)


def run(cfg: Config, force: tuple[str, ...] = (), until: str | None = None) -> dict[str, Any]:
    """Runs every stage whose outputs are incomplete or stale (or named in `force`), up to and including `until`;
    returns the per-stage records. The run folder is locked meanwhile."""
    for name in (*force, *([until] if until else [])):
        if name not in STAGE_NAMES:
            raise ConfigError(f"unknown stage {name!r} (stages: {', '.join(STAGE_NAMES)})")
    last = STAGE_NAMES.index(until) if until else len(STAGES) - 1
    planned = [stage for stage in stages_of(cfg) if STAGE_NAMES.index(stage.name) <= last]
    folder = RunFolder.of(cfg)
    with RunLock(folder):
        cfg.dump(folder.config)
        records: dict[str, Any] = json.loads(storage.read_text(folder.stages)) if storage.is_file(folder.stages) else {}
        # each run of a stage gets the next number: outputs older than an earlier stage's are stale, even when that
        # stage ran in an earlier, interrupted command
        made = max((record.get("made", 0) for record in records.values()), default=0)
        for number, stage in enumerate(planned, 1):
            record = records.get(stage.name, {})
            fingerprint = stage.fingerprint(cfg)
            changed = changed_keys(record.get("fingerprint", fingerprint), fingerprint)  # none recorded: made elsewhere
            newer = [s.name for s in planned[:number - 1] if records[s.name].get("made", 0) > record.get("made", 0)]
            if (not changed and not newer and stage.name not in force and record.get("complete", True)
                    and stage.is_complete(cfg)):
                log.info("stage %d/%d %s: outputs complete, skipped", number, len(planned), stage.name)
                records[stage.name] = {**record, "skipped": True, "fingerprint": fingerprint}
                continue
            if changed:
                log.info("stage %s: %s changed since its outputs were made: running it again", stage.name,
                         ", ".join(changed))
            if changed or newer or stage.name in force:
                for path in stage.outputs(cfg):
                    storage.delete(path)
            # recorded before it runs: an interrupted stage then resumes on the next command instead of starting over
            made += 1
            records[stage.name] = {"skipped": False, "complete": False, "made": made, "fingerprint": fingerprint}
            write_json(folder.stages, records)
            log.info("stage %d/%d %s: running", number, len(planned), stage.name)
            start = time.perf_counter()
            result = stage.run(cfg)
            seconds = time.perf_counter() - start
            records[stage.name].update(complete=True, seconds=round(seconds, 2), result=result)
            if result.get("images"):
                records[stage.name]["images_per_s"] = round(result["images"] / seconds, 2)
            write_json(folder.stages, records)
            rate = records[stage.name].get("images_per_s")
            log.info("stage %d/%d %s: done in %.1f s%s", number, len(planned), stage.name, seconds,
                     f", {rate:.1f} images/s" if rate else "")
        write_json(folder.stages, records)
    return records
