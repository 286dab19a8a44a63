"""Record a Gymnasium env into a Trace: the `TraceRecorder` wrapper and `collect_trace`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.error import ResetNeeded

from dreamer.traces.trace import ARRAYS, Trace, TraceError, check_spaces


def _plain(value):
    """`value` with numpy arrays and scalars turned into lists and Python numbers (JSON-able)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value.tolist() if isinstance(value, np.ndarray | np.generic) else value


class TraceRecorder(gymnasium.Wrapper):
    """Records every step of `env`, across resets; `trace()` returns the Trace recorded so far.

    Episodes get the ids "0", "1", ... in order. An episode that is reset, or read by `trace()`,
    before it terminated or truncated has its last transition marked truncated (the recording of it
    stopped there). Box actions are recorded clipped to the action space's bounds; info dicts are
    kept (as JSON-able values) when any of them is non-empty.
    """

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        check_spaces(env.observation_space, env.action_space)
        self._columns: dict[str, list] = {name: [] for name in ARRAYS}
        self._infos: list[dict] = []
        self._num_episodes = 0
        self._obs: np.ndarray | None = None  # None: the env needs a reset
        self._new_episode = True

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._cut(self._columns["truncated"])
        self._obs, self._new_episode = np.asarray(obs, dtype=np.float32).reshape(-1), True
        return obs, info

    def step(self, action):
        if self._obs is None:
            raise ResetNeeded("TraceRecorder: call reset() before step(), and again after an episode ends")
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self._new_episode:
            self._num_episodes, self._new_episode = self._num_episodes + 1, False
        if isinstance(self.action_space, spaces.Discrete):
            recorded = int(action)
        else:
            low, high = self.action_space.low, self.action_space.high
            recorded = np.clip(np.asarray(action, dtype=np.float32).reshape(low.shape), low, high)
        next_obs = np.asarray(obs, dtype=np.float32).reshape(-1)
        row = dict(obs=self._obs, action=recorded, reward=float(reward), next_obs=next_obs, terminated=bool(terminated),
                   truncated=bool(truncated), episode=self._num_episodes - 1)
        for name, value in row.items():
            self._columns[name].append(value)
        self._infos.append(_plain(info))
        self._obs = None if terminated or truncated else next_obs
        return obs, reward, terminated, truncated, info

    def _cut(self, truncated: list[bool]) -> list[bool]:
        """Mark the last transition truncated if its episode had not ended: the recording stopped there."""
        if truncated and not (self._columns["terminated"][-1] or truncated[-1]):
            truncated[-1] = True
        return truncated

    def trace(self) -> Trace:
        """The Trace recorded so far, the current unfinished episode included (marked truncated)."""
        if not self._infos:
            raise TraceError("nothing recorded yet (expected at least one step)", "TraceRecorder")
        columns = dict(self._columns, truncated=self._cut(list(self._columns["truncated"])))
        return Trace(
            **{name: np.array(values) for name, values in columns.items()},
            episode_ids=[str(i) for i in range(self._num_episodes)],
            observation_space=self.observation_space,
            action_space=self.action_space,
            name=self.spec.id if self.spec else "session",
            max_episode_steps=self.spec.max_episode_steps if self.spec else None,
            info=list(self._infos) if any(self._infos) else None,
        )


def collect_trace(
    env: gymnasium.Env, num_steps: int, seed: int, policy: Callable[[np.ndarray], Any] | None = None
) -> Trace:
    """Run `policy(obs)` (default: seeded `env.action_space.sample()`) for `num_steps` steps of `env`.

    The env is reset with `seed` first and again whenever an episode ends.
    """
    return record_steps(TraceRecorder(env), num_steps, seed, policy)


def record_steps(
    recorder: TraceRecorder, num_steps: int, seed: int, policy: Callable[[np.ndarray], Any] | None = None
) -> Trace:
    """`num_steps` more steps through `recorder`, as `collect_trace`; returns all it has recorded."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    recorder.action_space.seed(seed)
    obs, _ = recorder.reset(seed=seed)
    for _ in range(num_steps):
        obs, _, terminated, truncated, _ = recorder.step(recorder.action_space.sample() if policy is None else policy(obs))
        if terminated or truncated:
            obs, _ = recorder.reset()
    return recorder.trace()
