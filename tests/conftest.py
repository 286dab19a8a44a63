import os
import subprocess
import sys
from pathlib import Path

import gymnasium
import pytest
import torch
from omegaconf import OmegaConf

from dreamer.sandbox import SandboxConfig
from dreamer.sandbox.isolation import bwrap_problem
from dreamer.traces import Trace, collect_trace

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"

if "PYTEST_XDIST_WORKER" in os.environ:
    # One torch thread per pytest-xdist worker, here and in the processes the tests start (runs, sandbox workers,
    # notebook kernels): torch's default of a thread per core, in two workers on two cores, leaves each parallel op
    # waiting on the other worker's (the default run's test took more than 9 minutes instead of 2).
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cartpole_source() -> str:
    """CartPole-v1's exact physics in the sim contract."""
    return (FIXTURES / "cartpole_sim.py").read_text()


@pytest.fixture(scope="session")
def held_out() -> Trace:
    """600 random-action steps of the real CartPole-v1 (seed 0): held-out data for the sandbox."""
    return collect_trace(gymnasium.make("CartPole-v1"), 600, seed=0)


@pytest.fixture(params=["bwrap", "rlimits"])
def level(request) -> str:
    """Each isolation level of the sandbox; bwrap where it works on this machine (CI installs it)."""
    if request.param == "bwrap" and bwrap_problem() is not None:
        pytest.skip(f"bubblewrap does not work on this machine: {bwrap_problem()}")
    return request.param


@pytest.fixture(scope="session")
def config() -> SandboxConfig:
    """The sandbox as `conf/sandbox/default.yaml` sets it."""
    return SandboxConfig.from_dict(OmegaConf.load(ROOT / "conf" / "sandbox" / "default.yaml"))


def run_module(module: str, *overrides: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m <module> <overrides>` as a user would type it; returns the finished process."""
    return subprocess.run([sys.executable, "-m", module, *overrides], capture_output=True, text=True, timeout=600,
                          cwd=cwd)


# Tiny runs step their sims eagerly: a compile (seconds) costs more than it saves in a few thousand steps.
TINY_DREAM = ["logger=none", "sim.compile=false", "algo.progress=false", "algo.total_steps=4096", "algo.num_envs=32", "algo.num_steps=32",
              "eval.episodes=2"]
TINY_OPSD = ["logger=none", "sim.compile=false", "algo.progress=false", "algo.num_envs=32", "algo.num_steps=32", "algo.total_steps=2048",
             "family.eval_episodes=8", "opsd.anchors.states=64", "opsd.anchors.batch=32"]


@pytest.fixture(scope="session")
def dream_run(tmp_path_factory) -> Path:
    """A finished tiny `python -m dreamer.train` run (CartPole, two rounds) to read back."""
    run_dir = tmp_path_factory.mktemp("dream") / "run"
    done = run_module("dreamer.train", *TINY_DREAM, "trace.steps_per_round=[400,800]", f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="session")
def self_context_run(tmp_path_factory) -> Path:
    """A finished tiny `+experiment=opsd_self_context` run (seeds 0 and 1, a one-layer model)."""
    run_dir = tmp_path_factory.mktemp("self_context") / "run"
    done = run_module("dreamer.train", "+experiment=opsd_self_context", *TINY_OPSD, "family.pretrain_steps=2048",
                      "family.seeds=[0,1]", "policy.model.hidden_size=16", "policy.model.intermediate_size=32",
                      "policy.model.num_hidden_layers=1", f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir
