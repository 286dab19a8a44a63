"""What the two OPSD pipelines on the hidden-goal family (`envs.hidden_goal`) share: their config sections,
PPO stages that are monitored and resumable, and fixed observation statistics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from dreamer.config import build
from dreamer.loggers import Logger
from dreamer.opsd import Distillation, OPSDConfig
from dreamer.pipelines.config import EvalConfig, SimConfig, policy_config, ppo_config
from dreamer.resume import Stages
from dreamer.rl import PPOConfig, load_policy, train_ppo
from dreamer.sim import FuncSim, SimVectorEnv


def opsd_sections(cfg: DictConfig, teacher_kind: str, policy_kind: str) -> dict[str, Any]:
    """The sections both OPSD pipelines read, checked: `opsd` (its teacher must be `teacher_kind`), `algo`,
    `policy` (of `policy_kind`), `seed`, `algo.progress`, `eval.seed` and `sim.compile`."""
    opsd = build(OPSDConfig, cfg.opsd, "opsd")
    if opsd.teacher.kind != teacher_kind:
        raise ValueError(f"pipeline={cfg.pipeline} needs opsd.teacher.kind={teacher_kind}, got {opsd.teacher.kind!r}")
    return {"seed": cfg.seed, "opsd": opsd, "ppo": ppo_config(cfg.algo), "progress": cfg.algo.progress,
            "policy": policy_config(cfg.policy, cfg.pipeline, (policy_kind,)),
            "eval_seed": build(EvalConfig, cfg.eval, "eval").seed, "sim_compile": build(SimConfig, cfg.sim, "sim").compile}


class Monitor:
    """PPO's `log` callback: logs every update's row and, every `every` updates (and before the first),
    runs `evaluate` (-> figures such as mean returns) and appends its figures, with the env steps so
    far, to `curve`. From `saved` (a `state()`), it goes on where that one stood."""

    def __init__(self, logger: Logger, prefix: str, evaluate: Callable[[], dict[str, float]], every: int, step: int,
                 saved: dict | None = None):
        self.logger, self.prefix, self.run_evaluation, self.every, self.step = logger, prefix, evaluate, every, step
        self.updates = 0
        self.curve: list[dict[str, float]] = []
        self.last_row: dict = {}
        if saved is None:
            self.evaluate(0)
        else:
            self.updates, self.curve, self.last_row = saved["updates"], saved["curve"], saved["last_row"]

    def state(self) -> dict:
        return {"updates": self.updates, "curve": list(self.curve), "last_row": self.last_row}

    def evaluate(self, env_steps: int) -> None:
        figures = {"env_steps": env_steps, **self.run_evaluation()}
        self.curve.append(figures)
        self.logger.log({f"{self.prefix}/{k}": v for k, v in figures.items() if k != "env_steps"}, self.step + env_steps)

    def __call__(self, row: dict, env_steps: int) -> None:
        self.last_row = row
        self.logger.log({f"{self.prefix}/{k}": v for k, v in row.items()}, self.step + env_steps)
        self.updates += 1
        if self.updates % self.every == 0:
            self.evaluate(env_steps)


def ppo_stage(stages: Stages, name: str, monitor: Callable[[dict | None], Monitor], policy: nn.Module,
              envs: SimVectorEnv, config: PPOConfig, seed: int, progress: bool, auxiliary: Distillation | None = None
              ) -> Monitor:
    """Stage `name`: `train_ppo` logged by `monitor(saved state)`, from the stage's last checkpoint if it has
    one, checkpointing every `config.checkpoint_every` updates. Returns the monitor (the caller finishes the stage)."""
    saved = stages.progress(name)
    log = monitor(None if saved is None else saved[1])
    train_ppo(policy, envs, config, seed, log=log, progress=progress, auxiliary=auxiliary,
              checkpoint=lambda ppo: stages.save_progress(name, ppo, log.state()), resume=None if saved is None else saved[0])
    return log


def load_weights(model: nn.Module, folder: Path) -> None:
    """Load the weights of the policy saved in `folder` into `model` (same architecture), in place."""
    model.load_state_dict(load_policy(folder).state_dict())


def first_reaching(curve: list[dict[str, float]], key: str, level: float) -> float | None:
    """The first `env_steps` in `curve` at which `key` >= `level` (None: never)."""
    return next((row["env_steps"] for row in curve if row[key] >= level), None)


def mean_std(values) -> dict[str, float]:
    values = np.asarray(values, dtype=float)
    return {"mean": float(values.mean()), "std": float(values.std())}


def standardise_from(policy_stats: Callable[[np.ndarray, np.ndarray], None], sim: FuncSim, envs: int, seed: int,
                     columns: slice = slice(None)) -> None:
    """Set a policy's fixed obs statistics from `sim`'s observations under random actions in `envs` copies of
    it for one episode length (seeded by `seed`)."""
    envs = SimVectorEnv(sim, envs)
    obs, _ = envs.reset(seed=seed)
    envs.action_space.seed(seed)
    rows = [obs]
    for _ in range(sim.max_episode_steps):
        obs, *_ = envs.step(envs.action_space.sample())
        rows.append(obs)
    rows = torch.cat(rows)[:, columns].numpy()
    policy_stats(rows.mean(0), rows.std(0))
