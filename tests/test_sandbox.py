"""The sandbox: static allowlist, worker checks on good and broken sims, process limits, reports, load_sim."""

from __future__ import annotations

import dataclasses
import json
import resource
from pathlib import Path

import pytest
import torch

from dreamer.sandbox import (
    SandboxConfig,
    SandboxReport,
    UnsafeSourceError,
    check_source,
    load_sim,
    validate,
)
from dreamer.sandbox.isolation import minimal_env

ROOT = Path(__file__).resolve().parent.parent
CARTPOLE = (ROOT / "tests" / "fixtures" / "cartpole_sim.py").read_text()
TRANSITION_BODY = "    x, x_dot, theta, theta_dot = state.unbind(-1)\n"
OBSERVATION_BODY = "    return state\n"


def edit(old: str, new: str) -> str:
    """The fixture sim with `old` (which must occur exactly once) replaced by `new`."""
    assert CARTPOLE.count(old) == 1, old
    return CARTPOLE.replace(old, new)


@pytest.fixture(scope="module")
def accepted(held_out, config) -> SandboxReport:
    return validate(CARTPOLE, held_out, config, name="cartpole")


def failed_checks(report: SandboxReport) -> set[str]:
    return {name for name, check in report.checks.items() if not check["passed"]}


# --- accepted ------------------------------------------------------------------------------------


def test_fixture_sim_is_accepted_with_near_zero_error(accepted):
    assert accepted.accepted, accepted.reasons
    assert accepted.reasons == []
    assert set(accepted.checks) == {"static", "loads", "spaces", "gymnasium_checker", "shapes_and_dtypes",
                                    "rows_independent", "deterministic", "finite", "fidelity", "planning"}
    assert failed_checks(accepted) == set()
    assert accepted.fidelity.obs_nrmse_mean < 1e-4
    assert len(accepted.fidelity.obs_nrmse) == 4
    assert accepted.fidelity.termination_accuracy == 1.0
    assert accepted.fidelity.termination_recall == 1.0
    assert accepted.fidelity.reward_nrmse < 1e-6
    assert accepted.fidelity.kstep_windows > 0 and accepted.fidelity.kstep_nrmse < 1e-4
    assert accepted.isolation.startswith(("bwrap (", "subprocess (")), accepted.isolation
    assert "rlimits (AS 4096 MB, CPU 120 s, NPROC +64" in accepted.isolation
    assert accepted.name == "cartpole"


def test_report_save_load_roundtrip(accepted, tmp_path):
    path = tmp_path / "runs" / "report.json"
    accepted.save(path)
    assert SandboxReport.load(path) == accepted
    assert json.loads(path.read_text())["accepted"] is True
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temp file left behind


def test_report_json_from_before_attempts_loads(accepted, held_out, config, tmp_path):
    static_only = validate("import os\n", held_out, config, name="unsafe")
    for report, attempts in ((accepted, 1), (static_only, 0)):
        old = {key: value for key, value in report.to_dict().items() if key != "attempts"}
        (tmp_path / "report.json").write_text(json.dumps(old))
        assert SandboxReport.load(tmp_path / "report.json") == dataclasses.replace(report, attempts=attempts)


# --- rejected before any process starts (every hostile case: test_sandbox_hostile.py) ---------------

def test_syntax_error_names_its_line(held_out, config):
    line = len(CARTPOLE.splitlines()) + 2
    report = validate(CARTPOLE + "\ndef broken(:\n    pass\n", held_out, config, name="bad")
    assert not report.accepted
    assert any(f"bad:{line}:" in reason and "syntax error" in reason for reason in report.reasons), report.reasons


