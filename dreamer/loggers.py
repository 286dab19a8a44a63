"""Metric loggers. Every run appends its rows to `<run dir>/history.jsonl`; `logger.kind` adds wandb
(offline by default, never prompts, never hangs the run) or nothing."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Protocol

from dreamer.artifacts import finite_or_none

HISTORY = "history.jsonl"


class Logger(Protocol):
    def log(self, metrics: dict, step: int) -> None: ...
    def finish(self) -> None: ...


class HistoryLogger:
    """Appends each row as one JSON line `{"step": int, **metrics}` (NaN/inf as null), flushed at once."""

    def __init__(self, path: Path):
        self.file = open(path, "a", encoding="utf-8")

    def log(self, metrics: dict, step: int) -> None:
        self.file.write(json.dumps(finite_or_none({"step": step, **metrics}), default=float) + "\n")
        self.file.flush()

    def finish(self) -> None:
        self.file.close()


class WandbLogger:
    """wandb in `mode` ("offline" by default: files under the run dir, no account, no network)."""

    def __init__(self, run):
        self.run = run

    def log(self, metrics: dict, step: int) -> None:
        self.run.log({k: v for k, v in metrics.items() if v is not None}, step=step)

    def finish(self) -> None:
        self.run.finish()


class Loggers:
    """Every row to each of `loggers`."""

    def __init__(self, *loggers: Logger):
        self.loggers = loggers

    def log(self, metrics: dict, step: int) -> None:
        for logger in self.loggers:
            logger.log(metrics, step)

    def finish(self) -> None:
        for logger in self.loggers:
            logger.finish()


def make_logger(kind: str, run_dir: Path, config: dict, project: str, mode: str, init_timeout_s: float) -> Loggers:
    """The run's history file, plus wandb for `kind` "wandb" (one that cannot start is reported and left out)."""
    if kind not in ("wandb", "none"):
        raise ValueError(f"logger.kind must be 'wandb' or 'none', got {kind!r}")
    history = HistoryLogger(Path(run_dir) / HISTORY)
    if kind == "none":
        return Loggers(history)
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        import wandb

        run = wandb.init(
            project=project,
            mode=mode,
            dir=str(run_dir),
            config=config,
            settings=wandb.Settings(init_timeout=init_timeout_s, console="off", silent=True),
        )
        return Loggers(history, WandbLogger(run))
    except Exception as error:  # wandb must never stop the run
        warnings.warn(f"wandb could not start ({error}); metrics go to history.jsonl and metrics.json only", stacklevel=2)
        return Loggers(history)
