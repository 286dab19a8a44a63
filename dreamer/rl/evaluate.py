"""Evaluate a policy: in a real Gymnasium env one episode at a time, or in a sim, all episodes at once."""

from __future__ import annotations

from collections.abc import Iterator

import gymnasium
import numpy as np
import torch
from torch import nn

from dreamer.sim import FuncSim, SimVectorEnv


def evaluate_policy(policy, env: gymnasium.Env, episodes: int, seed: int) -> np.ndarray:
    """(episodes,) undiscounted returns of `policy.act(obs)` (deterministic); episode i is reset with seed + i."""
    returns = np.zeros(episodes)
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy.act(obs))
            returns[i] += float(reward)
            done = terminated or truncated
    return returns


@torch.no_grad()
def rollout_in_sim(policy: nn.Module | None, sim: FuncSim, episodes: int, seed: int, deterministic: bool = True,
                   device: str | torch.device | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The first episode of each of `episodes` copies of `sim`, run as one batch, a step at a time: yields (n, O)
    observations after the step (before any reset), (n,) rewards, and (n,) bool: the episode was still running.

    `policy` has the PPO protocol (`policy(obs) -> (distribution, values)`); deterministic acting takes the
    mode (Categorical) or the mean (Normal) of its distribution. `policy=None` acts uniformly at random
    (seeded by `seed`), on `device` (default: the policy's, else the CPU).
    """
    if device is None:
        device = "cpu" if policy is None else next(policy.parameters()).device
    envs = SimVectorEnv(sim, episodes, device=device)
    obs, _ = envs.reset(seed=seed)
    envs.action_space.seed(seed)
    running = torch.ones(episodes, dtype=torch.bool, device=device)
    while running.any():
        if policy is None:
            action = envs.action_space.sample()
        else:
            dist, _ = policy(obs)
            if not deterministic:
                action = dist.sample()
            else:
                action = dist.probs.argmax(-1) if isinstance(dist, torch.distributions.Categorical) else dist.mean
            action = policy.env_action(action)
        obs, reward, terminated, truncated, info = envs.step(action)
        yield info["final_obs"], reward, running.clone()
        running &= ~(terminated | truncated)


def evaluate_in_sim(policy: nn.Module | None, sim: FuncSim, episodes: int, seed: int, deterministic: bool = True,
                    device: str | torch.device | None = None) -> np.ndarray:
    """(episodes,) undiscounted returns of the first episode of each of `episodes` copies of `sim`, run as one
    batch (`rollout_in_sim`, whose arguments these are)."""
    returns = sum(reward * running for _, reward, running in rollout_in_sim(policy, sim, episodes, seed, deterministic, device))
    return returns.cpu().numpy()
