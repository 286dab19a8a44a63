"""Interrupted runs go on where they stopped: rerunning the same command with the same run dir resumes it.

A run dir's `metrics.json` always says where the run stands (`status`: "running", "failed" or
"finished"); a finished run is never touched again. The dream loop checkpoints into `checkpoint.pt`
after each round's write stage, every `algo.checkpoint_every` PPO updates, and after each round's PPO.
On resume, `history.jsonl` is cut back to the rows it had at that checkpoint, so nothing is logged twice.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
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


@dataclass
class DreamCheckpoint:
    """Where the dream loop stands: in round `round`, at `stage`.

    stage "start": nothing of the round is done yet; `policy` holds the weights after the rounds before.
    stage "written": the round's sim is written and judged; `policy` as for "start".
    stage "training": PPO of the round is under way, from `ppo`.
    """

    round: int
    stage: str
    dream_steps: int  # dream env steps of the rounds before
    history_rows: int  # rows of history.jsonl when it was taken
    policy: dict | None = None  # state_dict
    ppo: PPOCheckpoint | None = None

    def save(self, run_dir: Path) -> None:
        """Atomically, as plain tensors and containers (loaded back with `weights_only=True`)."""
        with atomic_path(Path(run_dir) / CHECKPOINT) as tmp:
            torch.save(asdict(self), tmp)

    @classmethod
    def load(cls, run_dir: Path) -> DreamCheckpoint | None:
        path = Path(run_dir) / CHECKPOINT
        if not path.is_file():
            return None
        values = torch.load(path, weights_only=True)
        ppo = values.pop("ppo")
        return cls(**values, ppo=None if ppo is None else PPOCheckpoint(**ppo))


def history_rows(run_dir: Path) -> int:
    """How many rows `history.jsonl` holds now."""
    path = Path(run_dir) / HISTORY
    return sum(1 for _ in open(path, encoding="utf-8")) if path.is_file() else 0


def cut_history(run_dir: Path, rows: int) -> None:
    """Keep the first `rows` rows of `history.jsonl` (atomically): what came after is logged again on resume."""
    path = Path(run_dir) / HISTORY
    if path.is_file():
        write_text(path, "".join(path.read_text(encoding="utf-8").splitlines(keepends=True)[:rows]))
