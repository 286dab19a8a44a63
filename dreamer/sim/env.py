"""Gymnasium front ends of a `FuncSim`: one env with numpy I/O, and a vector env on a torch device."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from functools import partial
from types import FunctionType
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


@dataclass(frozen=True)
class UncertaintyConfig:
    """What the dream does with a learned sim's `uncertainty` (MOPO, Yu et al. 2020; MBPO/MOReL-style truncation).
    A sim without the function is stepped as it is."""

    penalty: float                 # reward -= penalty x uncertainty (MOPO's λ, reward units per unit); 0: off
    truncate_above: float | None   # a row whose uncertainty exceeds this is truncated there; None: never

    def __post_init__(self):
        if not self.penalty >= 0 or not (self.truncate_above is None or self.truncate_above > 0):
            raise ValueError(f"uncertainty.penalty must be >= 0 and truncate_above > 0 or null, got "
                             f"{self.penalty!r} and {self.truncate_above!r}")

    @property
    def used(self) -> bool:
        return self.penalty > 0 or self.truncate_above is not None


def advance(sim: FuncSim, state: torch.Tensor, steps: torch.Tensor, action: torch.Tensor, rng: torch.Generator,
            uncertainty: UncertaintyConfig | None = None) -> tuple[torch.Tensor, ...]:
    """Every row one step on, in place: state (n, S) becomes the next state, steps (n,) int32 (steps taken
    in the episode) counts one more. With `uncertainty` in use (and a sim that reports it), the reward pays
    its penalty and rows above its limit are marked. -> obs (n, O), reward (n,) float32, terminated (n,) bool,
    unsure (n,) bool (rows to truncate), u (n,) float32 (the sim's uncertainty; zeros when not measured)."""
    measured = uncertainty is not None and uncertainty.used and sim.uncertainty is not None
    # Cloned: a sim may return a view of `state` (`return state[:, 0]`), which the in-place step below overwrites.
    u = sim.uncertainty(state, action, rng).float().clone() if measured else torch.zeros(state.shape[0], device=state.device)
    next_state = sim.transition(state, action, rng)
    reward = sim.reward(state, action, next_state, rng).float().clone()
    terminated = sim.terminal(next_state, rng).bool()
    obs = sim.observation(next_state, rng)
    state.copy_(next_state)
    steps.add_(1)
    unsure = torch.zeros_like(terminated)
    if measured:
        reward = reward - uncertainty.penalty * u
        if uncertainty.truncate_above is not None:
            unsure = u > uncertainty.truncate_above
    return obs, reward, terminated, unsure, u


def end_episodes(steps: torch.Tensor, terminated: torch.Tensor, unsure: torch.Tensor,
                 horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows at the horizon, or `unsure` (n,) bool, that did not terminate are truncated; the finished rows' step
    counts go back to 0 in place. -> truncated (n,) bool, done (n,) bool."""
    truncated = ((steps >= horizon) | unsure) & ~terminated
    done = terminated | truncated
    steps.masked_fill_(done, 0)
    return truncated, done


def step_and_reset_every_row(sim: FuncSim, state: torch.Tensor, steps: torch.Tensor, action: torch.Tensor,
                             rng: torch.Generator, uncertainty: UncertaintyConfig | None = None) -> tuple[torch.Tensor, ...]:
    """The whole vector step, branch-free (no host sync, for accelerators): a start is drawn for every row,
    then `advance`, `end_episodes`, and the start kept where the row finished. (The draw comes first: dynamo
    cannot trace a draw from a `torch.Generator`, so the rest stays one graph.)
    -> obs, reward, terminated, truncated, done, final_obs (the observation before the reset), unsure, u."""
    starts = sim.initial(rng, state.shape[0])
    final_obs, reward, terminated, unsure, u = advance(sim, state, steps, action, rng, uncertainty)
    truncated, done = end_episodes(steps, terminated, unsure, sim.max_episode_steps)
    state.copy_(torch.where(done[:, None], starts, state))
    obs = torch.where(done[:, None], sim.observation(state, rng), final_obs)
    return obs, reward, terminated, truncated, done, final_obs, unsure, u


def _own_copy(function: FunctionType) -> FunctionType:
    """`function` with a code object of its own: dynamo keeps its compiled graphs (and its limit of 8
    recompiles) per code object, so each env compiles its sim once instead of evicting the others'."""
    return FunctionType(function.__code__.replace(), function.__globals__, function.__name__,
                        function.__defaults__, function.__closure__)


class SimVectorEnv(VectorEnv):
    """`num_envs` copies of the sim stepping as one batch; tensors stay on `device`.

    Autoreset is SAME_STEP: when a sub-env terminates or is truncated, the observation returned
    by `step` is already the first observation of its next episode, and the last observation of
    the finished episode is in `info["final_obs"]` (every step; rows of unfinished envs hold the
    returned observation), with `info["_final_obs"]` the (num_envs,) bool mask of finished envs.
    Actions may be numpy arrays or tensors; Box actions are clipped to the action space.

    Off the CPU a step is one function, `step_and_reset_every_row`. On the CPU it is `advance` (the sim's
    four functions fused), then `end_episodes` and a reset of the finished rows only, eagerly: the rows
    are found with one `nonzero` (a host sync, free on a CPU) and take the next starts from a pool that
    `initial` fills `num_envs` at a time. (Inductor's CPU code for bool masks measured slower than eager
    ops, and rows picked by data cannot be in a static graph; see benchmarks/README.md.)

    With `uncertainty` in use and a sim that reports its uncertainty, rewards pay its penalty and rows above its
    limit are truncated (`UncertaintyConfig`); `info["uncertainty"]` holds every step's (num_envs,) figures
    (zeros when not measured), and `uncertainty_stats()` sums them up.

    With `compile=True` the fused function goes through `torch.compile(dynamic=False)`. The first `reset`
    compiles it, on a copy of the state and with the rng put back, and sets `compile_seconds`. If that
    fails (no C++ compiler, an op dynamo cannot trace), the env warns and steps eagerly (`compiled` is
    then False). Compiled and eager steps give the same numbers.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, sim: FuncSim, num_envs: int, device: str | torch.device = "cpu", compile: bool = False,
                 uncertainty: UncertaintyConfig | None = None):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.sim = sim
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.single_observation_space = sim.observation_space
        self.single_action_space = sim.action_space
        self.observation_space = batch_space(sim.observation_space, num_envs)
        self.action_space = batch_space(sim.action_space, num_envs)
        self.compiled = compile
        self.compile_seconds: float | None = None  # wall time of the compile, once `reset` did it
        self._on_cpu = self.device.type == "cpu"
        fused = advance if self._on_cpu else step_and_reset_every_row
        self._eager = partial(fused, sim, uncertainty=uncertainty)
        self._fused = (partial(torch.compile(_own_copy(fused), dynamic=False), sim, uncertainty=uncertainty)
                       if compile else self._eager)
        self.measures_uncertainty = uncertainty is not None and uncertainty.used and sim.uncertainty is not None
        # On the device, so that counting costs no host sync: sum of uncertainty, rows truncated for it.
        self._uncertainty_totals = torch.zeros(2, dtype=torch.float64, device=self.device)
        self._steps_counted = 0  # vector steps since the env was made
        self._rng = _seeded_generator(None, self.device)
        self._state: torch.Tensor | None = None
        self._steps = torch.zeros(num_envs, dtype=torch.int32, device=self.device)
        self._starts = torch.empty(0, device=self.device)  # drawn, unused episode starts (CPU)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = _seeded_generator(seed, self.device)
        with torch.no_grad():
            state = self.sim.initial(self._rng, self.num_envs)
            obs = self.sim.observation(state, self._rng)
        self._state = state.clone(memory_format=torch.contiguous_format)  # stepped in place: never a returned obs
        self._steps.zero_()
        self._starts = self._state[:0]
        if self.compiled and self.compile_seconds is None:
            self._compile()
        return obs, {}

    def _compile(self) -> None:
        """Compile the fused step on a copy of the current state, leaving the rng where it was."""
        rng_state = self._rng.get_state()
        actions = np.stack([self.single_action_space.sample() for _ in range(self.num_envs)])
        start = time.perf_counter()
        try:
            with torch.no_grad():
                self._fused(self._state.clone(), self._steps.clone(), self.sim.action_tensor(actions, self.device), self._rng)
        except Exception as error:  # a platform without a compiler, an op dynamo cannot trace
            reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
            warnings.warn(f"sim.compile: torch.compile of sim {self.sim.name!r} failed, stepping eagerly ({reason})",
                          stacklevel=3)
            self.compiled, self._fused = False, self._eager
        self.compile_seconds = time.perf_counter() - start
        self._rng.set_state(rng_state)

    @torch.no_grad()
    def step(self, actions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        action = self.sim.action_tensor(actions, self.device)
        if not self._on_cpu:
            obs, reward, terminated, truncated, done, final_obs, unsure, u = self._fused(
                self._state, self._steps, action, self._rng)
            self._count(u, unsure & ~terminated)
            return obs, reward, terminated, truncated, {"final_obs": final_obs, "_final_obs": done, "uncertainty": u}
        final_obs, reward, terminated, unsure, u = self._fused(self._state, self._steps, action, self._rng)
        self._count(u, unsure & ~terminated)
        truncated, done = end_episodes(self._steps, terminated, unsure, self.sim.max_episode_steps)
        rows = done.nonzero().squeeze(1)
        obs = final_obs
        if rows.numel():
            starts = self._take_starts(rows.numel())
            self._state.index_put_((rows,), starts)
            obs = final_obs.index_put((rows,), self.sim.observation(starts, self._rng))
        return obs, reward, terminated, truncated, {"final_obs": final_obs, "_final_obs": done, "uncertainty": u}

    def _count(self, u: torch.Tensor, truncated_unsure: torch.Tensor) -> None:
        if self.measures_uncertainty:
            self._uncertainty_totals += torch.stack([u.double().sum(), truncated_unsure.double().sum()])
            self._steps_counted += 1

    def uncertainty_stats(self) -> dict[str, float] | None:
        """{"mean": the sim's mean uncertainty per row step, "truncated_share": share of row steps truncated for
        it} since the env was made; None when the uncertainty is not measured."""
        if not self.measures_uncertainty:
            return None
        total, truncated = self._uncertainty_totals.tolist()
        rows = max(self._steps_counted * self.num_envs, 1)
        return {"mean": total / rows, "truncated_share": truncated / rows}

    def _take_starts(self, count: int) -> torch.Tensor:
        """The pool's next `count` (count, S) episode starts; `initial` draws `max(num_envs, count)` more
        when it runs short."""
        if count > len(self._starts):
            self._starts = torch.cat([self._starts, self.sim.initial(self._rng, max(self.num_envs, count))])
        starts, self._starts = self._starts[:count], self._starts[count:]
        return starts
