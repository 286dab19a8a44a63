"""How well a sim predicts held-out real transitions: the figures users judge a sim by (`Fidelity`).

The sim's state is the observation. One-step predictions start every held-out transition from the
real obs; reward and termination are scored on the real next_obs, so each figure measures one
function; the reward is scored on the transitions whose termination the sim gets right, since a reward
that follows the termination (a goal's bonus) would count a wrong termination twice. NRMSE is an RMSE
divided by the trace's own spread (std), so 1.0 is as wrong as the spread itself. The sandbox worker computes these figures on untrusted sims, so this module imports
nothing of dreamer but the sim contract and the artifact helpers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from dreamer.artifacts import finite_or_none
from dreamer.sim.contract import FuncSim

HELD_OUT_ARRAYS = ("obs", "action", "reward", "next_obs", "terminated", "episode")  # what the figures read
SIGNIFICANT_DIGITS = 6  # of the numbers in counterexamples
LATER_FIGURES = ("termination_precision", "terminations", "predicted_terminations")  # None in older reports


@dataclass(frozen=True)
class Tolerances:
    """When one held-out transition counts as right, in units of the trace's own spread."""

    state: float  # every |predicted - real| next-obs dim <= state * std(next_obs - obs) of that dim
    reward: float  # |predicted - real| reward <= reward * std(reward)


@dataclass(frozen=True)
class Fidelity:
    """The held-out figures of one sim. A float figure the sim made non-finite (NaN) is None once
    written to JSON (`to_dict`); the planning figures are None when the planning check did not run."""

    transitions: int
    """N, the held-out transitions scored."""
    obs_nrmse: tuple[float | None, ...]
    """(O,) one-step next_obs RMSE / std(next_obs - obs), per obs dim."""
    obs_nrmse_mean: float | None
    """Mean of `obs_nrmse` over the obs dims."""
    reward_rmse: float | None
    """One-step reward RMSE, in reward units, on the transitions whose terminal flag the sim predicts right (None
    where it predicts none right)."""
    reward_nrmse: float | None
    """`reward_rmse` / std(reward) (max(1, |mean|) for a constant reward)."""
    termination_accuracy: float
    """Fraction of transitions whose predicted terminal flag matches the real one."""
    termination_recall: float | None
    """Fraction of the real terminations predicted; None when the held-out episodes never terminate."""
    termination_precision: float | None
    """Fraction of the predicted terminations that are real; None when the sim predicts none (or in a report written
    before it was measured)."""
    terminations: int | None
    """Real terminal steps among the held-out transitions (None in a report written before it was counted)."""
    predicted_terminations: int | None
    """Held-out transitions the sim calls terminal (None in a report written before it was counted)."""
    state_accuracy: float
    """Fraction of transitions with every next_obs dim within `state_tolerance`."""
    reward_accuracy: float
    """Fraction of the transitions whose terminal flag the sim predicts right with the reward within
    `reward_tolerance` (0.0 where it predicts none right)."""
    accuracy: float
    """Fraction of transitions right in state, reward and termination at once."""
    state_tolerance: float
    """`Tolerances.state` the accuracies used (in std(next_obs - obs) of each dim)."""
    reward_tolerance: float
    """`Tolerances.reward` the accuracies used (in std(reward))."""
    kstep: int
    """Steps of the open-loop figure."""
    kstep_windows: int
    """Held-out windows of `kstep` steps inside one episode, with no termination before the last step."""
    kstep_nrmse: float | None
    """Open-loop obs RMSE after `kstep` steps / std(obs), mean over obs dims; None without windows."""
    planning_horizon: int | None
    """Steps of the planning check's action sequences."""
    planning_return: float | None
    """Best `planning_horizon`-step return CEM found inside the sim, from held-out episode starts."""
    planning_real_best: float | None
    """Best `planning_horizon`-step return the trace reached from an episode start."""

    def to_dict(self) -> dict:
        """Plain JSON values: `obs_nrmse` a list, non-finite floats None."""
        return finite_or_none(asdict(self))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Fidelity:
        """From `to_dict`'s keys, exactly; raises ValueError naming any unknown or missing key."""
        names = [field.name for field in fields(cls)]
        values = {**dict.fromkeys(LATER_FIGURES), **values}
        unknown, missing = sorted(set(values) - set(names)), [name for name in names if name not in values]
        if unknown:
            raise ValueError(f"unknown fidelity figure(s) {unknown}; the figures are {names}")
        if missing:
            raise ValueError(f"missing fidelity figure(s) {missing}")
        return cls(**{**values, "obs_nrmse": tuple(values["obs_nrmse"])})