@pytest.mark.parametrize("source, message", [
    ("import torch\ndef f():\n    return torch.os.system('true')\n", "reaches forbidden module `os`"),
    ("import torch\ndef f():\n    return F.torch.os\nF = torch.nn.functional\n", "reaches forbidden module `os`"),
    ("import torch\ndef f(x):\n    return torch.nn.functional.torch.load(x)\n", "attribute `.load`"),
    ("from torch import utils\n", "`torch.utils` is forbidden"),
    ("import torch.utils.data\n", "import of `torch.utils.data`"),
    ("import torch\ndef f():\n    m = [torch]\n    return m\n", "module `torch` may only be used"),
    ("import torch\ndef f(rng):\n    torch.manual_seed(0)\n", "attribute `.manual_seed`"),
    ("import torch\nDTYPE = torch.set_default_dtype(torch.float64)\n", "attribute `.set_default_dtype`"),
    ("def f(x):\n    return x.cuda()\n", "attribute `.cuda`"),
    ("def f(x):\n    return '{0.__class__}'.format(x)\n", "attribute `.format`"),
    ("def f(x):\n    return x.__class__\n", "attribute `.__class__`"),
    ("def f(x):\n    return type(x)\n", "name `type` is forbidden"),
    ("class A:\n    pass\n", "`class` is not allowed"),
    ("def f(x):\n    with x:\n        pass\n", "`with` is not allowed"),
    ("def f():\n    global y\n", "`global` is not allowed"),
    ("from torch import *\n", "import *"),
    ("_hidden = 1\n", "name `_hidden` starts with `_`"),
    ("print('hi')\n", "module level allows only"),
])
def test_check_source_flags(source, message):
    violations = check_source(source, "sim.py")
    assert any(message in v.message for v in violations), violations


def test_check_source_allows_plain_sim_code():
    source = ("import math\nimport torch\nimport torch.nn.functional as G\nfrom torch import nn\n"
              "F = torch.nn.functional\nSCALE = 2 * math.pi\nsquare = lambda x: x * x\n\n"
              "def f(x):\n    for _ in range(3):\n        x = F.relu(x) + G.relu(x) + nn.functional.relu(x)\n"
              "    return torch.clamp(square(x), -SCALE, SCALE)\n")
    assert check_source(source, "sim.py") == []
    assert check_source(CARTPOLE, "cartpole.py") == []


def test_unsafe_source_error_lists_every_violation():
    source = "import os\ndef f():\n    return open('x')\n"
    error = UnsafeSourceError("sim.py", check_source(source, "sim.py"))
    assert "sim.py:1:0: import of `os`" in str(error)
    assert "sim.py:3:11: name `open` is forbidden" in str(error)


# --- rejected by the worker ----------------------------------------------------------------------


def test_infinite_loop_times_out(held_out, config):
    source = edit(TRANSITION_BODY, "    while True:\n        state = state + 0\n" + TRANSITION_BODY)
    report = validate(source, held_out, dataclasses.replace(config, timeout_s=5), name="loop")
    assert not report.accepted
    assert any("timed out after 5 s" in reason for reason in report.reasons), report.reasons
    assert report.seconds < 15


def test_memory_blowup_is_contained(held_out, config):
    # transition asks for 200 GB (no machine gives that); initial reserves 6 GB of untouched
    # address space, which an unlimited process gets and only the worker's RLIMIT_AS refuses.
    assert config.memory_mb * 2**20 < 6e9
    limits_before = resource.getrlimit(resource.RLIMIT_AS)
    source = edit(TRANSITION_BODY, "    big = torch.zeros(50_000_000_000)\n" + TRANSITION_BODY)
    source = source.replace("def initial(rng, n):\n", "def initial(rng, n):\n    big = torch.empty(1_500_000_000)\n")
    report = validate(source, held_out, config, name="hog")
    assert not report.accepted
    assert "allocate 200000000000 bytes" in report.checks["rows_independent"]["detail"]
    assert "allocate 6000000000 bytes" in report.checks["finite"]["detail"]
    assert any("allocate" in reason for reason in report.reasons), report.reasons
    assert resource.getrlimit(resource.RLIMIT_AS) == limits_before  # the limits were the worker's only
    assert torch.ones(1000).sum().item() == 1000.0


def test_nan_outputs_fail_finite(held_out, config):
    source = edit("    return torch.stack(", "    return math.nan * torch.stack(")
    report = validate(source, held_out, config, name="nan")
    assert not report.accepted
    assert report.checks["finite"]["passed"] is False
    assert any(reason.startswith("finite failed: non-finite obs") for reason in report.reasons), report.reasons


def test_a_stochastic_sim_passes_every_check_its_noise_is_drawn_from_the_rng(held_out, config):
    """A sim that draws noise from `rng` (as a learned ensemble's would) is neither batch-dependent nor
    irreproducible: the same seed gives every row the same draws."""
    noisy = edit("    return torch.stack(",
                 "    return 1e-6 * torch.randn(state.shape, generator=rng, device=state.device) + torch.stack(")
    report = validate(noisy, held_out, config, name="noisy")
    assert report.accepted, report.reasons
    assert report.checks["rows_independent"]["passed"] and report.checks["deterministic"]["passed"]


