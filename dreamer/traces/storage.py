"""Load and save a Trace by file suffix: `.jsonl` (see `dreamer.traces.jsonl`) or `.npz`."""

from __future__ import annotations

import os
from pathlib import Path

from dreamer.artifacts import atomic_path
from dreamer.traces.jsonl import read_jsonl, write_jsonl
from dreamer.traces.npz import read_npz, write_npz
from dreamer.traces.trace import Trace, TraceError

FORMATS = {".jsonl": (read_jsonl, write_jsonl), ".npz": (read_npz, write_npz)}


def _format(path: Path) -> tuple:
    if path.suffix not in FORMATS:
        raise TraceError(f"unknown trace suffix {path.suffix!r}; expected one of {list(FORMATS)}", str(path))
    return FORMATS[path.suffix]


def load_trace(path: str | os.PathLike) -> Trace:
    """Read and validate the trace at `path`; raises TraceError naming the file (and line or row)."""
    path = Path(path)
    read, _ = _format(path)
    if not path.is_file():
        raise TraceError("no such file", str(path))
    return read(path)


def save_trace(trace: Trace, path: str | os.PathLike) -> Path:
    """Write `trace` atomically (a temporary file in the same folder, then `os.replace`); returns `path`."""
    path = Path(path)
    _, write = _format(path)
    with atomic_path(path) as temporary:
        write(trace, temporary)
    return path