@dataclass
class HeldOut:
    """The held-out transitions as tensors (see `dreamer.traces.Trace` for shapes)."""

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor
    episode: torch.Tensor
    observation_shape: tuple[int, ...]
    action_space: dict

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], observation_shape, action_space: dict) -> HeldOut:
        """From the `HELD_OUT_ARRAYS` of a Trace (or of the NPZ the sandbox writes)."""
        return cls(**{key: torch.from_numpy(np.asarray(arrays[key])) for key in HELD_OUT_ARRAYS},
                   observation_shape=tuple(observation_shape), action_space=action_space)


@dataclass
class Predictions:
    """The sim's one-step predictions on every held-out transition (reward and terminal on the real next_obs)."""

    next_obs: torch.Tensor  # (N, O)
    reward: torch.Tensor  # (N,)
    terminated: torch.Tensor  # (N,) bool
    state_error: torch.Tensor  # (N, O) |predicted - real| next_obs / std(next_obs - obs) per dim
    reward_error: torch.Tensor  # (N,) |predicted - real| reward / reward scale


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU `torch.Generator` seeded with `seed`."""
    rng = torch.Generator()
    rng.manual_seed(seed)
    return rng


def _rmse(error: torch.Tensor) -> torch.Tensor:
    """Per-column RMSE of an (N, D) error."""
    return error.double().pow(2).mean(0).sqrt()


def _scale(values: torch.Tensor) -> torch.Tensor:
    """Per-column population std of (N, D) values, zero replaced by 1.0."""
    std = values.double().std(0, correction=0)
    return torch.where(std > 0, std, torch.ones_like(std))


def _reward_scale(reward: torch.Tensor) -> float:
    """std(reward), or max(1, |mean|) for a (nearly) constant reward."""
    std = float(reward.double().std(correction=0))
    return std if std >= 1e-6 else max(1.0, abs(float(reward.double().mean())))


def predict(sim: FuncSim, held_out: HeldOut, seed: int) -> Predictions:
    """The sim's one-step predictions on `held_out`, its rng seeded with `seed`."""
    h, rng = held_out, seeded_generator(seed)
    action = sim.action_tensor(h.action, torch.device("cpu"))
    next_obs = sim.observation(sim.transition(h.obs, action, rng), rng)
    reward = sim.reward(h.obs, action, h.next_obs, rng)
    terminated = sim.terminal(h.next_obs, rng).bool()
    return Predictions(next_obs, reward, terminated,
                       (next_obs - h.next_obs).double().abs() / _scale(h.next_obs - h.obs),
                       (reward.double() - h.reward.double()).abs() / _reward_scale(h.reward))


