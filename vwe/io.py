"""Small file helpers: every output is written to a temporary name, then renamed (or uploaded in one piece).

Paths may be local, on NFS, or object-store URIs (s3://...): see `vwe.storage`.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from vwe import storage
from vwe.storage import atomic_path

__all__ = ["MetricsLog", "atomic_path", "duration", "update_manifest", "write_json", "write_text"]


def duration(seconds: float) -> str:
    """h:mm:ss (or m:ss under an hour), for progress lines."""
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def update_manifest(path: str | Path, rows: list[dict[str, Any]], key: str = "id") -> int:
    """Merges `rows` into the Parquet manifest at `path` (a row with a known `key` replaces the old one).

    Returns the number of rows in the manifest. Written atomically, so a crash keeps the previous manifest.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    merged: dict[Any, dict[str, Any]] = {}
    if storage.is_file(path):
        with storage.open_input(path) as f:
            for row in pq.read_table(f).to_pylist():
                merged[row[key]] = row
    for row in rows:
        merged[row[key]] = row
    table = pa.Table.from_pylist(sorted(merged.values(), key=lambda r: r[key]))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return table.num_rows


class MetricsLog:
    """A training run's reports as CSV, one row per report (step, epoch, lr, the loss terms, images/s, and the
    epoch-end evaluation where there is one), rewritten atomically at each report. A resumed run starts again
    from its checkpoint's step: rows from that step on are replaced, so the file has one row per step."""

    def __init__(self, path: str | Path):
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if storage.is_file(path):
            self.rows = [{k: _number(v) for k, v in row.items() if v != ""}
                         for row in csv.DictReader(io.StringIO(storage.read_text(path)))]

    def add(self, metrics: dict[str, Any]) -> None:
        self.rows = [row for row in self.rows if row["step"] < metrics["step"]] + [dict(metrics)]
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path, buffer.getvalue())


def _number(text: str) -> int | float:
    return int(text) if text.lstrip("-").isdigit() else float(text)
