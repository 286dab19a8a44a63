"""Exploration in the dream: a sim whose reward is the novelty of where the policy goes.

When a session never showed the task's goal, a sim written from it has no goal either, and PPO in it
learns nothing about the task. An explorer trained in that sim for novelty (how far the next observation
lies from every observation of the session) acts in the next round's real steps, so that they go where the
session did not, and with luck where the goal is.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from dreamer.sim import FuncSim


@dataclasses.dataclass(frozen=True)
class NoveltyConfig:
    reference_states: int   # session observations the novelty is measured against (a seeded sample)
    cap: float              # most novelty per step, in the session's standard deviations
    min_terminations: int   # a session with fewer terminated episodes, and a reward the action alone explains, explores

    def __post_init__(self):
        if not (isinstance(self.min_terminations, int) and self.min_terminations >= 1):
            raise ValueError(f"min_terminations must be an int >= 1, got {self.min_terminations!r}")
        if self.reference_states < 1:
            raise ValueError(f"reference_states must be a positive int, got {self.reference_states}")
        if not self.cap > 0:
            raise ValueError(f"cap must be a positive number, got {self.cap}")


def novelty_sim(sim: FuncSim, observations: np.ndarray, config: NoveltyConfig, seed: int) -> FuncSim:
    """`sim` whose reward is the novelty of the next observation: its Euclidean distance, in units of the
    (O,) standard deviations of the session's (N, O) `observations`, to the nearest of `config.reference_states`
    of them, capped at `config.cap`. Dynamics, termination and horizon are `sim`'s own."""
    rows = np.random.default_rng(seed).choice(len(observations), min(config.reference_states, len(observations)), replace=False)
    mean = torch.as_tensor(observations.mean(0), dtype=torch.float32)
    std = torch.as_tensor(np.maximum(observations.std(0), 1e-6), dtype=torch.float32)
    reference = (torch.as_tensor(observations[rows], dtype=torch.float32) - mean) / std  # (R, O)

    def novelty(state: torch.Tensor, action: torch.Tensor, next_state: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        obs = sim.observation(next_state, rng)
        z = (obs - mean.to(obs.device)) / std.to(obs.device)
        return torch.cdist(z, reference.to(obs.device)).amin(1).clamp(max=config.cap)

    return dataclasses.replace(sim, reward=novelty)
