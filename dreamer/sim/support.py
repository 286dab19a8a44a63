"""The dream trusts its sim only where the session went (MOReL's pessimistic MDP, Kidambi et al. 2020).

A sim written from a session knows only what the session showed. CartPole's sessions of the default run never
show the cart leaving the track (their episodes end by the pole), so their sims have no track edge: a dream
policy that drifts is never told, and in the real env it ran off (2 of 6 round-2 policies, after 866 and 1,157
steps of 2,000-step episodes). Here a dream episode whose next observation leaves the session's box (per
observation dim, widened by `margin` of its range on each side) ends there, as MOReL's HALT does, and pays the
worst the session's rewards allow: nothing more when every reward was positive, or its lowest reward for a
whole episode when some was negative (so that leaving is never a way out of a costly task). A step the sim itself ends (a goal, a fall) keeps its own reward.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from dreamer.sim.contract import FuncSim


@dataclasses.dataclass(frozen=True)
class SupportConfig:
    """The box of observations the dream trusts, from the session's."""

    margin: float  # the box of the session's observations widened on each side by this share of its range, per dim

    def __post_init__(self):
        if not self.margin >= 0:
            raise ValueError(f"support.margin must be a number >= 0, got {self.margin!r}")


@dataclasses.dataclass(frozen=True)
class Support:
    """(O,) bounds of the trusted observations, and the reward of a step that leaves them."""

    low: torch.Tensor
    high: torch.Tensor
    halt_reward: float

    @classmethod
    def of_session(cls, observations: np.ndarray, rewards: np.ndarray, max_episode_steps: int,
                   config: SupportConfig) -> Support:
        """From the session's (N, O) observations (before and after each step) and (N,) rewards."""
        low, high = observations.min(0), observations.max(0)
        widen = config.margin * (high - low)
        halt = min(0.0, float(rewards.min())) * max_episode_steps
        return cls(torch.as_tensor(low - widen, dtype=torch.float32), torch.as_tensor(high + widen, dtype=torch.float32),
                   halt)

    def outside(self, obs: torch.Tensor) -> torch.Tensor:
        """(n, O) observations -> (n,) bool: some dim outside the box."""
        return ((obs < self.low.to(obs.device)) | (obs > self.high.to(obs.device))).any(-1)


def within_support(sim: FuncSim, support: Support) -> FuncSim:
    """`sim` whose episodes end where the next observation leaves `support`, paying `support.halt_reward` there
    unless the sim ends the episode itself."""
    def leaves(state: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        return support.outside(sim.observation(state, rng))

    def reward(state: torch.Tensor, action: torch.Tensor, next_state: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        paid = sim.reward(state, action, next_state, rng)
        halted = leaves(next_state, rng) & ~sim.terminal(next_state, rng).bool()
        return torch.where(halted, torch.full_like(paid, support.halt_reward), paid)

    def terminal(state: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        return sim.terminal(state, rng).bool() | leaves(state, rng)

    return dataclasses.replace(sim, reward=reward, terminal=terminal)