def measure_fidelity(sim: FuncSim, held_out: HeldOut, predictions: Predictions, tolerances: Tolerances, kstep: int,
                     seed: int) -> Fidelity:
    """The held-out figures of `sim` (planning figures None), the k-step rollout's rng seeded with `seed`."""
    h, p, rng, k, tol = held_out, predictions, seeded_generator(seed), kstep, tolerances
    action = sim.action_tensor(h.action, torch.device("cpu"))
    obs_nrmse = p.state_error.pow(2).mean(0).sqrt()
    termination_right = p.terminated == h.terminated
    reward_error = (p.reward.double() - h.reward.double())[termination_right]
    reward_rmse = float(_rmse(reward_error[:, None])) if len(reward_error) else None
    state_right = (p.state_error <= tol.state).all(-1)
    reward_right = p.reward_error <= tol.reward

    # Windows (t, t+k) inside one episode with no termination among transitions t..t+k-2.
    starts = torch.arange(max(len(h.obs) - k + 1, 0))
    ended = torch.cat([torch.zeros(1, dtype=torch.long), h.terminated.long().cumsum(0)])
    starts = starts[(h.episode[starts] == h.episode[starts + k - 1]) & (ended[starts + k - 1] == ended[starts])]
    kstep_nrmse = None
    if len(starts):
        state = h.obs[starts]
        for step in range(k):
            state = sim.transition(state, action[starts + step], rng)
        error = sim.observation(state, rng) - h.next_obs[starts + k - 1]
        kstep_nrmse = float((_rmse(error) / _scale(h.obs)).mean())
    return Fidelity(
        transitions=len(h.obs),
        obs_nrmse=tuple(obs_nrmse.tolist()),
        obs_nrmse_mean=float(obs_nrmse.mean()),
        reward_rmse=reward_rmse,
        reward_nrmse=None if reward_rmse is None else reward_rmse / _reward_scale(h.reward),
        termination_accuracy=float(termination_right.double().mean()),
        termination_recall=float(p.terminated[h.terminated].double().mean()) if h.terminated.any() else None,
        termination_precision=float(h.terminated[p.terminated].double().mean()) if p.terminated.any() else None,
        terminations=int(h.terminated.sum()),
        predicted_terminations=int(p.terminated.sum()),
        state_accuracy=float(state_right.double().mean()),
        reward_accuracy=float(reward_right[termination_right].double().mean()) if termination_right.any() else 0.0,
        accuracy=float((state_right & reward_right & termination_right).double().mean()),
        state_tolerance=tol.state,
        reward_tolerance=tol.reward,
        kstep=k,
        kstep_windows=len(starts),
        kstep_nrmse=kstep_nrmse,
        planning_horizon=None,
        planning_return=None,
        planning_real_best=None,
    )


def counterexamples(held_out: HeldOut, predictions: Predictions, tolerances: Tolerances, count: int) -> list[dict]:
    """Up to `count` wrong transitions, taken in turn from the worst in state, in reward and in
    termination, so each kind of error the sim makes is shown; numbers to `SIGNIFICANT_DIGITS`."""
    h, p, tol = held_out, predictions, tolerances
    state_score = torch.nan_to_num((p.state_error / tol.state).amax(-1), nan=math.inf)
    reward_score = torch.nan_to_num(p.reward_error / tol.reward, nan=math.inf)
    rankings = [torch.argsort(score, descending=True, stable=True)[:int((score > 1).sum())].tolist()
                for score in (state_score, reward_score)]
    rankings.append(torch.nonzero(p.terminated != h.terminated).flatten().tolist())
    chosen: list[int] = []
    while len(chosen) < count and any(rankings):
        for ranking in rankings:
            while ranking and ranking[0] in chosen:
                ranking.pop(0)
            if ranking and len(chosen) < count:
                chosen.append(ranking.pop(0))

    def rounded(value: torch.Tensor):
        if value.dtype == torch.bool:
            return value.tolist()
        return np.vectorize(lambda x: float(f"{x:.{SIGNIFICANT_DIGITS}g}"), otypes=[float])(
            value.double().numpy()).tolist()

    return [{
        "index": i,
        "episode": int(h.episode[i]),
        "obs": rounded(h.obs[i]),
        "action": rounded(h.action[i]) if h.action.is_floating_point() else int(h.action[i]),
        "next_obs": rounded(h.next_obs[i]),
        "predicted_next_obs": rounded(p.next_obs[i]),
        "reward": rounded(h.reward[i]),
        "predicted_reward": rounded(p.reward[i]),
        "terminated": bool(h.terminated[i]),
        "predicted_terminated": bool(p.terminated[i]),
        "wrong": [part for part, wrong in (("state", state_score[i] > 1), ("reward", reward_score[i] > 1),
                                           ("termination", p.terminated[i] != h.terminated[i])) if wrong],
    } for i in chosen]
