"""Small file helpers: every output is written to a temporary name in its folder, then renamed."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    The temporary name keeps the suffix so writers that pick a format from it (PIL, numpy) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


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

    path = Path(path)
    merged: dict[Any, dict[str, Any]] = {}
    if path.is_file():
        for row in pq.read_table(path).to_pylist():
            merged[row[key]] = row
    for row in rows:
        merged[row[key]] = row
    table = pa.Table.from_pylist(sorted(merged.values(), key=lambda r: r[key]))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return table.num_rows
