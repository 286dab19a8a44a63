"""The sandbox worker: `main()` in a subprocess started by `dreamer.sandbox.validate` (`WORKER_ARGS`).

Reads one JSON request from stdin:

    {"name": str, "source": str, "weights": path of the sim's safetensors or null, "held_out": path of an NPZ (no pickles) with the arrays of
     `dreamer.traces.Trace`, "observation_shape": [O], "action_space": space dict, "config": dict}

runs the validation suite on the untrusted sim and writes one JSON result to stdout:

    {"checks": {name: {"passed": bool, "detail": str}}, "fidelity": `Fidelity.to_dict()` or null (not
     measured), "reasons": [str], "counterexamples": [transition dict, worst first]}

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
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env
from gymnasium.vector.utils import batch_space

from dreamer.artifacts import finite_or_none
from dreamer.sandbox.config import FidelityThresholds, SandboxConfig
from dreamer.sandbox.static import check_source
from dreamer.sim import FuncSim, SimEnv, SimVectorEnv
from dreamer.sim.fidelity import Fidelity, HeldOut, counterexamples, measure_fidelity, predict, seeded_generator
from dreamer.sim.weights import WeightsError, load_weights

CHECKS = ("loads", "spaces", "gymnasium_checker", "shapes_and_dtypes", "rows_independent",
          "deterministic", "finite", "fidelity", "planning")
MAX_DETAIL_CHARS = 4000
ROW_ATOL = 1e-5  # rows_independent tolerance (float32 kernels may differ in the last bits)


@dataclass
class Check:
    """One check's outcome; `reasons` replace the default "NAME failed: <last detail line>"."""

    passed: bool
    detail: str
    reasons: list[str] = field(default_factory=list)


def _random_actions(sim: FuncSim, n: int, seed: int) -> torch.Tensor:
    """(n,) int64 or (n, A) float32 actions drawn uniformly from the sim's action space."""
    space = batch_space(sim.action_space, n)
    space.seed(seed)
    return sim.action_tensor(space.sample(), torch.device("cpu"))


def _describe(tensor) -> str:
    if not isinstance(tensor, torch.Tensor):
        return f"a {type(tensor).__name__}, not a tensor"
    return f"shape {tuple(tensor.shape)} {tensor.dtype}"


def check_loads(source: str, name: str, weights_file: str | None, max_weights_mb: float) -> tuple[Check, FuncSim | None]:
    violations = check_source(source, name)
    if violations:
        lines = [f"{name}:{v.line}:{v.col}: {v.message}" for v in violations]
        return Check(False, "unsafe source:\n" + "\n".join(lines), [f"unsafe source: {line}" for line in lines]), None
    try:
        weights = None if weights_file is None else load_weights(weights_file, max_mb=max_weights_mb)
    except WeightsError as error:
        return Check(False, f"weights: {error}", [f"weights: {error}"]), None
    sim = FuncSim.from_source(source, name=name, weights=weights)
    with_weights = "" if weights is None else f", {len(weights)} weight tensors ({sum(t.numel() for t in weights.values()):,} numbers)"
    return Check(True, f"observation {sim.observation_space}, action {sim.action_space}, "
                       f"max_episode_steps {sim.max_episode_steps}{with_weights}"), sim


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
    rng = seeded_generator(config.seed)
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
    if sim.uncertainty is not None:
        uncertainty = sim.uncertainty(state, action, rng)
        expect("uncertainty", uncertainty, (n,), torch.float32)
        if isinstance(uncertainty, torch.Tensor) and not bool((uncertainty >= 0).all()):  # NaN fails too
            problems.append(f"uncertainty must be >= 0, got {uncertainty.min().item()}")
    functions = "all six functions" if sim.uncertainty is not None else "all five functions"
    return Check(not problems, "; ".join(problems) or f"{functions} keep the contract on a batch of {n}")


