"""Observation <-> the coordinates the offline writers fit in: plain dimensions and (cos, sin) angle pairs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from gymnasium import spaces


@dataclass(frozen=True)
class Coordinates:
    """Observation <-> regression coordinates: plain dimensions and (cos, sin) angle pairs."""

    obs_dim: int
    angle_starts: tuple[int, ...]   # obs index i of each pair (i: cos θ, i + 1: sin θ)

    @classmethod
    def detect(cls, obs: np.ndarray, tolerance: float) -> "Coordinates":
        starts, i = [], 0
        while i + 1 < obs.shape[1]:
            if np.max(np.abs(obs[:, i] ** 2 + obs[:, i + 1] ** 2 - 1.0)) <= tolerance:
                starts.append(i)
                i += 2
            else:
                i += 1
        return cls(obs.shape[1], tuple(starts))

    @property
    def layout(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, obs indices) per coordinate: `x{i}` for a plain dim, `th{i}` for an angle pair."""
        out, i = [], 0
        while i < self.obs_dim:
            if i in self.angle_starts:
                out.append((f"th{i}", (i, i + 1)))
                i += 2
            else:
                out.append((f"x{i}", (i,)))
                i += 1
        return out

    def codes(self, obs: str) -> list[str]:
        """Torch code of each coordinate of the (n, O) observations named `obs`: `obs[:, i]` or
        `torch.atan2(obs[:, i + 1], obs[:, i])`."""
        return [f"torch.atan2({obs}[:, {idx[1]}], {obs}[:, {idx[0]}])" if len(idx) == 2 else f"{obs}[:, {idx[0]}]"
                for _, idx in self.layout]

    def from_obs(self, obs: np.ndarray) -> np.ndarray:
        """(N, O) observations -> (N, D) coordinates."""
        cols = [np.arctan2(obs[:, idx[1]], obs[:, idx[0]]) if len(idx) == 2 else obs[:, idx[0]] for _, idx in self.layout]
        return np.stack(cols, axis=1).astype(np.float64)

    def to_obs(self, q: np.ndarray, space: spaces.Box) -> np.ndarray:
        """(N, D) coordinates -> (N, O) observations, plain dims clipped to `space` (as `to_observation` does)."""
        columns = []
        for d, (_, idx) in enumerate(self.layout):
            columns += [np.cos(q[:, d]), np.sin(q[:, d])] if len(idx) == 2 else [
                np.clip(q[:, d], space.low[idx[0]], space.high[idx[0]])]
        return np.stack(columns, axis=1)

    def change(self, obs: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
        """(N, D) one-step change of each coordinate; angle changes wrapped to [-π, π)."""
        delta = self.from_obs(next_obs) - self.from_obs(obs)
        for d, (_, idx) in enumerate(self.layout):
            if len(idx) == 2:
                delta[:, d] = (delta[:, d] + math.pi) % (2 * math.pi) - math.pi
        return delta
