"""The sandbox worker: `python -m dreamer.sandbox.worker`, started by `dreamer.sandbox.validate`.

Reads one JSON request from stdin:

    {"name": str, "source": str, "held_out": path of an NPZ (no pickles) with the arrays of
     `dreamer.traces.Trace`, "observation_shape": [O], "action_space": space dict, "config": dict}

runs the validation suite on the untrusted sim and writes one JSON result to stdout:

    {"checks": {name: {"passed": bool, "detail": str}}, "fidelity": {figure: value}, "reasons": [str]}

The sim cannot write to the result: fd 1 is pointed at stderr before any sim code runs, and the
result goes to a private duplicate of the original stdout.
"""

from __future__ import annotations

import json
import math
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env
from gymnasium.vector.utils import batch_space

from dreamer.artifacts import finite_or_none
from dreamer.sandbox.config import SandboxConfig
from dreamer.sandbox.static import check_source
from dreamer.sim import FuncSim, SimEnv, SimVectorEnv

CHECKS = ("loads", "spaces", "gymnasium_checker", "shapes_and_dtypes", "batch_equals_rows",
          "deterministic", "finite", "fidelity")
MAX_DETAIL_CHARS = 4000
ROW_ATOL = 1e-5  # batch-vs-row tolerance (float32 kernels may differ in the last bits)


@dataclass
class Check:
    """One check's outcome; `reasons` replace the default "NAME failed: <last detail line>"."""

    passed: bool
    detail: str
    reasons: list[str] = field(default_factory=list)


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


def _generator(seed: int) -> torch.Generator:
    rng = torch.Generator()
    rng.manual_seed(seed)
    return rng


def _random_actions(sim: FuncSim, n: int, seed: int) -> torch.Tensor:
    """(n,) int64 or (n, A) float32 actions drawn uniformly from the sim's action space."""
    space = batch_space(sim.action_space, n)
    space.seed(seed)
    return sim.action_tensor(space.sample(), torch.device("cpu"))


def _describe(tensor) -> str:
    if not isinstance(tensor, torch.Tensor):
        return f"a {type(tensor).__name__}, not a tensor"
    return f"shape {tuple(tensor.shape)} {tensor.dtype}"


def check_loads(source: str, name: str) -> tuple[Check, FuncSim | None]:
    violations = check_source(source, name)
    if violations:
        lines = [f"{name}:{v.line}:{v.col}: {v.message}" for v in violations]
        return Check(False, "unsafe source:\n" + "\n".join(lines), [f"unsafe source: {line}" for line in lines]), None
    sim = FuncSim.from_source(source, name=name)
    return Check(True, f"observation {sim.observation_space}, action {sim.action_space}, "
                       f"max_episode_steps {sim.max_episode_steps}"), sim


def check_spaces(sim: FuncSim, held_out: HeldOut, config: SandboxConfig) -> Check:
    problems = []
    if sim.observation_space.shape != held_out.observation_shape:
        problems.append(f"observation shape {sim.observation_space.shape} != trace's {held_out.observation_shape}")
    real = held_out.action_space
    if type(sim.action_space).__name__ != real["type"]:
        problems.append(f"action space is {type(sim.action_space).__name__}, the trace's is {real['type']}")
    elif isinstance(sim.action_space, spaces.Discrete) and sim.action_space.n != real["n"]:
        problems.append(f"Discrete({sim.action_space.n}) actions, the trace has Discrete({real['n']})")
    elif isinstance(sim.action_space, spaces.Box) and sim.action_space.shape != (len(real["low"]),):
        problems.append(f"action shape {sim.action_space.shape}, the trace's is {(len(real['low']),)}")
    return Check(not problems, "; ".join(problems) or "observation and action spaces match the trace")


def check_gymnasium(sim: FuncSim, held_out: HeldOut, config: SandboxConfig) -> Check:
    """gymnasium's env checker on one SimEnv; its warnings are listed but do not fail the check."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(SimEnv(sim), skip_render_check=True)
    notes = sorted({str(w.message) for w in caught})
    return Check(True, "passed" + "".join(f"\nwarning: {note}" for note in notes))


def check_shapes(sim: FuncSim, held_out: HeldOut, config: SandboxConfig) -> Check:
    """Each function's output against the contract on a batch of `batch_check_size`."""
    n, obs_dim = config.batch_check_size, held_out.observation_shape[0]
    rng = _generator(config.seed)
    problems = []

    def expect(function: str, value, shape: tuple, dtype: torch.dtype) -> None:
        ok = isinstance(value, torch.Tensor) and value.dtype == dtype and value.ndim == len(shape) and all(
            want is None or want == got for want, got in zip(shape, value.shape))
        if not ok:
            wanted = tuple("S" if size is None else size for size in shape)
            problems.append(f"{function} returned {_describe(value)}, expected shape {wanted} {dtype}")

    state = sim.initial(rng, n)
    expect("initial", state, (n, None), torch.float32)
    expect("observation", sim.observation(state, rng), (n, obs_dim), torch.float32)
    action = _random_actions(sim, n, config.seed)
    next_state = sim.transition(state, action, rng)
    expect("transition", next_state, tuple(state.shape), torch.float32)
    expect("reward", sim.reward(state, action, next_state, rng), (n,), torch.float32)
    expect("terminal", sim.terminal(next_state, rng), (n,), torch.bool)
    return Check(not problems, "; ".join(problems) or f"all five functions keep the contract on a batch of {n}")