def check_rows_independent(sim: FuncSim, held_out: HeldOut, config: SandboxConfig) -> Check:
    """transition/reward/terminal of a row depend on that row alone: with the same rng seed, changing
    the other rows of a batch leaves its outputs unchanged. Draws from `rng` are allowed (the same
    seed and shape give each row the same draws); reductions or indexing across the batch are not."""
    half = min(config.batch_check_size, len(held_out.obs)) // 2
    state, action = held_out.obs[:2 * half], sim.action_tensor(held_out.action[:2 * half], torch.device("cpu"))
    changed_state, changed_action = state.clone(), action.clone()
    changed_state[:half], changed_action[:half] = state[half:], action[half:]

    def outputs(state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rng = seeded_generator(config.seed)
        next_state = sim.transition(state, action, rng)
        return next_state, sim.reward(state, action, next_state, rng), sim.terminal(next_state, rng)

    for function, first, second in zip(("transition", "reward", "terminal"), outputs(state, action),
                                       outputs(changed_state, changed_action)):
        same = torch.isclose(first[half:].double(), second[half:].double(), rtol=ROW_ATOL, atol=ROW_ATOL,
                             equal_nan=True).reshape(half, -1).all(-1)
        if not same.all():
            row = half + int(torch.nonzero(~same)[0])
            return Check(False, f"{function} of held-out row {row} changed ({first[row].tolist()} -> "
                                f"{second[row].tolist()}) when only the other rows of the batch of {2 * half} changed")
    return Check(True, f"the outputs of {half} held-out rows do not depend on the other rows of their batch")


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


def planning(sim: FuncSim, held_out: HeldOut, config: SandboxConfig) -> tuple[Check, float, float]:
    """CEM over open-loop action sequences from held-out episode starts, inside the sim; it must
    reach the best `horizon`-step return the trace shows from an episode start. Returns the check,
    the best planned return and that best real return."""
    plan, h = config.planning, held_out
    first = torch.ones(len(h.episode), dtype=torch.bool)
    first[1:] = h.episode[1:] != h.episode[:-1]
    start_rows = torch.nonzero(first).flatten()
    real_best = max(float(h.reward[row:row + plan.horizon][h.episode[row:row + plan.horizon] == h.episode[row]].sum())
                    for row in start_rows.tolist())
    starts = h.obs[start_rows[:plan.starts]]
    n, samples, horizon = len(starts), plan.samples, plan.horizon
    rng = seeded_generator(config.seed)
    space = sim.action_space
    discrete = isinstance(space, spaces.Discrete)
    if discrete:
        probs = torch.full((n, horizon, int(space.n)), 1.0 / int(space.n))
    else:
        low, high = (torch.as_tensor(bound, dtype=torch.float32) for bound in (space.low, space.high))
        low, high = torch.clamp(low, min=-1e3), torch.clamp(high, max=1e3)
        mean = ((low + high) / 2).expand(n, horizon, -1).clone()
        std = ((high - low) / 2).expand(n, horizon, -1).clone()
    elites = max(2, int(samples * plan.elite_fraction))
    best = torch.full((n,), -math.inf, dtype=torch.float64)
    for _ in range(max(plan.iterations, 1)):
        if discrete:
            actions = torch.multinomial(probs.repeat_interleave(samples, 0).reshape(-1, int(space.n)), 1,
                                        generator=rng).reshape(n * samples, horizon)
        else:
            noise = torch.randn(n * samples, horizon, mean.shape[-1], generator=rng)
            actions = torch.clamp(mean.repeat_interleave(samples, 0) + std.repeat_interleave(samples, 0) * noise,
                                  low, high)
        state = starts.repeat_interleave(samples, 0)
        returns = torch.zeros(n * samples, dtype=torch.float64)
        alive = torch.ones(n * samples, dtype=torch.bool)
        for t in range(horizon):
            next_state = sim.transition(state, actions[:, t], rng)
            returns += torch.where(alive, sim.reward(state, actions[:, t], next_state, rng).double(), 0.0)
            alive &= ~sim.terminal(next_state, rng).bool()
            state = next_state
        returns = torch.nan_to_num(returns, nan=-math.inf).reshape(n, samples)
        best = torch.maximum(best, returns.amax(1))
        top = returns.topk(elites, dim=1).indices  # (n, elites)
        chosen = actions.reshape(n, samples, horizon, *actions.shape[2:])[torch.arange(n)[:, None], top]
        if discrete:
            counts = torch.nn.functional.one_hot(chosen, int(space.n)).double().mean(1)
            probs = (plan.smoothing * probs + (1 - plan.smoothing) * counts).float()
        else:
            mean, std = chosen.mean(1), chosen.std(1) + 1e-3
    planned = float(best.max())
    needed = real_best - plan.tolerance * max(1.0, abs(real_best))
    detail = (f"best planned {horizon}-step return {planned:.4g} from {n} held-out starts; "
              f"the trace reached {real_best:.4g}, so at least {needed:.4g} is needed")
    if not planned >= needed:
        return Check(False, detail, [f"planning: {detail}"]), planned, real_best
    return Check(True, detail), planned, real_best


def fidelity_failures(f: Fidelity, t: FidelityThresholds) -> list[str]:
    """One reason per threshold the figures miss (NaN misses every threshold; None is unmeasured)."""
    limits = (("mean obs_nrmse", f.obs_nrmse_mean, "max_obs_nrmse", t.max_obs_nrmse, "above"),
              ("accuracy", f.accuracy, "min_accuracy", t.min_accuracy, "below"),
              ("reward_nrmse", f.reward_nrmse, "max_reward_nrmse", t.max_reward_nrmse, "above"),
              ("termination_accuracy", f.termination_accuracy, "min_termination_accuracy",
               t.min_termination_accuracy, "below"),
              ("termination_recall", f.termination_recall, "min_termination_recall", t.min_termination_recall, "below"),
              (f"kstep_nrmse (k={f.kstep})", f.kstep_nrmse, "max_kstep_nrmse", t.max_kstep_nrmse, "above"))
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
        held_out = HeldOut.from_arrays(arrays, request["observation_shape"], request["action_space"])
    checks: dict[str, Check] = {}
    measured: Fidelity | None = None  # set by the fidelity check, its planning figures by the planning check

    def guarded(name: str, run: Callable[[], Check]) -> None:
        try:
            checks[name] = run()
        except Exception:  # MemoryError, RecursionError, anything the sim raises
            checks[name] = Check(False, traceback.format_exc().rstrip()[-MAX_DETAIL_CHARS:])

    sim = None

    def loads() -> Check:
        nonlocal sim
        check, sim = check_loads(request["source"], request["name"], request.get("weights"), config.max_weights_mb)
        return check

    examples: list[dict] = []

    def fidelity() -> Check:
        nonlocal measured
        predictions = predict(sim, held_out, config.seed)
        measured = f = measure_fidelity(sim, held_out, predictions, config.tolerances, config.kstep, config.seed)
        examples.extend(counterexamples(held_out, predictions, config.tolerances, config.counterexamples))
        failures = fidelity_failures(f, config.thresholds)
        summary = (f"obs_nrmse_mean {f.obs_nrmse_mean!r}, reward_nrmse {f.reward_nrmse!r}, termination_accuracy "
                   f"{f.termination_accuracy!r}, accuracy {f.accuracy!r}, kstep_nrmse {f.kstep_nrmse!r}")
        return Check(not failures, "; ".join(failures) or f"within thresholds: {summary}", failures)

    def planned() -> Check:
        if config.planning.horizon == 0:
            return Check(True, "off (sandbox.planning.horizon = 0)")
        nonlocal measured
        check, planned_return, real_best = planning(sim, held_out, config)
        if measured is not None:  # None when the fidelity check raised
            measured = replace(measured, planning_horizon=config.planning.horizon, planning_return=planned_return,
                               planning_real_best=real_best)
        return check

    suite = {"spaces": check_spaces, "gymnasium_checker": check_gymnasium, "shapes_and_dtypes": check_shapes,
             "rows_independent": check_rows_independent, "deterministic": check_deterministic,
             "finite": check_finite}
    guarded("loads", loads)
    with torch.no_grad():
        for name in CHECKS[1:]:
            if sim is None:
                checks[name] = Check(False, "not run: the sim did not load")
            else:
                guarded(name, {"fidelity": fidelity, "planning": planned}.get(
                    name, lambda: suite[name](sim, held_out, config)))
    ran = checks if sim is not None else {"loads": checks["loads"]}  # no reasons for checks not run
    reasons = [reason for name, check in ran.items() if not check.passed
               for reason in (check.reasons or [f"{name} failed: {check.detail.strip().splitlines()[-1][:300]}"])]
    return {"checks": {name: {"passed": c.passed, "detail": c.detail} for name, c in checks.items()},
            "fidelity": None if measured is None else measured.to_dict(), "reasons": reasons,
            "counterexamples": finite_or_none(examples)}


def main() -> None:
    result_fd = os.dup(1)
    os.dup2(2, 1)  # whatever the sim or a library prints lands in stderr, not in the result
    torch.set_num_threads(1)
    request = json.loads(sys.stdin.read())
    result = run_suite(request)
    with os.fdopen(result_fd, "w") as out:
        json.dump(result, out, allow_nan=False)
