"""Load and save a Trace by file suffix (`.jsonl`, `.npz`, `.csv`, `.parquet`), or as a local
Minari dataset with the prefix `minari:` (`minari:ID`)."""

from __future__ import annotations

import os
from pathlib import Path

from dreamer.artifacts import atomic_path
from dreamer.traces.csv import read_csv, write_csv
from dreamer.traces.jsonl import read_jsonl, write_jsonl
from dreamer.traces.minari import MINARI_PREFIX, load_minari, save_minari
from dreamer.traces.npz import read_npz, write_npz
from dreamer.traces.parquet import read_parquet, write_parquet
from dreamer.traces.table import TableColumns
from dreamer.traces.trace import Trace, TraceError

FORMATS = {
    ".jsonl": (read_jsonl, write_jsonl),
    ".npz": (read_npz, write_npz),
    ".csv": (read_csv, write_csv),
    ".parquet": (read_parquet, write_parquet),
}
TABLES = (".csv", ".parquet")  # the formats whose columns `TableColumns` maps


def _format(path: Path) -> tuple:
    if path.suffix not in FORMATS:
        raise TraceError(f"unknown trace suffix {path.suffix!r}; expected one of {list(FORMATS)} "
                         f"or a {MINARI_PREFIX}ID dataset", str(path))
    return FORMATS[path.suffix]


def load_trace(path: str | os.PathLike, columns: TableColumns | None = None) -> Trace:
    """Read and validate the trace at `path` (or the local Minari dataset `minari:ID`); raises
    TraceError naming the file (and line or row). `columns` maps a CSV or Parquet file's columns
    (default: our writers' layout); it is an error for the other formats."""
    minari = str(path).startswith(MINARI_PREFIX)
    read = None if minari else _format(Path(path))[0]
    if columns is not None and (minari or Path(path).suffix not in TABLES):
        raise TraceError(f"columns map only the columns of {' and '.join(TABLES)} files", str(path), "columns")
    if minari:
        return load_minari(str(path).removeprefix(MINARI_PREFIX))
    path = Path(path)
    if not path.is_file():
        raise TraceError("no such file", str(path))
    return read(path, columns or TableColumns()) if path.suffix in TABLES else read(path)


def save_trace(trace: Trace, path: str | os.PathLike) -> Path | str:
    """Write `trace` atomically (a temporary file in the same folder, then `os.replace`) and return
    `path`; `minari:ID` creates that local Minari dataset (never over an existing one)."""
    if str(path).startswith(MINARI_PREFIX):
        save_minari(trace, str(path).removeprefix(MINARI_PREFIX))
        return str(path)
    path = Path(path)
    _, write = _format(path)
    with atomic_path(path) as temporary:
        write(trace, temporary)
    return path