def check_batch_equals_rows(sim: FuncSim, held_out: HeldOut, config: SandboxConfig) -> Check:
    """transition/reward/terminal on held-out rows as one batch == each row alone (rng draws excluded)."""
    n = min(config.batch_check_size, len(held_out.obs))
    state, action = held_out.obs[:n], sim.action_tensor(held_out.action[:n], torch.device("cpu"))
    rng = _generator(config.seed)

    def outputs(rows: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        next_state = sim.transition(state[rows], action[rows], rng)
        return (next_state, sim.reward(state[rows], action[rows], next_state, rng),
                sim.terminal(next_state, rng))

    batch = outputs(slice(0, n))
    for row in range(n):
        alone = outputs(slice(row, row + 1))
        for function, whole, single in zip(("transition", "reward", "terminal"), batch, alone):
            if not torch.allclose(whole[row:row + 1].double(), single.double(), rtol=ROW_ATOL, atol=ROW_ATOL,
                                  equal_nan=True):
                return Check(False, f"{function} of held-out row {row} differs between the batch of {n} "
                                    f"({whole[row].tolist()}) and the row alone ({single[0].tolist()})")
    return Check(True, f"{n} held-out rows match batched and alone")


def _rollout(sim: FuncSim, config: SandboxConfig) -> dict[str, torch.Tensor]:
    """A seeded `rollout_envs` x `rollout_steps` random-action rollout: stacked obs, rewards, flags."""
    env = SimVectorEnv(sim, config.rollout_envs)
    obs, _ = env.reset(seed=config.seed)
    env.action_space.seed(config.seed)
    record: dict[str, list[torch.Tensor]] = {"obs": [obs], "final_obs": [], "reward": [], "terminated": []}
    for _ in range(config.rollout_steps):
        obs, reward, terminated, _, info = env.step(env.action_space.sample())
        for key, value in (("obs", obs), ("final_obs", info["final_obs"]), ("reward", reward),
                           ("terminated", terminated)):
            record[key].append(value)
    return {key: torch.stack(values) for key, values in record.items()}


def check_deterministic(sim: FuncSim, held_out: HeldOut, config: SandboxConfig) -> Check:
    first, second = _rollout(sim, config), _rollout(sim, config)
    for key, value in first.items():
        same = value.shape == second[key].shape and torch.allclose(
            value.double(), second[key].double(), rtol=0, atol=0, equal_nan=True)
        if not same:
            return Check(False, f"two rollouts seeded {config.seed} differ in {key}")
    return Check(True, f"two {config.rollout_envs}x{config.rollout_steps} rollouts seeded {config.seed} are identical")


def check_finite(sim: FuncSim, held_out: HeldOut, config: SandboxConfig) -> Check:
    rollout = _rollout(sim, config)
    for key in ("obs", "final_obs", "reward"):
        finite = torch.isfinite(rollout[key].double())
        if not finite.all():
            step, env = (int(i) for i in torch.nonzero(~finite)[0][:2])
            return Check(False, f"non-finite {key} at step {step} of env {env} "
                                f"({rollout[key][step, env].tolist()}) in a random-action rollout")
    return Check(True, f"obs and rewards stay finite over {config.rollout_envs}x{config.rollout_steps} steps")


def _rmse(error: torch.Tensor) -> torch.Tensor:
    """Per-column RMSE of an (N, D) error."""
    return error.double().pow(2).mean(0).sqrt()


def _scale(values: torch.Tensor) -> torch.Tensor:
    """Per-column population std of (N, D) values, zero replaced by 1.0."""
    std = values.double().std(0, correction=0)
    return torch.where(std > 0, std, torch.ones_like(std))


def fidelity_figures(sim: FuncSim, held_out: HeldOut, config: SandboxConfig) -> dict:
    """Held-out accuracy; the sim state is the observation. Reward and termination are scored on
    the real next_obs, so each figure measures one function."""
    h, rng, k = held_out, _generator(config.seed), config.kstep
    action = sim.action_tensor(h.action, torch.device("cpu"))
    predicted = sim.observation(sim.transition(h.obs, action, rng), rng)
    obs_nrmse = _rmse(predicted - h.next_obs) / _scale(h.next_obs - h.obs)

    reward = h.reward.double()
    reward_rmse = float(_rmse((sim.reward(h.obs, action, h.next_obs, rng).double() - reward)[:, None]))
    reward_std = float(reward.std(correction=0))
    reward_nrmse = reward_rmse / (reward_std if reward_std >= 1e-6 else max(1.0, abs(float(reward.mean()))))

    flagged = sim.terminal(h.next_obs, rng).bool()
    termination_accuracy = float((flagged == h.terminated).double().mean())
    termination_recall = float(flagged[h.terminated].double().mean()) if h.terminated.any() else None

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
    return {
        "transitions": len(h.obs),
        "obs_nrmse": obs_nrmse.tolist(),
        "obs_nrmse_mean": float(obs_nrmse.mean()),
        "reward_rmse": reward_rmse,
        "reward_nrmse": reward_nrmse,
        "termination_accuracy": termination_accuracy,
        "termination_recall": termination_recall,
        "kstep": k,
        "kstep_windows": len(starts),
        "kstep_nrmse": kstep_nrmse,
    }


def fidelity_failures(figures: dict, config: SandboxConfig) -> list[str]:
    """One reason per threshold the figures miss (NaN misses every threshold; None is unmeasured)."""
    t = config.thresholds
    limits = (("mean obs_nrmse", figures["obs_nrmse_mean"], "max_obs_nrmse", t.max_obs_nrmse, "above"),
              ("reward_nrmse", figures["reward_nrmse"], "max_reward_nrmse", t.max_reward_nrmse, "above"),
              ("termination_accuracy", figures["termination_accuracy"], "min_termination_accuracy",
               t.min_termination_accuracy, "below"),
              (f"kstep_nrmse (k={config.kstep})", figures["kstep_nrmse"], "max_kstep_nrmse", t.max_kstep_nrmse,
               "above"))
    failures = []
    for figure, value, threshold, limit, side in limits:
        if limit is None or value is None:
            continue
        if not math.isfinite(value):
            failures.append(f"fidelity: {figure} = {value} is not finite ({threshold} = {limit})")
        elif value > limit if side == "above" else value < limit:
            failures.append(f"fidelity: {figure} = {value:.4g} is {side} {threshold} = {limit}")
    return failures


def run_suite(request: dict) -> dict:
    """Every check of the module docstring; a raising check fails with its traceback."""
    config = SandboxConfig.from_dict(request["config"])
    with np.load(request["held_out"], allow_pickle=False) as arrays:
        tensors = {key: torch.from_numpy(arrays[key]) for key in
                   ("obs", "action", "reward", "next_obs", "terminated", "episode")}
    held_out = HeldOut(**tensors, observation_shape=tuple(request["observation_shape"]),
                       action_space=request["action_space"])
    checks: dict[str, Check] = {}
    figures: dict = {}

    def guarded(name: str, run: Callable[[], Check]) -> None:
        try:
            checks[name] = run()
        except Exception:  # MemoryError, RecursionError, anything the sim raises
            checks[name] = Check(False, traceback.format_exc().rstrip()[-MAX_DETAIL_CHARS:])

    sim = None

    def loads() -> Check:
        nonlocal sim
        check, sim = check_loads(request["source"], request["name"])
        return check

    def fidelity() -> Check:
        figures.update(fidelity_figures(sim, held_out, config))
        failures = fidelity_failures(figures, config)
        summary = ", ".join(f"{key} {figures[key]!r}" for key in
                            ("obs_nrmse_mean", "reward_nrmse", "termination_accuracy", "kstep_nrmse"))
        return Check(not failures, "; ".join(failures) or f"within thresholds: {summary}", failures)

    suite = {"spaces": check_spaces, "gymnasium_checker": check_gymnasium, "shapes_and_dtypes": check_shapes,
             "batch_equals_rows": check_batch_equals_rows, "deterministic": check_deterministic,
             "finite": check_finite}
    guarded("loads", loads)
    with torch.no_grad():
        for name in CHECKS[1:]:
            if sim is None:
                checks[name] = Check(False, "not run: the sim did not load")
            else:
                guarded(name, fidelity if name == "fidelity" else lambda: suite[name](sim, held_out, config))
    ran = checks if sim is not None else {"loads": checks["loads"]}  # no reasons for checks not run
    reasons = [reason for name, check in ran.items() if not check.passed
               for reason in (check.reasons or [f"{name} failed: {check.detail.strip().splitlines()[-1][:300]}"])]
    return {"checks": {name: {"passed": c.passed, "detail": c.detail} for name, c in checks.items()},
            "fidelity": finite_or_none(figures), "reasons": reasons}


def main() -> None:
    result_fd = os.dup(1)
    os.dup2(2, 1)  # whatever the sim or a library prints lands in stderr, not in the result
    torch.set_num_threads(1)
    request = json.loads(sys.stdin.read())
    result = run_suite(request)
    with os.fdopen(result_fd, "w") as out:
        json.dump(result, out, allow_nan=False)


if __name__ == "__main__":
    main()
