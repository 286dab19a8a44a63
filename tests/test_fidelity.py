"""How the sandbox scores a candidate: per-part accuracy with tolerances, counterexamples, row
independence (with randomness allowed) and the planning check."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dreamer.sandbox import SandboxConfig, SandboxReport, validate
from dreamer.sim.fidelity import Fidelity

ROOT = Path(__file__).resolve().parent.parent
CARTPOLE = (ROOT / "tests" / "fixtures" / "cartpole_sim.py").read_text()
TERMINAL = "    return (state[:, 0].abs() > X_LIMIT) | (state[:, 2].abs() > THETA_LIMIT)"
REWARD = "    return torch.ones(state.shape[0], device=state.device)"
UNBIND = "    x, x_dot, theta, theta_dot = state.unbind(-1)\n"


def edit(*pairs: str) -> str:
    source = CARTPOLE
    for old, new in zip(pairs[::2], pairs[1::2]):
        assert source.count(old) == 1, old
        source = source.replace(old, new)
    return source


def test_accuracy_is_reported_per_part_with_its_tolerances(held_out, config):
    strict = dataclasses.replace(config, thresholds=dataclasses.replace(config.thresholds, min_accuracy=0.99))
    report = validate(edit(TERMINAL, "    return state[:, 2].abs() > 0.5"), held_out, strict, name="late_end")
    f = report.fidelity
    assert not report.accepted
    assert f.state_accuracy == 1.0 and f.reward_accuracy == 1.0
    assert f.accuracy == f.termination_accuracy < 1.0
    assert (f.state_tolerance, f.reward_tolerance) == (config.tolerances.state, config.tolerances.reward)
    assert f"accuracy = {f.accuracy:.4g} is below min_accuracy = 0.99" in \
        " ".join(report.reasons)


def test_termination_is_reported_with_its_counts_precision_and_recall(held_out, config):
    """A sim that ends episodes too early (|θ| > 0.1 instead of 0.21) catches the real terminations and calls many
    steps terminal that were not: a low precision the accuracy alone hides, counted in held-out steps."""
    import numpy as np

    report = validate(edit(TERMINAL, "    return state[:, 2].abs() > 0.1"), held_out, config, name="early_end")
    f, real = report.fidelity, held_out.terminated.astype(bool)
    called = np.abs(held_out.next_obs[:, 2]) > 0.1
    assert f.terminations == real.sum() > 0 and f.predicted_terminations == called.sum()
    assert f.termination_recall == pytest.approx(called[real].mean())
    assert f.termination_precision == pytest.approx(real[called].mean()) and f.termination_precision < 0.5
    assert Fidelity.from_dict(json.loads(json.dumps(f.to_dict()))) == f


def test_a_reward_that_follows_the_termination_is_scored_where_the_termination_is_right(held_out, config):
    """A goal's reward (here 0 at the terminal step, 1 elsewhere) follows the sim's own termination: an early
    termination is the termination figures' error and not the reward's too; a wrong reward where the
    termination is right is the reward's."""
    import numpy as np

    goal = dataclasses.replace(held_out, reward=np.where(held_out.terminated, 0.0, 1.0).astype(np.float32))
    follows = edit(REWARD, "    return 1.0 - terminal(next_state, rng).float()", TERMINAL, "    return state[:, 2].abs() > 0.1")
    f = validate(follows, goal, config, name="early_goal").fidelity
    assert f.termination_precision < 0.5 and f.accuracy == f.termination_accuracy < 1.0
    assert f.reward_nrmse == 0.0 and f.reward_accuracy == 1.0
    f = validate(CARTPOLE, goal, config, name="no_goal").fidelity  # right termination, reward 1 at the goal too
    assert f.termination_accuracy == 1.0
    assert f.reward_nrmse > 0.9 and f.reward_accuracy == pytest.approx(1 - goal.terminated.mean())


def test_a_sim_that_misses_most_terminations_is_rejected_for_its_recall(held_out, config):
    """Terminal steps are rare: a sim that never ends an episode keeps a high termination accuracy; its recall
    (0 of the real terminations) is what refutes it."""
    lenient = dataclasses.replace(config, thresholds=dataclasses.replace(config.thresholds, min_termination_accuracy=0.9))
    never = "    return torch.zeros(state.shape[0], dtype=torch.bool, device=state.device)"
    report = validate(edit(TERMINAL, never), held_out, lenient, name="endless")
    assert report.fidelity.termination_accuracy > 0.9 and report.fidelity.termination_recall == 0.0
    assert report.reasons == ["fidelity: termination_recall = 0 is below min_termination_recall = 0.5"]


