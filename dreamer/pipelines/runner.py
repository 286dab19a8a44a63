"""Runs a pipeline in its run dir: the part every pipeline shares.

The run dir gets `config.yaml` (resolved) and `metrics.json` (`status: running`) first, then whatever the
pipeline writes, then the final `metrics.json` (`status: finished`, or `failed`/`interrupted` with the error).
Rerunning the command into an unfinished run dir resumes it (`dreamer.resume`); a finished one is never touched.

On the command line, `ConfigCheck` (a Hydra callback) checks the config before Hydra makes the run dir: a user
error ends the command with its message and exit code 2, without a traceback unless `DREAMER_DEBUG=1`.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from dreamer.artifacts import write_json, write_text
from dreamer.config import build, resolve_device, to_plain
from dreamer.inspect.tables import number
from dreamer.loggers import LoggerConfig, make_logger
from dreamer.pipelines.config import check_run_config, compose_config, trace_columns
from dreamer.pipelines.dream import DREAM
from dreamer.pipelines.opsd_self_context import SELF_CONTEXT
from dreamer.pipelines.opsd_veteran import VETERAN
from dreamer.pipelines.protocol import Pipeline, Run, Stopped
from dreamer.pipelines.write import WRITE
from dreamer.resume import METRICS, Stages, check_same_config, cut_history, run_status
from dreamer.rl import NonFiniteError
from dreamer.sim.fidelity import Fidelity
from dreamer.traces import load_trace

console = Console(stderr=True)
DEBUG = "DREAMER_DEBUG"  # =1: a user error shows its traceback too
PIPELINES: dict[str, Pipeline] = {"dream": DREAM, "opsd_self_context": SELF_CONTEXT, "opsd_veteran": VETERAN, "write": WRITE}


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Check the config, run `cfg.pipeline` in `run_dir` (resuming the unfinished run there, if any); returns
    the metrics also written to `run_dir/metrics.json`."""
    start = time.perf_counter()
    run_dir = Path(run_dir)
    if run_status(run_dir) == "finished":
        raise FileExistsError(f"{run_dir} already holds a finished run (metrics.json); choose another hydra.run.dir")
    check_run_config(cfg, "write" if cfg.get("pipeline") == "write" else "train")
    device = resolve_device(cfg.device)
    pipeline = PIPELINES[cfg.pipeline]
    config = pipeline.configure(cfg)  # every section built first: bad values fail here
    resuming = (run_dir / "config.yaml").is_file()
    if not resuming and run_dir.is_dir() and any(run_dir.iterdir()):
        raise FileExistsError(f"{run_dir} is not empty and holds no run (no config.yaml): choose another hydra.run.dir")
    stages = Stages(run_dir)
    if resuming:
        check_same_config(run_dir, cfg)
        cut_history(run_dir, stages.history_rows)
        for stale in run_dir.rglob(".*.tmp"):  # an atomic write the interruption cut short
            stale.unlink()
        console.print(f"[bold]resuming[/] {run_dir} {stages.where()}")
    else:
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    # a resumed run's wall_seconds and steps/s cover this process only
    header = {"pipeline": cfg.pipeline, "seed": cfg.seed, "device": str(device), "resumed": stages.where() if resuming else None}
    write_json(run_dir / METRICS, {"status": "running", **header})
    torch.manual_seed(cfg.seed)
    logger = make_logger(build(LoggerConfig, cfg.logger, "logger"), run_dir, to_plain(cfg))
    try:
        metrics, summary = pipeline.run(config, Run(run_dir, logger, device, stages))
    except BaseException as error:  # metrics.json says how the run ended (rerunning the command resumes it)
        ended = {"status": "failed" if isinstance(error, Exception) else "interrupted", **header,
                 "error": f"{type(error).__name__}: {error}"}
        if isinstance(error, NonFiniteError):
            write_json(run_dir / "nonfinite.json", {"where": error.where, "message": str(error), "details": error.details})
            ended["nonfinite"] = {"count": 1, "where": error.where, "details": "nonfinite.json"}
        write_json(run_dir / METRICS, ended)
        logger.finish()
        raise
    metrics.update(status="finished", **header, wall_seconds=time.perf_counter() - start)
    write_json(run_dir / METRICS, metrics)
    logger.finish()
    console.print(summary)
    console.print(f"wall time {metrics['wall_seconds']:.0f} s; run dir: {run_dir}")
    return metrics


