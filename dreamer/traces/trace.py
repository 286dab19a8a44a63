"""The Trace: the transitions of one recorded session, as flat numpy arrays, with its spaces.

    obs:        (N, O) float32       observation before the step
    action:     (N,)   int64         for a Discrete action space (values in 0..n-1), or
                (N, A) float32       for a Box action space (within its bounds)
    reward:     (N,)   float32
    next_obs:   (N, O) float32       observation after the step
    terminated: (N,)   bool
    truncated:  (N,)   bool
    episode:    (N,)   int64         index into `episode_ids`; episodes are numbered 0, 1, ... in order
                                     of first appearance and each one's transitions are contiguous

Only the last transition of an episode may be terminated or truncated; an episode may also end
without either (the recording stopped there). All float data is finite.

Readers build a Trace chunk by chunk (`TraceChunks`), accumulating its `TraceSummary` on the way
(`SummaryAccumulator`), so loading never needs a second pass over the data or a float64 copy of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np
from gymnasium import spaces

# field -> dtype of its array (the action's dtype depends on the action space)
ARRAYS = {
    "obs": np.float32,
    "action": None,
    "reward": np.float32,
    "next_obs": np.float32,
    "terminated": np.bool_,
    "truncated": np.bool_,
    "episode": np.int64,
}
CHUNK_ROWS = 1 << 14  # rows per chunk when reading, writing or summarizing a trace in pieces


class TraceError(ValueError):
    """Bad trace input; the message says where (file:line, or row), which field, and what was expected."""

    def __init__(self, problem: str, where: str = "", field: str | None = None, row: int | None = None,
                 columns: tuple[str, ...] = ()):
        self.problem, self.field, self.row, self.columns = problem, field, row, columns
        where = where or ("" if row is None else f"row {row}")
        named = field and f'field "{field}"'
        if named and columns:  # the table columns that hold the field
            named += f" (column{'s' * (len(columns) > 1)} " + ", ".join(f'"{c}"' for c in columns) + ")"
        super().__init__(": ".join(part for part in (where, named, problem) if part))

    def at(self, where: str, columns: tuple[str, ...] = ()) -> TraceError:
        """The same error, located at `where` (a file and line) instead of a row, naming `columns` if given."""
        return TraceError(self.problem, where, self.field, self.row, columns or self.columns)


class TraceWarning(UserWarning):
    """Suspicious but usable trace input (inferred spaces, unknown keys, inconsistent next_obs)."""


def short(value) -> str:
    """A repr of `value` (numpy arrays as lists) cut to 80 characters, for error messages."""
    text = repr(value.tolist() if isinstance(value, np.ndarray | np.generic) else value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_spaces(observation_space: spaces.Space | None, action_space: spaces.Space | None) -> None:
    """Raise TraceError unless the given spaces are a 1-d Box and a Discrete (from 0) or 1-d Box."""
    if observation_space is not None and not (
        isinstance(observation_space, spaces.Box) and len(observation_space.shape) == 1
    ):
        raise TraceError(f"expected a 1-d Box space, got {observation_space}", field="observation_space")
    discrete = isinstance(action_space, spaces.Discrete) and action_space.start == 0
    if action_space is not None and not (
        discrete or isinstance(action_space, spaces.Box) and len(action_space.shape) == 1
    ):
        raise TraceError(f"expected Discrete(n) or a 1-d Box space, got {action_space}", field="action_space")


def _array(name: str, value, dtype, shape: tuple) -> np.ndarray:
    """`value` as an array of `dtype` (same-kind casts only) and `shape` (None: any length)."""
    try:
        array = np.asarray(value)
    except ValueError as error:  # ragged nested lists
        raise TraceError(f"expected an array, got {error}", field=name) from None
    if not np.can_cast(array.dtype, dtype, casting="same_kind"):
        raise TraceError(f"expected {np.dtype(dtype).name} values, got {array.dtype}", field=name)
    if array.ndim != len(shape) or any(n is not None and n != m for n, m in zip(shape, array.shape)):
        expected = ", ".join("N" if n is None else str(n) for n in shape) + ("," if len(shape) == 1 else "")
        raise TraceError(f"expected an array of shape ({expected}), got {array.shape}", field=name)
    return array.astype(dtype, copy=False)


def _texts(name: str, texts, key: str, n: int) -> dict[int, str]:
    """`texts` as {index in 0..n-1: str}, or TraceError."""
    ok = isinstance(texts, dict) and all(
        isinstance(k, int | np.integer) and 0 <= k < n and isinstance(v, str) for k, v in texts.items()
    )
    if not ok:
        raise TraceError(f"expected {{{key} in 0..{n - 1}: text}}, got {short(texts)}", field=name)
    return {int(k): v for k, v in texts.items()}


def _require_rows(name: str, ok: np.ndarray, expected: str, values: np.ndarray) -> None:
    """Raise TraceError at the first row where `ok` is False."""
    if not ok.all():
        row = int(np.argmin(ok))
        raise TraceError(f"expected {expected}, got {short(values[row])}", field=name, row=row)


@dataclass(eq=False)
class Trace:
    """Episodes of one recorded session, flattened to N transitions in recording order."""

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    episode: np.ndarray
    episode_ids: list[str]
    observation_space: spaces.Box
    action_space: spaces.Discrete | spaces.Box
    name: str = "session"
    notes: str = ""
    max_episode_steps: int | None = None  # the recording env's time limit when known
    feedback: dict[int, str] = field(default_factory=dict)  # transition index -> feedback text
    info: list[dict] | None = None  # per-transition info dicts when present
    episode_feedback: dict[int, str] = field(default_factory=dict)  # episode index -> feedback text
    # the statistics of the arrays, taken once (a reader accumulates them while reading); the
    # arrays are not to be changed in place after that
    _summary: TraceSummary | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        """Coerce the arrays to their dtypes and check shapes, finiteness, actions and episodes."""
        check_spaces(self.observation_space, self.action_space)
        discrete = isinstance(self.action_space, spaces.Discrete)
        self.obs = _array("obs", self.obs, np.float32, (None, *self.observation_space.shape))
        n = len(self.obs)
        if n == 0:
            raise TraceError("expected at least one transition", field="obs")
        shapes = {"obs": self.obs.shape, "next_obs": self.obs.shape, "action": (n, *self.action_space.shape)}
        for name, dtype in ARRAYS.items():
            dtype = dtype or (np.int64 if discrete else np.float32)
            setattr(self, name, _array(name, getattr(self, name), dtype, shapes.get(name, (n,))))
        for name in ("obs", "next_obs", "reward") + (() if discrete else ("action",)):
            values = getattr(self, name)
            _require_rows(name, np.isfinite(values).reshape(n, -1).all(1), "finite numbers", values)
        if discrete:
            in_space = (self.action >= 0) & (self.action < self.action_space.n)
            _require_rows("action", in_space, f"an action in 0..{self.action_space.n - 1}", self.action)
        else:
            low, high = self.action_space.low, self.action_space.high
            in_space = ((self.action >= low) & (self.action <= high)).all(1)
            _require_rows("action", in_space, f"an action within {short(low)}..{short(high)}", self.action)
        self._check_episodes()
        for key in ("name", "notes"):
            if not isinstance(getattr(self, key), str):
                raise TraceError(f"expected a string, got {short(getattr(self, key))}", field=key)
        self.feedback = _texts("feedback", self.feedback, "row", n)
        self.episode_feedback = _texts("episode_feedback", self.episode_feedback, "episode", self.num_episodes)
        if self.info is not None and (len(self.info) != n or not all(isinstance(i, dict) for i in self.info)):
            raise TraceError(f"expected None or a list of {n} dicts, got {short(self.info)}", field="info")
        horizon = self.max_episode_steps
        if horizon is not None and not (isinstance(horizon, int) and horizon > 0):
            raise TraceError(f"expected None or a positive int, got {horizon!r}", field="max_episode_steps")

    def _check_episodes(self) -> None:
        ids = self.episode_ids = [str(i) for i in self.episode_ids]
        if len(set(ids)) != len(ids):
            raise TraceError(f"expected distinct ids, got {short(ids)}", field="episode_ids")
        episode = self.episode
        if episode.max() != len(ids) - 1:
            raise TraceError(f"expected {episode.max() + 1} ids (one per episode), got {len(ids)}", field="episode_ids")
        step = np.diff(episode)  # 0: the same episode, 1: the next one
        ok = np.append(episode[0] == 0, (step == 0) | (step == 1))
        if not ok.all():
            row = int(np.argmin(ok))
            if row and 0 <= episode[row] < episode[row - 1]:
                problem = (f"expected each episode's transitions to be contiguous, but episode "
                           f"{ids[episode[row]]!r} resumes after episode {ids[episode[row - 1]]!r}")
            else:
                problem = f"expected episode indices 0, 1, ... in order of first appearance, got {episode[row]}"
            raise TraceError(problem, field="episode", row=row)
        done = self.terminated | self.truncated
        after_end = np.flatnonzero(done[:-1] & (episode[1:] == episode[:-1])) + 1
        if after_end.size:
            row = int(after_end[0])
            raise TraceError(f"expected a new episode after a terminated or truncated transition, "
                             f"but episode {ids[episode[row]]!r} goes on", field="episode", row=row)

    def __eq__(self, other) -> bool:
        """Exact equality: same arrays (dtype and values), spaces, ids, metadata, feedback and info."""
        if not isinstance(other, Trace):
            return NotImplemented
        return all(
            a.dtype == b.dtype and np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
            for a, b in ((getattr(self, f.name), getattr(other, f.name)) for f in fields(self) if f.compare)
        )

    def __len__(self) -> int:
        return len(self.obs)

    @property
    def num_episodes(self) -> int:
        return len(self.episode_ids)

    def episode_starts(self) -> np.ndarray:
        """(E,) index of each episode's first transition."""
        return np.searchsorted(self.episode, np.arange(self.num_episodes))

    def episode_slices(self) -> list[slice]:
        bounds = np.append(self.episode_starts(), len(self)).tolist()
        return [slice(start, stop) for start, stop in zip(bounds[:-1], bounds[1:])]

    def select_episodes(self, indices) -> Trace:
        """A new Trace with the episodes at `indices` (in that order, renumbered); feedback/info re-indexed."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(set(indices.tolist())) != len(indices) or not ((indices >= 0) & (indices < self.num_episodes)).all():
            raise TraceError(f"expected distinct episode indices in 0..{self.num_episodes - 1}, got {short(indices)}")
        starts = self.episode_starts()
        lengths = np.diff(np.append(starts, len(self)))[indices]
        offsets = np.cumsum(lengths) - lengths  # where each chosen episode starts in the new trace
        rows = np.arange(lengths.sum()) + np.repeat(starts[indices] - offsets, lengths)
        new_row = np.full(len(self), -1)
        new_row[rows] = np.arange(len(rows))
        arrays = {name: getattr(self, name)[rows] for name in ARRAYS}
        arrays["episode"] = np.repeat(np.arange(len(indices)), lengths)
        return Trace(
            **arrays,
            episode_ids=[self.episode_ids[i] for i in indices],
            observation_space=self.observation_space,
            action_space=self.action_space,
            name=self.name,
            notes=self.notes,
            max_episode_steps=self.max_episode_steps,
            feedback={int(new_row[k]): v for k, v in self.feedback.items() if new_row[k] >= 0},
            info=None if self.info is None else [self.info[r] for r in rows],
            episode_feedback={new: self.episode_feedback[old] for new, old in enumerate(indices.tolist())
                              if old in self.episode_feedback},
        )

    def split(self, held_out_fraction: float, seed: int) -> tuple[Trace, Trace]:
        """(train, held_out) by whole episodes (`split_episodes`); each keeps recording order."""
        train, held_out = self.split_episodes(held_out_fraction, seed)
        return self.select_episodes(train), self.select_episodes(held_out)

    def split_episodes(self, held_out_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, held_out) episode indices, each sorted, drawn at random with `seed`: about
        `held_out_fraction` of the episodes are held out, at least one and at most all but one."""
        if self.num_episodes < 2:
            raise TraceError(f"split needs at least 2 episodes, trace {self.name!r} has {self.num_episodes}")
        if not 0 < held_out_fraction < 1:
            raise TraceError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
        num_held_out = min(max(round(held_out_fraction * self.num_episodes), 1), self.num_episodes - 1)
        order = np.random.default_rng(seed).permutation(self.num_episodes)
        return np.sort(order[num_held_out:]), np.sort(order[:num_held_out])

    def summary(self) -> TraceSummary:
        """Statistics of the trace (std is the population std, ddof=0; obs stats are per dimension).

        Taken once, chunk by chunk (`SummaryAccumulator`), unless a reader already took them while reading.
        """
        if self._summary is None:
            accumulator = SummaryAccumulator()
            for start in range(0, len(self), CHUNK_ROWS):
                rows = slice(start, start + CHUNK_ROWS)
                accumulator.add(self.obs[rows], self.reward[rows], self.terminated[rows], self.truncated[rows],
                                self.episode[rows])
            self._summary = accumulator.result()
        return self._summary


