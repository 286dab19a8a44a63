"""Metric loggers: wandb (offline by default, never prompts, never hangs the run) or none."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Protocol


class Logger(Protocol):
    def log(self, metrics: dict, step: int) -> None: ...
    def finish(self) -> None: ...


class NullLogger:
    def log(self, metrics: dict, step: int) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbLogger:
    """wandb in `mode` ("offline" by default: files under the run dir, no account, no network)."""

    def __init__(self, run):
        self.run = run

    def log(self, metrics: dict, step: int) -> None:
        self.run.log({k: v for k, v in metrics.items() if v is not None}, step=step)

    def finish(self) -> None:
        self.run.finish()


def make_logger(kind: str, run_dir: Path, config: dict, project: str, mode: str, init_timeout_s: float) -> Logger:
    """`kind` "wandb" or "none". A wandb that cannot start is reported and replaced by none."""
    if kind == "none":
        return NullLogger()
    if kind != "wandb":
        raise ValueError(f"logger.kind must be 'wandb' or 'none', got {kind!r}")
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
        return WandbLogger(run)
    except Exception as error:  # wandb must never stop the run
        warnings.warn(f"wandb could not start ({error}); metrics go to metrics.json only", stacklevel=2)
        return NullLogger()
