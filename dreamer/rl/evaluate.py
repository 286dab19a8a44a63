"""Evaluate a policy in a real Gymnasium env."""

from __future__ import annotations

import gymnasium
import numpy as np

from dreamer.rl.policy import MLPPolicy


def evaluate_policy(policy: MLPPolicy, env: gymnasium.Env, episodes: int, seed: int) -> np.ndarray:
    """(episodes,) undiscounted returns of deterministic actions; episode i is reset with seed + i."""
    returns = np.zeros(episodes)
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy.act(obs))
            returns[i] += float(reward)
            done = terminated or truncated
    return returns
