"""Branched rollouts (MBPO, Janner et al. 2019): dream episodes that start from real states and stay short.

A learned model is right near the data and drifts away from it; starting the dream from the session's own
states and cutting it after a few steps keeps the policy where the model is right.
"""

from __future__ import annotations

import dataclasses

import torch

from dreamer.sim.contract import FuncSim


@dataclasses.dataclass(frozen=True)
class BranchConfig:
    """Where training envs start their dream episodes and how long those last."""

    from_session: bool   # start from states the real session visited (drawn uniformly) instead of `initial`
    horizon: int | None  # at most this many steps per dream episode; None: the sim's MAX_EPISODE_STEPS

    def __post_init__(self):
        if self.horizon is not None and not (isinstance(self.horizon, int) and self.horizon >= 1):
            raise ValueError(f"branch.horizon must be an int >= 1 or null, got {self.horizon!r}")


def branched(sim: FuncSim, config: BranchConfig, states: torch.Tensor) -> FuncSim:
    """`sim` with episodes that start from rows of `states` (N, S), the session's, when `config.from_session`,
    and are truncated after `config.horizon` steps (the sim's own horizon if that is shorter)."""
    def from_session(rng: torch.Generator, n: int) -> torch.Tensor:
        rows = torch.randint(len(states), (n,), generator=rng, device=rng.device)
        return states.to(rng.device)[rows]

    initial = from_session if config.from_session else sim.initial
    horizon = sim.max_episode_steps if config.horizon is None else min(config.horizon, sim.max_episode_steps)
    return dataclasses.replace(sim, initial=initial, max_episode_steps=horizon)
