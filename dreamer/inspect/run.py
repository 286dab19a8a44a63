"""A run dir, read back: what each stage wrote (see `dreamer.pipelines` for the layout of each pipeline's run dir)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from omegaconf import OmegaConf

from dreamer.config import CONF_DIR
from dreamer.loggers import HISTORY
from dreamer.sandbox import SandboxReport, load_sim
from dreamer.sim import FuncSim
from dreamer.traces import Trace, load_trace
from dreamer.writers.stage import read_split


def runs_root() -> Path:
    """Where runs go by default, as an absolute path: `runs/` here, else the checkout's (a notebook's cwd is
    `notebooks/`)."""
    here = Path("runs").resolve()
    return here if here.is_dir() else CONF_DIR.parent / "runs"


def latest_run(root: str | Path | None = None, pipeline: str | None = None) -> Path:
    """The most recently started run dir under `root` (default: `runs_root()`; one holding a config.yaml),
    of `pipeline` if given (`dream`, `opsd_self_context`, `opsd_veteran`, `write`)."""
    root = Path(root) if root is not None else runs_root()
    runs = sorted(root.glob("**/config.yaml"), key=lambda path: path.stat().st_mtime)
    if pipeline is not None:
        runs = [path for path in runs if OmegaConf.load(path).get("pipeline") == pipeline]
    if not runs:
        kind = f" of pipeline {pipeline!r}" if pipeline else ""
        raise FileNotFoundError(f"no run dir{kind} under {root.resolve()}: run `python -m dreamer.train` or "
                                "`python -m dreamer.write trace.path=FILE` first, or give a run dir")
    return runs[-1].parent


@dataclass(frozen=True)
class Run:
    """The artifacts of one run dir; each is read on first use. A stage that has not run gives None."""

    path: Path

    @classmethod
    def load(cls, path: str | Path) -> Run:
        path = Path(path)
        if not (path / "config.yaml").is_file():
            raise FileNotFoundError(f"{path} is not a run dir: it has no config.yaml (a run writes it first)")
        return cls(path)

    @cached_property
    def config(self) -> dict:
        """The resolved config the run was started with."""
        return OmegaConf.to_container(OmegaConf.load(self.path / "config.yaml"))

    @cached_property
    def metrics(self) -> dict | None:
        """metrics.json: `status` "running", "failed", "interrupted" or "finished", and once finished every figure
        (None: no run yet)."""
        path = self.path / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else None

    @property
    def outcome(self) -> str:
        """How the run stands, in words: "not started", "running", "interrupted", "failed: <error>", or for a
        finished run that wrote a sim "finished, sim accepted" / "finished, sim rejected" ("finished" else)."""
        metrics = self.metrics or {}
        status = metrics.get("status", "not started")
        if status == "failed":
            return f"failed: {metrics.get('error', 'no error recorded')}"
        if status == "finished" and "accepted" in metrics:
            return f"finished, sim {'accepted' if metrics['accepted'] else 'rejected'}"
        return status

    @cached_property
    def nonfinite(self) -> dict | None:
        """nonfinite.json, when bad numbers stopped the run: `where`, `message` and `details` (the offending
        transition, its `obs` the state the env stepped from, or the loss terms)."""
        path = self.path / "nonfinite.json"
        return json.loads(path.read_text()) if path.is_file() else None

    @cached_property
    def history(self) -> list[dict]:
        """Every logged row, in order: {"step": int, key: value, ...} (a last line cut short by a crash is left out)."""
        path = self.path / HISTORY
        lines = path.read_text().splitlines() if path.is_file() else []
        rows = []
        for number, line in enumerate(lines, 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if number < len(lines):
                    raise ValueError(f"{path}:{number}: expected a JSON row, got {line[:80]!r}") from None
        return rows

    @cached_property
    def trace(self) -> Trace | None:
        """The real session the sim was written from (the whole of it, after the last round)."""
        path = self.path / "trace.jsonl"
        return load_trace(path) if path.is_file() else None

    @property
    def env_dir(self) -> Path:
        return self.path / "env"

    @cached_property
    def sim_path(self) -> Path | None:
        """The final round's sim source, `env/<sim name>.py`."""
        path = self.env_dir / f"{self.config.get('sim', {}).get('name', 'sim')}.py"
        return path if path.is_file() else None

    @cached_property
    def source(self) -> str | None:
        return None if self.sim_path is None else self.sim_path.read_text()

    @cached_property
    def report(self) -> SandboxReport | None:
        """The sandbox's report on the final sim, judged on the held-out episodes."""
        path = self.env_dir / "report.json"
        return SandboxReport.load(path) if path.is_file() else None

    @cached_property
    def split(self) -> tuple[Trace, Trace] | None:
        """(train, held_out): the session's episodes as the writer and the sandbox saw them."""
        return None if self.trace is None else read_split(self.env_dir, self.trace)

    @property
    def held_out(self) -> Trace | None:
        return None if self.split is None else self.split[1]

    @cached_property
    def selection(self) -> dict | None:
        """The writer's `search/selection.json`: its pick and every candidate's verdict and figures."""
        path = self.env_dir / "search" / "selection.json"
        return json.loads(path.read_text()) if path.is_file() else None

    @property
    def candidates(self) -> list[dict]:
        """Each candidate's summary, with `report` (its full SandboxReport) and `folder` added."""
        search = self.env_dir / "search"
        return [{**candidate, "folder": search / candidate["label"],
                 "report": SandboxReport.load(search / candidate["label"] / "report.json")}
                for candidate in (self.selection or {}).get("candidates", [])]

    def sim(self) -> FuncSim:
        """The accepted sim, loaded to run here (refused, naming the report, if the sandbox rejected it)."""
        if self.sim_path is None:
            raise FileNotFoundError(f"{self.env_dir} holds no sim: this run wrote none")
        return load_sim(self.sim_path)
