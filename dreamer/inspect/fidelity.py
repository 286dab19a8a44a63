"""How far to trust an accepted sim: its predictions next to the real session, and its own rollouts.

The sim's state is the observation (the sandbox scores it the same way): one-step predictions start
every held-out transition from the real obs; open-loop rollouts start from an episode's first real
obs and apply the recorded actions, never looking at the real states again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium
import numpy as np
import torch

from dreamer.sandbox import SandboxConfig
from dreamer.sim import FuncSim, SimVectorEnv, space_to_dict
from dreamer.sim.fidelity import HELD_OUT_ARRAYS, HeldOut, predict
from dreamer.traces import Trace


@dataclass(frozen=True)
class OneStep:
    """The sim's one-step predictions on every held-out transition, next to the real ones (N rows).

    Reward and termination are predicted from the real next obs, so each error belongs to one function."""

    next_obs: np.ndarray  # (N, O) real
    predicted_next_obs: np.ndarray  # (N, O)
    reward: np.ndarray  # (N,) real
    predicted_reward: np.ndarray  # (N,)
    terminated: np.ndarray  # (N,) bool, real
    predicted_terminated: np.ndarray  # (N,) bool
    nrmse: np.ndarray  # (O,) per-dimension RMSE / std of the real one-step change (the sandbox's obs_nrmse)

    def confusion(self) -> np.ndarray:
        """(2, 2) counts of [real terminated][predicted terminated]."""
        return np.array([[np.sum((self.terminated == r) & (self.predicted_terminated == p)) for p in (False, True)]
                         for r in (False, True)])


def one_step(sim: FuncSim, held_out: Trace, sandbox: SandboxConfig) -> OneStep:
    """The sandbox's own one-step predictions (same code, same `sandbox.seed`) on `held_out`."""
    data = HeldOut.from_arrays({key: getattr(held_out, key) for key in HELD_OUT_ARRAYS},
                               held_out.observation_space.shape, space_to_dict(held_out.action_space))
    with torch.no_grad():
        p = predict(sim, data, sandbox.seed)
    return OneStep(held_out.next_obs, p.next_obs.float().numpy(), held_out.reward, p.reward.float().numpy(),
                   held_out.terminated, p.terminated.numpy(), p.state_error.pow(2).mean(0).sqrt().numpy())


@dataclass(frozen=True)
class OpenLoop:
    """One real episode's first k+1 observations and the sim's open-loop replay of its actions."""

    episode_id: str
    obs: np.ndarray  # (k+1, O) real: the first obs, then each step's next_obs
    predicted_obs: np.ndarray  # (k+1, O) sim: the same first obs, then its own states
    reward: np.ndarray  # (k,) real
    predicted_reward: np.ndarray  # (k,)


def open_loop(sim: FuncSim, trace: Trace, k: int, episodes: list[int] | None = None, seed: int = 0) -> list[OpenLoop]:
    """Replay the recorded actions of `episodes` (default: all) in the sim for up to `k` steps each
    (fewer when the real episode is shorter)."""
    rng = torch.Generator().manual_seed(seed)
    runs = []
    for index in range(trace.num_episodes) if episodes is None else episodes:
        rows = trace.episode_slices()[index]
        rows = slice(rows.start, min(rows.stop, rows.start + k))
        actions = sim.action_tensor(trace.action[rows], torch.device("cpu"))
        state = torch.as_tensor(trace.obs[rows.start:rows.start + 1])
        states, rewards = [sim.observation(state, rng)], []
        with torch.no_grad():
            for action in actions:
                next_state = sim.transition(state, action[None], rng)
                rewards.append(sim.reward(state, action[None], next_state, rng).float())
                states.append(sim.observation(next_state, rng))
                state = next_state
        runs.append(OpenLoop(trace.episode_ids[index], np.concatenate([trace.obs[rows][:1], trace.next_obs[rows]]),
                             torch.cat(states).float().numpy(), trace.reward[rows], torch.cat(rewards).numpy()))
    return runs


@dataclass(frozen=True)
class DreamRollout:
    """`num_envs` dream episodes stepped together; rows after an env's episode ended are NaN."""

    obs: np.ndarray  # (T+1, n, O)
    reward: np.ndarray  # (T, n)
    terminated: np.ndarray  # (T, n) bool
    truncated: np.ndarray  # (T, n) bool

    def returns(self) -> np.ndarray:
        """(n,) each episode's undiscounted return."""
        return np.nansum(self.reward, 0)

    def episode(self, env: int) -> np.ndarray:
        """(T_env + 1, O) the observations of env `env`'s episode, from its first to its last."""
        return self.obs[np.isfinite(self.obs[:, env]).all(1), env]


def dream_rollouts(sim: FuncSim, num_envs: int, steps: int, seed: int,
                   act: Callable[[np.ndarray], np.ndarray] | None = None) -> DreamRollout:
    """One episode per env (at most `steps` steps) of the sim, acting with `act(obs (n, O)) -> (n,) or
    (n, A)` (default: uniform random actions drawn with `seed`)."""
    envs = SimVectorEnv(sim, num_envs)
    envs.action_space.seed(seed)
    obs, _ = envs.reset(seed=seed)
    observations, rewards, terminations, truncations = [obs.numpy()], [], [], []
    alive = np.ones(num_envs, dtype=bool)
    for _ in range(steps):
        if not alive.any():
            break
        action = envs.action_space.sample() if act is None else act(obs.numpy())
        obs, reward, terminated, truncated, info = envs.step(action)
        final = info["final_obs"].numpy().copy()
        final[~alive] = np.nan
        step_reward = np.where(alive, reward.numpy(), np.nan)
        observations.append(final)
        rewards.append(step_reward)
        terminations.append(terminated.numpy() & alive)
        truncations.append(truncated.numpy() & alive)
        alive &= ~(terminated | truncated).numpy()
    return DreamRollout(np.stack(observations), np.stack(rewards), np.stack(terminations), np.stack(truncations))


def render_states(env_id: str, states: np.ndarray) -> np.ndarray | None:
    """(T, H, W, 3) frames of `states` (T, O) drawn by the real env's renderer, for envs whose state is
    their observation (classic control: CartPole, MountainCar, Acrobot's angles excepted); None when the env
    cannot draw them."""
    env = gymnasium.make(env_id, render_mode="rgb_array")
    try:
        env.reset(seed=0)
        base = env.unwrapped
        if np.shape(getattr(base, "state", None)) != states.shape[1:]:
            return None
        frames = []
        for state in states:
            base.state = np.array(state, dtype=np.float64)
            frames.append(env.render())
        return np.stack(frames)
    finally:
        env.close()