@dataclass
class TraceSummary:
    """Summary statistics of a Trace; episode lengths in steps, returns are undiscounted sums."""

    num_transitions: int
    num_episodes: int
    episode_length_mean: float
    episode_length_min: int
    episode_length_max: int
    episode_return_mean: float
    episode_return_std: float
    episode_return_min: float
    episode_return_max: float
    obs_mean: list[float]  # (O,)
    obs_std: list[float]  # (O,)
    obs_min: list[float]  # (O,)
    obs_max: list[float]  # (O,)
    reward_mean: float
    reward_std: float
    num_terminated: int
    num_truncated: int

    def to_dict(self) -> dict:
        """A JSON-able dict of the fields."""
        return asdict(self)


def _merge_moments(moments: tuple, values: np.ndarray) -> tuple:
    """(count, mean, M2) per column of a float64 (K, D) chunk merged into `moments` (Chan et al., 1979)."""
    count, mean, m2 = moments
    chunk_mean = values.mean(0)
    chunk_m2 = np.square(values - chunk_mean).sum(0)
    total = count + len(values)
    delta = chunk_mean - mean
    return total, mean + delta * (len(values) / total), m2 + chunk_m2 + np.square(delta) * (count * len(values) / total)


class SummaryAccumulator:
    """A `TraceSummary` taken chunk by chunk over transitions in recording order: counts, sums,
    means and M2 merged per chunk, min/max, and per-episode returns and lengths grown as episodes appear."""

    def __init__(self):
        self.obs = self.reward = (0, 0.0, 0.0)  # (count, mean, M2): obs per dimension, reward as one column
        self.obs_min = self.obs_max = None
        self.num_terminated = self.num_truncated = self.num_episodes = 0
        self.returns, self.lengths = np.zeros(0), np.zeros(0, np.int64)  # (capacity,) by episode index

    @np.errstate(invalid="ignore", over="ignore")  # readers add chunks before Trace rejects non-finite data
    def add(self, obs: np.ndarray, reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
            episode: np.ndarray) -> None:
        """One chunk of K transitions: obs (K, O), reward (K,), terminated (K,), truncated (K,), and
        episode (K,) indices."""
        if not len(obs):
            return
        values = obs.astype(np.float64)
        self.obs = _merge_moments(self.obs, values)
        low, high = values.min(0), values.max(0)
        self.obs_min = low if self.obs_min is None else np.minimum(self.obs_min, low)
        self.obs_max = high if self.obs_max is None else np.maximum(self.obs_max, high)
        reward = reward.astype(np.float64)
        self.reward = _merge_moments(self.reward, reward[:, None])
        self.num_terminated += int(terminated.sum())
        self.num_truncated += int(truncated.sum())
        first, last = int(episode.min()), int(episode.max())
        if last >= len(self.returns):
            grow = max(last + 1, 2 * len(self.returns)) - len(self.returns)
            self.returns = np.append(self.returns, np.zeros(grow))
            self.lengths = np.append(self.lengths, np.zeros(grow, np.int64))
        self.returns[first:last + 1] += np.bincount(episode - first, weights=reward)
        self.lengths[first:last + 1] += np.bincount(episode - first)
        self.num_episodes = max(self.num_episodes, last + 1)

    def result(self) -> TraceSummary:
        """The summary of everything added (at least one transition)."""
        count, obs_mean, obs_m2 = self.obs
        _, reward_mean, reward_m2 = self.reward
        returns, lengths = self.returns[:self.num_episodes], self.lengths[:self.num_episodes]
        return TraceSummary(
            num_transitions=count,
            num_episodes=self.num_episodes,
            episode_length_mean=float(lengths.mean()),
            episode_length_min=int(lengths.min()),
            episode_length_max=int(lengths.max()),
            episode_return_mean=float(returns.mean()),
            episode_return_std=float(returns.std()),
            episode_return_min=float(returns.min()),
            episode_return_max=float(returns.max()),
            obs_mean=obs_mean.tolist(),
            obs_std=np.sqrt(obs_m2 / count).tolist(),
            obs_min=self.obs_min.tolist(),
            obs_max=self.obs_max.tolist(),
            reward_mean=float(reward_mean[0]),
            reward_std=float(np.sqrt(reward_m2[0] / count)),
            num_terminated=self.num_terminated,
            num_truncated=self.num_truncated,
        )