@contextmanager
def user_errors() -> Iterator[None]:
    """A bad config value, a missing file or a run dir in the way ends the command: its message on stderr,
    exit code 2, no traceback (`DREAMER_DEBUG=1` re-raises)."""
    try:
        yield
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        if os.environ.get(DEBUG) == "1":
            raise
        print(f"error: {error}\n(set {DEBUG}=1 for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


def check_overrides(entry: Literal["train", "write"], args: list[str]) -> None:
    """The command line's overrides before Hydra reads them: one that sets a key the config does not have (Hydra
    would only suggest `+key=...`) or names a missing config file ends the command with a message that lists the
    allowed keys (or options), exit code 2, no traceback. Command lines with Hydra's own flags (`--help`,
    `--cfg`, `-m`, ...) are left to Hydra."""
    from hydra.errors import ConfigCompositionException

    if any(arg.startswith("-") for arg in args):
        return
    with user_errors():
        try:
            compose_config(entry, args)
        except ConfigCompositionException as error:
            unknown = re.match(r"Could not override '([^']+)'", str(error))
            if unknown is None:  # a config group option that is not there: Hydra lists the options
                raise ValueError(str(error).split("\nConfig search path:")[0].strip()) from None
            key = unknown.group(1)
            rest = [arg for arg in args if arg.split("=", 1)[0].lstrip("+~") != key]
            config = compose_config(entry, rest)
            parent = key.rpartition(".")[0]
            while parent and not isinstance(OmegaConf.select(config, parent), DictConfig):
                parent = parent.rpartition(".")[0]  # the deepest section that exists
            node = OmegaConf.select(config, parent) if parent else config
            where = f"under {parent}" if parent else "at the top level"
            raise ValueError(f"unknown config key {key!r}; allowed keys {where}: "
                             f"{sorted(k for k in node if k != 'hydra')}") from None


class ConfigCheck(Callback):
    """Hydra callback (`hydra.callbacks.check_config` in conf/config.yaml and conf/write.yaml): `run`'s
    start-up check of the config and every section its pipeline builds, and that a trace file exists, before
    Hydra makes the run dir."""

    def __init__(self, entry: Literal["train", "write"]):
        self.entry = entry

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        cfg = OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])
        with user_errors():
            check_run_config(cfg, self.entry)
            PIPELINES[cfg.pipeline].configure(cfg)
            path = cfg.trace.path
            if cfg.trace.kind == "file":
                if not str(path).startswith("minari:") and not Path(path).is_file():
                    raise FileNotFoundError(f"trace.path={path}: no such file")
                load_trace(path, trace_columns(cfg.trace))  # the pipeline reads it again (a second, cheap read)


def main(cfg: DictConfig, run_dir: Path) -> None:
    """`run`, as a command: exits with a message when the config or a path is wrong (code 2), the pipeline
    stopped or the sandbox rejected the sim."""
    try:
        with user_errors():
            metrics = run(cfg, run_dir)
    except Stopped as error:
        raise SystemExit(f"stopped: {error}") from None
    if not metrics.get("accepted", True):  # no policy was trained in a sim that the held-out session refutes
        nrmse = Fidelity.from_dict(metrics["fidelity"]).obs_nrmse if metrics["fidelity"] else ()
        worst = "" if not nrmse else f" (held-out one-step NRMSE per obs dim: {', '.join(number(v) for v in nrmse)})"
        trained = " No policy was trained." if cfg.pipeline == "dream" else ""
        raise SystemExit(f"the sandbox rejected the written sim{worst}: " + "; ".join(metrics["reasons"])
                         + f".{trained} What can help: a longer session (trace.steps_per_round), a richer library "
                         f"(writer.degree), or another writer (writer=llm); python -m dreamer.inspect {run_dir} shows the fit")
