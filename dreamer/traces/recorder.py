"""Record a Gymnasium env into a Trace: the `TraceRecorder` wrapper and `collect_trace`."""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.error import ResetNeeded

from dreamer.traces.jsonl import feedback_line, meta_line, read_jsonl, space_from_json, space_to_json, transition_lines
from dreamer.traces.trace import ARRAYS, Trace, TraceError, check_spaces


def _plain(value):
    """`value` with numpy arrays and scalars turned into lists and Python numbers (JSON-able)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value.tolist() if isinstance(value, np.ndarray | np.generic) else value


def _append(path: Path, text: str) -> None:
    """Append `text` to `path` in one write, then flush it to the disk."""
    with open(path, "ab") as file:
        file.write(text.encode())
        file.flush()
        os.fsync(file.fileno())


def _add_text(texts: dict[int, str], key: int, text: str) -> None:
    """Join `text` to the feedback on `key` as the JSONL reader joins several records."""
    texts[key] = text if key not in texts else texts[key] + "\n" + text


class TraceRecorder(gymnasium.Wrapper):
    """Records every step of `env`, across resets; `trace()` returns the Trace recorded so far.

    Episodes get the ids "0", "1", ... in order. An episode that is reset, closed, or read by
    `trace()`, before it terminated or truncated has its last transition marked truncated (the
    recording of it stopped there; `trace()` marks a copy and the episode goes on). Box actions are
    recorded clipped to the action space's bounds; info dicts are kept (as JSON-able values) when
    any of them is non-empty. `add_feedback` and `add_episode_feedback` attach text feedback.

    With a `.jsonl` `path`, each episode is appended to the file (one write, flushed to the disk)
    when it ends, so a crash loses at most the episode being recorded; feedback on an episode
    already in the file is appended as a feedback record. An existing file is continued: its
    spaces must be the env's, new episode ids follow its ids, and `trace()` covers the whole file.
    `close()` writes the episode being recorded.
    """

    def __init__(self, env: gymnasium.Env, path: str | os.PathLike | None = None):
        super().__init__(env)
        check_spaces(env.observation_space, env.action_space)
        self.path = None if path is None else Path(path)
        if self.path is not None and self.path.suffix != ".jsonl":
            raise TraceError(f"expected a .jsonl path to append episodes to, got suffix {self.path.suffix!r}",
                             str(self.path))
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        loaded = self._loaded = self._load() if self.path is not None and self.path.exists() else None
        if loaded is None:
            self._meta = dict(name=self.spec.id if self.spec else "session", notes="",
                              max_episode_steps=self.spec.max_episode_steps if self.spec else None)
        else:
            self._meta = dict(name=loaded.name, notes=loaded.notes, max_episode_steps=loaded.max_episode_steps)
        self._columns: dict[str, list] = {name: [] for name in ARRAYS}  # this recorder's steps
        self._infos: list[dict] = []
        self._ids: list[str] = [] if loaded is None else list(loaded.episode_ids)
        self._starts: list[int] = [] if loaded is None else loaded.episode_starts().tolist()  # (E,) first rows
        self._feedback: dict[int, str] = {} if loaded is None else dict(loaded.feedback)  # row -> text
        self._episode_feedback: dict[int, str] = {} if loaded is None else dict(loaded.episode_feedback)
        self._offset = 0 if loaded is None else len(loaded)  # rows before this recorder's
        self._ended = 0  # this recorder's rows in ended episodes (in the file, given a path)
        integer_ids = [int(i) for i in self._ids if i.isdigit()]
        self._next_id = max([len(self._ids)] + [i + 1 for i in integer_ids])
        self._obs: np.ndarray | None = None  # None: the env needs a reset
        self._new_episode = True

    def _load(self) -> Trace:
        """The trace in `path`, whose spaces must be the env's (as a JSONL file keeps them)."""
        trace = read_jsonl(self.path)
        for key in ("observation_space", "action_space"):
            env_space = getattr(self.env, key)
            expected = space_from_json(space_to_json(env_space), str(self.path), key)
            if getattr(trace, key) != expected:
                raise TraceError(f"expected the env's {env_space} to continue the recording, got "
                                 f"{getattr(trace, key)}", str(self.path), key)
        return trace

    @property
    def _running(self) -> bool:
        """Whether an episode has steps and has not ended."""
        return len(self._infos) > self._ended

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._cut()
        self._obs, self._new_episode = np.asarray(obs, dtype=np.float32).reshape(-1), True
        return obs, info

    def step(self, action):
        if self._obs is None:
            raise ResetNeeded("TraceRecorder: call reset() before step(), and again after an episode ends")
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self._new_episode:
            self._starts.append(self._offset + len(self._infos))
            self._ids.append(str(self._next_id))
            self._next_id, self._new_episode = self._next_id + 1, False
        if isinstance(self.action_space, spaces.Discrete):
            recorded = int(action)
        else:
            low, high = self.action_space.low, self.action_space.high
            recorded = np.clip(np.asarray(action, dtype=np.float32).reshape(low.shape), low, high)
        next_obs = np.asarray(obs, dtype=np.float32).reshape(-1)
        row = dict(obs=self._obs, action=recorded, reward=float(reward), next_obs=next_obs, terminated=bool(terminated),
                   truncated=bool(truncated), episode=len(self._ids) - 1)
        for name, value in row.items():
            self._columns[name].append(value)
        self._infos.append(_plain(info))
        if terminated or truncated:
            self._end_episode()
        self._obs = None if terminated or truncated else next_obs
        return obs, reward, terminated, truncated, info

    def close(self):
        """Write the episode being recorded (marked truncated), then close the env."""
        self._cut()
        super().close()

    def _cut(self) -> None:
        """End the running episode, if any, there: its last transition is marked truncated."""
        if self._running:
            self._columns["truncated"][-1] = True
            self._end_episode()

    def _end_episode(self) -> None:
        """The running episode has ended: append it to the file, with its feedback."""
        if self.path is not None:
            episode = self._episode_trace()
            meta = "" if self.path.exists() else meta_line(episode)  # a new file starts with the meta line
            _append(self.path, meta + "".join(transition_lines(episode)))
        self._ended = len(self._infos)

    def _arrays(self, start: int) -> dict[str, np.ndarray]:
        """This recorder's steps from its row `start` on, as arrays of the Trace's dtypes and shapes."""
        n = len(self._infos) - start
        discrete = isinstance(self.action_space, spaces.Discrete)
        dtypes = dict(ARRAYS, action=np.int64 if discrete else np.float32)
        shapes = {"obs": self.observation_space.shape, "next_obs": self.observation_space.shape,
                  "action": self.action_space.shape}
        return {name: np.array(values[start:], dtype=dtypes[name]).reshape(n, *shapes.get(name, ()))
                for name, values in self._columns.items()}

    def _episode_trace(self) -> Trace:
        """The last episode (recorded by this recorder) alone, as a Trace."""
        episode, first = len(self._ids) - 1, self._starts[-1]
        arrays = self._arrays(first - self._offset)
        infos = self._infos[first - self._offset:]
        return self._assemble(
            arrays | {"episode": np.zeros(len(infos), np.int64)},
            ids=[self._ids[episode]],
            feedback={row - first: text for row, text in self._feedback.items() if row >= first},
            episode_feedback={0: self._episode_feedback[episode]} if episode in self._episode_feedback else {},
            info=infos if any(infos) else None,
        )

    def _assemble(self, arrays: dict, ids: list[str], feedback: dict, episode_feedback: dict, info) -> Trace:
        return Trace(**arrays, episode_ids=ids, observation_space=self.observation_space,
                     action_space=self.action_space, feedback=feedback, episode_feedback=episode_feedback, info=info,
                     **self._meta)

    def add_feedback(self, text: str) -> None:
        """Attach `text` to the most recent step (joined to any feedback it has, with a newline)."""
        row = self._offset + len(self._infos) - 1
        if row < 0:
            raise TraceError("no step to give feedback on yet (expected at least one step)", "TraceRecorder")
        _add_text(self._feedback, row, text)
        if self.path is not None and row < self._offset + self._ended:  # already in the file
            episode = bisect.bisect_right(self._starts, row) - 1
            _append(self.path, feedback_line(self._ids[episode], text, row - self._starts[episode]))

    def add_episode_feedback(self, text: str) -> None:
        """Attach `text` to the episode being recorded, or, if none is, to the last one that ended."""
        if not self._ids:
            raise TraceError("no episode to give feedback on yet (expected at least one step)", "TraceRecorder")
        episode = len(self._ids) - 1
        _add_text(self._episode_feedback, episode, text)
        if self.path is not None and not self._running:  # already in the file
            _append(self.path, feedback_line(self._ids[episode], text))

    def trace(self) -> Trace:
        """The Trace recorded so far (a continued file included), the running episode marked truncated."""
        if not self._infos and self._loaded is None:
            raise TraceError("nothing recorded yet (expected at least one step)", "TraceRecorder")
        arrays, infos, loaded = self._arrays(0), self._infos, self._loaded
        if self._running:
            arrays["truncated"][-1] = True  # in the copy: the episode goes on
        if loaded is not None:
            arrays = {name: np.concatenate([getattr(loaded, name), arrays[name]]) for name in ARRAYS}
            infos = (loaded.info or [{}] * len(loaded)) + infos
        keep_info = any(infos) or loaded is not None and loaded.info is not None
        return self._assemble(arrays, list(self._ids), dict(self._feedback), dict(self._episode_feedback),
                              infos if keep_info else None)


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
