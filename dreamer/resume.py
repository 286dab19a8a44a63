"""Interrupted runs go on where they stopped: rerunning the same command with the same run dir resumes it.

A run dir's `metrics.json` always says where the run stands (`status`: "running", "failed",
"interrupted" or "finished"); a finished run is never touched again. Every pipeline is a sequence of named stages
(`Stages`, kept in `checkpoint.pt`): a finished stage is not run again, and the stage under way goes on
from its last PPO checkpoint (every `algo.checkpoint_every` updates). On resume, `history.jsonl` is cut
back to the rows it had at the last checkpoint, so nothing is logged twice.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from dreamer.artifacts import atomic_path, write_text
from dreamer.loggers import HISTORY
from dreamer.rl import PPOCheckpoint

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"


def run_status(run_dir: Path) -> str | None:
    """The status in `run_dir/metrics.json` (None: no run there yet)."""
    path = Path(run_dir) / METRICS
    return json.loads(path.read_text()).get("status", "finished") if path.is_file() else None


def check_same_config(run_dir: Path, cfg: DictConfig) -> None:
    """Resuming needs the config the run started with: raise ValueError naming the keys that differ."""
    saved = OmegaConf.load(Path(run_dir) / "config.yaml")
    now = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    flat = lambda c: dict(_flatten(OmegaConf.to_container(c)))  # noqa: E731
    old, new = flat(saved), flat(now)
    differing = sorted(key for key in old.keys() | new.keys() if old.get(key, "<unset>") != new.get(key, "<unset>"))
    if differing:
        shown = ", ".join(f"{key}: {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}" for key in differing[:5])
        raise ValueError(f"{run_dir} holds an unfinished run with another config ({shown}); rerun it with its own "
                         "config to resume it, or choose another hydra.run.dir")


def _flatten(value, prefix: str = ""):
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _flatten(inner, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, value


class Stages:
    """A pipeline's progress as named stages, kept in `run_dir/checkpoint.pt` (saved atomically as tensors and
    containers, loaded with `weights_only=True`).

    `finish(name, result)` records a stage as done, with its result (what later stages need that is not in the
    run dir already) and torch's RNG state at its end. On resume, `result(name)` gives a finished stage's
    result back and restores that RNG state, so the stages after it draw the numbers they would have drawn:
    on CPU, a run resumed at a stage boundary ends with the numbers of an uninterrupted one. Call it where the
    stage would have run, after rebuilding what it made (building a policy to load weights into draws random
    numbers). The stage under way saves its PPO checkpoints (and its own state, e.g. evaluation curves) with
    `save_progress`; `progress(name)` gives the last one back.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        path = self.run_dir / CHECKPOINT
        saved = torch.load(path, weights_only=True) if path.is_file() else {}
        self.done: dict[str, dict] = saved.get("done", {})  # name -> {"result": dict, "torch_rng": Tensor}
        self.current: str | None = saved.get("current")  # the stage under way at the last save
        self.ppo = None if saved.get("ppo") is None else PPOCheckpoint(**saved["ppo"])
        self.state: dict | None = saved.get("state")
        self.history_rows: int = saved.get("history_rows", 0)  # rows of history.jsonl at the last save

    def __contains__(self, name: str) -> bool:
        return name in self.done

    def result(self, name: str) -> dict:
        """A finished stage's result; torch's RNG goes back to its state when the stage ended."""
        torch.set_rng_state(self.done[name]["torch_rng"])
        return self.done[name]["result"]

    def finish(self, name: str, result: dict | None = None) -> None:
        self.done[name] = {"result": result or {}, "torch_rng": torch.get_rng_state()}
        self.current, self.ppo, self.state = None, None, None
        self._save()

    def progress(self, name: str) -> tuple[PPOCheckpoint, dict | None] | None:
        """The last PPO checkpoint of stage `name` and the stage's state then (None: it has not started)."""
        return (self.ppo, self.state) if self.current == name and self.ppo is not None else None

    def save_progress(self, name: str, ppo: PPOCheckpoint, state: dict | None = None) -> None:
        self.current, self.ppo, self.state = name, ppo, state
        self._save()

    def where(self) -> str:
        """Where a resumed run goes on, in words."""
        if self.current is not None and self.ppo is not None:
            return f'in "{self.current}" at PPO update {self.ppo.updates}'
        return f'after "{next(reversed(self.done))}"' if self.done else "from its start"

    def _save(self) -> None:
        self.history_rows = history_rows(self.run_dir)
        saved = {"done": self.done, "current": self.current, "ppo": None if self.ppo is None else asdict(self.ppo),
                 "state": self.state, "history_rows": self.history_rows}
        with atomic_path(self.run_dir / CHECKPOINT) as tmp:
            torch.save(saved, tmp)


def history_rows(run_dir: Path) -> int:
    """How many rows `history.jsonl` holds now."""
    path = Path(run_dir) / HISTORY
    return sum(1 for _ in open(path, encoding="utf-8")) if path.is_file() else 0


def cut_history(run_dir: Path, rows: int) -> None:
    """Keep the first `rows` rows of `history.jsonl` (atomically): what came after is logged again on resume."""
    path = Path(run_dir) / HISTORY
    if path.is_file():
        write_text(path, "".join(path.read_text(encoding="utf-8").splitlines(keepends=True)[:rows]))
