"""Metric loggers. Every run appends its rows to `<run dir>/history.jsonl`; `logger.kind` adds wandb
(offline by default, never prompts) or nothing.

wandb never stops or hangs the run. Each wandb call (init, every log, finish) runs in a daemon thread of its own
and is waited on for at most `init_timeout_s`: a call that raises or overruns is reported in a warning and wandb is
left out from then on, while the history file, written first, keeps every row. A call left hanging holds nothing:
daemon threads do not keep the process alive. One short thread per call is the whole mechanism (no queue, no
worker to drain), and wandb's calls stay in order because each is waited on before the next.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from dreamer.artifacts import finite_or_none, write_text

HISTORY = "history.jsonl"
WANDB_ID = "wandb_id"  # the run's wandb id, kept so that a resumed run goes on in the same wandb run
FALLBACK = "metrics go to history.jsonl and metrics.json only"


class Logger(Protocol):
    name: str

    def log(self, metrics: dict, step: int) -> None: ...
    def finish(self) -> None: ...


def _bounded(call: Callable[[], Any], timeout_s: float) -> Any:
    """`call()` in a daemon thread, waited on for `timeout_s`: its result, or its error, or TimeoutError."""
    outcome = {}

    def target():
        try:
            outcome["result"] = call()
        except BaseException as error:  # handed to the caller
            outcome["error"] = error

    thread = threading.Thread(target=target, name="wandb-call", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout_s:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class HistoryLogger:
    """Appends each row as one JSON line `{"step": int, **metrics}` (NaN/inf as null), flushed at once."""

    name = "history"

    def __init__(self, path: Path):
        self.file = open(path, "a", encoding="utf-8")

    def log(self, metrics: dict, step: int) -> None:
        self.file.write(json.dumps(finite_or_none({"step": step, **metrics}), default=float) + "\n")
        self.file.flush()

    def finish(self) -> None:
        self.file.close()


class WandbLogger:
    """A wandb run; each call to it raises TimeoutError after `timeout_s`."""

    name = "wandb"

    def __init__(self, run, timeout_s: float):
        self.run = run
        self.timeout_s = timeout_s

    def log(self, metrics: dict, step: int) -> None:
        row = {k: v for k, v in metrics.items() if v is not None}
        _bounded(lambda: self.run.log(row, step=step), self.timeout_s)

    def finish(self) -> None:
        _bounded(self.run.finish, self.timeout_s)


class Loggers:
    """Each row to `history` first, then to each of `others`; one of those that fails is reported and dropped."""

    def __init__(self, history: HistoryLogger, *others: Logger):
        self.history = history
        self.others = list(others)

    def log(self, metrics: dict, step: int) -> None:
        self.history.log(metrics, step)
        self._guarded(lambda logger: logger.log(metrics, step), f"at step {step}")

    def finish(self) -> None:
        self.history.finish()
        self._guarded(lambda logger: logger.finish(), "at finish")

    def _guarded(self, call: Callable[[Logger], None], when: str) -> None:
        for logger in list(self.others):
            try:
                call(logger)
            except Exception as error:  # another logger must never stop the run
                self.others.remove(logger)
                warnings.warn(f"{logger.name} failed {when} ({_describe(error)}) and is left out of the rest of the "
                              f"run; {FALLBACK}", stacklevel=3)


@dataclass(frozen=True)
class LoggerConfig:
    """The `logger` section: history.jsonl always, wandb for kind=wandb."""

    kind: Literal["wandb", "none"]
    project: str | None
    mode: Literal["offline", "online", "disabled"] | None  # wandb's mode (offline: no account, no network)
    init_timeout_s: float | None  # the longest any one wandb call may take (s)

    def __post_init__(self):
        if self.kind not in ("wandb", "none"):
            raise ValueError(f"kind must be 'wandb' or 'none', got {self.kind!r}")
        if self.kind == "wandb" and (self.mode is None or not (self.init_timeout_s or 0) > 0):
            raise ValueError(f"kind=wandb needs a mode and init_timeout_s > 0, got mode={self.mode!r}, "
                             f"init_timeout_s={self.init_timeout_s!r}")


def make_logger(config: LoggerConfig, run_dir: Path, run_config: dict) -> Loggers:
    """The run's history file, plus wandb for kind "wandb" (one that cannot start is reported and left out);
    wandb gets `run_config` as the run's config."""
    history = HistoryLogger(Path(run_dir) / HISTORY)
    if config.kind == "none":
        return Loggers(history)
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        import wandb

        id_path = Path(run_dir) / WANDB_ID
        run_id = id_path.read_text().strip() if id_path.is_file() else uuid.uuid4().hex[:12]
        timeout_s = config.init_timeout_s
        settings = wandb.Settings(init_timeout=timeout_s, console="off", silent=True)
        run = _bounded(lambda: wandb.init(project=config.project, mode=config.mode, dir=str(run_dir), config=run_config,
                                         id=run_id, resume="allow", settings=settings), timeout_s)
        write_text(id_path, run_id)  # a resumed run logs to the same wandb run
    except Exception as error:  # wandb must never stop the run
        warnings.warn(f"wandb could not start ({_describe(error)}); {FALLBACK}", stacklevel=2)
        return Loggers(history)
    return Loggers(history, WandbLogger(run, config.init_timeout_s))