def test_counterexamples_are_real_held_out_transitions_of_each_kind_of_error(held_out, config):
    source = edit(TERMINAL, "    return state[:, 2].abs() > 0.5", "GRAVITY = 9.8", "GRAVITY = 3.0")
    report = validate(source, held_out, config, name="two_errors")
    examples = report.counterexamples
    assert len(examples) == config.counterexamples
    assert {"state", "termination"} <= {kind for example in examples for kind in example["wrong"]}
    assert "state" in examples[0]["wrong"]  # the worst state error comes first, then the kinds alternate
    for example in examples:
        i = example["index"]
        assert example["obs"] == pytest.approx(held_out.obs[i].tolist(), rel=1e-5, abs=1e-7)
        assert example["next_obs"] == pytest.approx(held_out.next_obs[i].tolist(), rel=1e-5, abs=1e-7)
        assert example["action"] == int(held_out.action[i]) and example["terminated"] == bool(held_out.terminated[i])
        if "termination" in example["wrong"]:
            assert example["predicted_terminated"] != example["terminated"]


def test_a_right_sim_has_no_counterexamples(held_out, config):
    report = validate(CARTPOLE, held_out, config, name="cartpole")
    assert report.accepted and report.counterexamples == [] and report.fidelity.accuracy == 1.0


def test_a_sim_that_looks_across_the_batch_fails_rows_independent(held_out, config):
    report = validate(edit(UNBIND, "    state = state - state.mean(0) + state\n" + UNBIND), held_out, config, name="leak")
    assert not report.checks["rows_independent"]["passed"]
    assert any(reason.startswith("rows_independent failed: transition of held-out row") for reason in report.reasons)


def test_a_sim_that_draws_noise_from_rng_is_accepted(held_out, config):
    noisy = edit(UNBIND, "    noise = 1e-6 * torch.randn(state.shape, generator=rng, device=rng.device)\n"
                         "    x, x_dot, theta, theta_dot = (state + noise).unbind(-1)\n")
    report = validate(noisy, held_out, config, name="noisy")
    assert report.accepted, report.reasons
    assert report.checks["rows_independent"]["passed"] and report.checks["deterministic"]["passed"]


def test_planning_check_needs_the_reward_the_trace_reached(held_out, config):
    planning = dataclasses.replace(config, planning=dataclasses.replace(config.planning, horizon=30))
    good = validate(CARTPOLE, held_out, planning, name="cartpole")
    assert good.accepted and good.checks["planning"]["passed"]
    assert good.fidelity.planning_return >= good.fidelity.planning_real_best > 20
    assert good.fidelity.planning_horizon == 30
    # Next states 10x too large: every planned episode ends after a step or two.
    doomed = validate(edit("    return torch.stack(\n", "    return 10.0 * torch.stack(\n"), held_out, planning,
                      name="doomed")
    assert not doomed.checks["planning"]["passed"]
    assert any(reason.startswith("planning: best planned 30-step return") for reason in doomed.reasons)
    assert validate(CARTPOLE, held_out, config, name="off").checks["planning"]["detail"].startswith("off")


def test_fidelity_round_trips_through_json_and_a_wrong_key_is_named(held_out, config, tmp_path):
    report = validate(CARTPOLE, held_out, config, name="cartpole")
    f = report.fidelity
    assert Fidelity.from_dict(f.to_dict()) == f
    assert Fidelity.from_dict(json.loads(json.dumps(f.to_dict(), allow_nan=False))) == f
    report.save(tmp_path / "report.json")
    assert SandboxReport.load(tmp_path / "report.json") == report
    assert dataclasses.replace(f, obs_nrmse_mean=math.nan, obs_nrmse=(math.inf, 0.5)).to_dict()["obs_nrmse"] == [None, 0.5]
    with pytest.raises(ValueError, match=re.escape("unknown fidelity figure(s) ['obs_rmse']")):
        Fidelity.from_dict({**f.to_dict(), "obs_rmse": 0.1})
    with pytest.raises(ValueError, match=re.escape("missing fidelity figure(s) ['kstep']")):
        Fidelity.from_dict({key: value for key, value in f.to_dict().items() if key != "kstep"})


@pytest.mark.parametrize("key, value, message", [
    ("elite_fraction", 0.0, "sandbox.planning.elite_fraction must be in (0, 1], got 0.0"),
    ("smoothing", 1.0, "sandbox.planning.smoothing must be in [0, 1), got 1.0"),
])
def test_the_planning_search_settings_are_checked(key, value, message):
    values = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "sandbox" / "default.yaml"))
    values["planning"][key] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        SandboxConfig.from_dict(values)
