"""Gymnasium front ends of a `FuncSim`: one env with numpy I/O, and a vector env on a torch device."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import Env
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from dreamer.sim.contract import FuncSim


def _seeded_generator(seed: int | None, device: torch.device) -> torch.Generator:
    rng = torch.Generator(device=device)
    if seed is None:
        rng.seed()
    else:
        rng.manual_seed(int(seed))
    return rng


class SimEnv(Env):
    """A single copy of the sim as a `gymnasium.Env` (numpy observations, CPU by default).

    Truncation at `max_episode_steps` is done here, so no `TimeLimit` wrapper is needed; as in
    `SimVectorEnv`, a step that terminates is never also truncated.
    """

    metadata = {"render_modes": []}

    def __init__(self, sim: FuncSim, device: str | torch.device = "cpu"):
        self.sim = sim
        self.device = torch.device(device)
        self.observation_space = sim.observation_space
        self.action_space = sim.action_space
        self._rng = _seeded_generator(None, self.device)
        self._state: torch.Tensor | None = None
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._rng = _seeded_generator(seed, self.device)
        with torch.no_grad():
            self._state = self.sim.initial(self._rng, 1)
            obs = self.sim.observation(self._state, self._rng)
        self._steps = 0
        return self._to_numpy_obs(obs), {}

    def step(self, action):
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        with torch.no_grad():
            action_t = self.sim.action_tensor(np.asarray(action)[None], self.device)
            next_state = self.sim.transition(self._state, action_t, self._rng)
            reward = self.sim.reward(self._state, action_t, next_state, self._rng)
            terminated = self.sim.terminal(next_state, self._rng)
            obs = self.sim.observation(next_state, self._rng)
        self._state = next_state
        self._steps += 1
        terminated = bool(terminated[0])
        truncated = self._steps >= self.sim.max_episode_steps and not terminated
        return self._to_numpy_obs(obs), float(reward[0]), terminated, truncated, {}

    def _to_numpy_obs(self, obs: torch.Tensor) -> np.ndarray:
        return obs[0].detach().to("cpu", torch.float32).numpy()


class SimVectorEnv(VectorEnv):
    """`num_envs` copies of the sim stepping as one batch; tensors stay on `device`.

    Autoreset is SAME_STEP: when a sub-env terminates or is truncated, the observation returned
    by `step` is already the first observation of its next episode, and the last observation of
    the finished episode is in `info["final_obs"]` (every step; rows of unfinished envs hold the
    returned observation), with `info["_final_obs"]` the (num_envs,) bool mask of finished envs.
    Actions may be numpy arrays or tensors; Box actions are clipped to the action space.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, sim: FuncSim, num_envs: int, device: str | torch.device = "cpu"):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.sim = sim
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.single_observation_space = sim.observation_space
        self.single_action_space = sim.action_space
        self.observation_space = batch_space(sim.observation_space, num_envs)
        self.action_space = batch_space(sim.action_space, num_envs)
        self._rng = _seeded_generator(None, self.device)
        self._state: torch.Tensor | None = None
        self._steps = torch.zeros(num_envs, dtype=torch.long, device=self.device)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = _seeded_generator(seed, self.device)
        with torch.no_grad():
            self._state = self.sim.initial(self._rng, self.num_envs)
            obs = self.sim.observation(self._state, self._rng)
        self._steps.zero_()
        return obs, {}

    @torch.no_grad()
    def step(self, actions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        sim, rng = self.sim, self._rng
        action = sim.action_tensor(actions, self.device)
        next_state = sim.transition(self._state, action, rng)
        reward = sim.reward(self._state, action, next_state, rng).float()
        terminated = sim.terminal(next_state, rng).bool()
        obs = sim.observation(next_state, rng)
        self._steps += 1
        truncated = (self._steps >= sim.max_episode_steps) & ~terminated
        done = terminated | truncated
        info: dict[str, Any] = {"final_obs": obs, "_final_obs": done}
        if self.device.type == "cpu":  # draw fresh states for the finished rows only
            rows = done.nonzero().squeeze(1)
            if rows.numel():
                next_state, obs = next_state.clone(), obs.clone()
                next_state[rows] = sim.initial(rng, rows.numel())
                obs[rows] = sim.observation(next_state[rows], rng)
        else:  # no host sync: fresh states for every row, kept where done
            next_state = torch.where(done[:, None], sim.initial(rng, self.num_envs), next_state)
            obs = torch.where(done[:, None], sim.observation(next_state, rng), obs)
        self._steps.masked_fill_(done, 0)
        self._state = next_state
        return obs, reward, terminated, truncated, info