class TraceChunks:
    """A reader's arrays, gathered chunk by chunk with their summary accumulated on the way.

    Peak memory while concatenating is the whole arrays plus one field's chunks (see `concatenate`).
    """

    def __init__(self):
        self.parts: dict[str, list[np.ndarray]] = {name: [] for name in ARRAYS}
        self.summary = SummaryAccumulator()
        self.rows = 0

    def add(self, **chunk: np.ndarray) -> None:
        """One chunk: an array per field of ARRAYS, all of one length, each in its final dtype."""
        for name, parts in self.parts.items():
            parts.append(chunk[name])
        self.summary.add(chunk["obs"], chunk["reward"], chunk["terminated"], chunk["truncated"], chunk["episode"])
        self.rows += len(chunk["obs"])

    def concatenate(self) -> dict[str, np.ndarray]:
        """The arrays, each concatenated from its chunks, which are then dropped (one field at a time)."""
        arrays = {}
        for name, parts in self.parts.items():
            arrays[name] = np.concatenate(parts)
            parts.clear()
        return arrays

    def trace(self, arrays: dict[str, np.ndarray], **kwargs) -> Trace:
        """`Trace(**arrays, **kwargs)` with the accumulated summary cached in it."""
        trace = Trace(**arrays, **kwargs)
        trace._summary = self.summary.result()
        return trace
