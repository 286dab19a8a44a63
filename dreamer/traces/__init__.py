"""Recorded sessions: the Trace, its files (JSONL, NPZ, CSV, Parquet, Minari datasets), and a Gymnasium recorder."""

from dreamer.traces.recorder import TraceRecorder, collect_trace, record_steps
from dreamer.traces.storage import load_trace, save_trace
from dreamer.traces.table import TableColumns
from dreamer.traces.trace import Trace, TraceError, TraceSummary, TraceWarning

__all__ = [
    "TableColumns",
    "Trace",
    "TraceError",
    "TraceRecorder",
    "TraceSummary",
    "TraceWarning",
    "collect_trace",
    "load_trace",
    "record_steps",
    "save_trace",
]