def test_wrong_physics_fails_fidelity_with_the_figure(held_out, config):
    report = validate(edit("FORCE_MAG = 10.0", "FORCE_MAG = -10.0"), held_out, config, name="backwards")
    assert not report.accepted
    assert failed_checks(report) == {"fidelity"}
    assert report.fidelity.obs_nrmse_mean > config.thresholds.max_obs_nrmse
    assert any(reason.startswith("fidelity: mean obs_nrmse = ") and f"max_obs_nrmse = {config.thresholds.max_obs_nrmse}" in reason
               for reason in report.reasons), report.reasons
    assert any("kstep_nrmse (k=10)" in reason for reason in report.reasons), report.reasons


def test_a_subtly_wrong_constant_fails_the_open_loop_figure(held_out, config):
    report = validate(edit("GRAVITY = 9.8", "GRAVITY = 3.0"), held_out, config, name="low_gravity")
    assert not report.accepted
    assert report.fidelity.kstep_nrmse > config.thresholds.max_kstep_nrmse
    assert any("kstep_nrmse (k=10)" in reason for reason in report.reasons), report.reasons


def test_wrong_shapes_fail(held_out, config):
    source = edit("    return torch.ones(state.shape[0], device=state.device)\n",
                  "    return torch.ones(state.shape[0], 1, device=state.device)\n")
    report = validate(source, held_out, config, name="shapes")
    assert not report.accepted
    assert report.checks["shapes_and_dtypes"]["passed"] is False
    assert any("reward returned shape (64, 1)" in reason for reason in report.reasons), report.reasons


# --- config, environment, loading ----------------------------------------------------------------


def test_config_names_unknown_and_missing_keys(config):
    values = config.to_dict()
    assert SandboxConfig.from_dict(values) == config
    values["colour"] = "red"
    del values["kstep"]
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['sandbox.colour'\]; allowed keys: \[.*'kstep'"):
        SandboxConfig.from_dict(values)
    del values["colour"]
    with pytest.raises(ValueError, match=r"missing config key\(s\) \['sandbox.kstep'\]"):
        SandboxConfig.from_dict(values)
    values = config.to_dict()
    del values["thresholds"]["max_kstep_nrmse"]
    with pytest.raises(ValueError, match=r"missing config key\(s\) \['sandbox.thresholds.max_kstep_nrmse'\]"):
        SandboxConfig.from_dict(values)


def test_worker_env_drops_secrets(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-hidden-value")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp-hidden-value")
    env = minimal_env(tmp_path)
    assert "hidden-value" not in json.dumps(env)
    assert env["HOME"] == str(tmp_path)
    assert (Path(env["PYTHONPATH"]) / "dreamer" / "__init__.py").exists()


def test_load_sim_from_run_dir(tmp_path):
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "cartpole.py").write_text(CARTPOLE)
    sim = load_sim(tmp_path)
    assert sim.name == "cartpole"
    assert sim.transition(torch.zeros(3, 4), torch.ones(3, dtype=torch.long), torch.Generator()).shape == (3, 4)
    (tmp_path / "env" / "other.py").write_text(CARTPOLE)
    with pytest.raises(ValueError, match="exactly one env/\\*.py"):
        load_sim(tmp_path)


def test_load_sim_refuses_rejected_and_unsafe_sims(tmp_path):
    path = tmp_path / "sim.py"
    path.write_text(CARTPOLE)
    report = {"accepted": False, "reasons": ["fidelity: mean obs_nrmse = 0.9 is above max_obs_nrmse = 0.05"]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    with pytest.raises(ValueError, match="report.json rejected this sim") as error:
        load_sim(path)
    assert "mean obs_nrmse = 0.9" in str(error.value)
    (tmp_path / "report.json").write_text(json.dumps({"accepted": True, "reasons": []}))
    assert load_sim(path).name == "sim"
    path.write_text(edit("import math\n", "import os\nimport math\n"))
    with pytest.raises(UnsafeSourceError, match=f"{path}:3:0: import of `os`"):
        load_sim(path)
