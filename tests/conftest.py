from pathlib import Path

import gymnasium
import pytest
from omegaconf import OmegaConf

from dreamer.sandbox import SandboxConfig
from dreamer.traces import Trace, collect_trace

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def cartpole_source() -> str:
    """CartPole-v1's exact physics in the sim contract."""
    return (FIXTURES / "cartpole_sim.py").read_text()


@pytest.fixture(scope="session")
def held_out() -> Trace:
    """600 random-action steps of the real CartPole-v1 (seed 0): held-out data for the sandbox."""
    return collect_trace(gymnasium.make("CartPole-v1"), 600, seed=0)


@pytest.fixture(scope="session")
def config() -> SandboxConfig:
    """The sandbox as `conf/sandbox/default.yaml` sets it."""
    return SandboxConfig.from_dict(OmegaConf.load(ROOT / "conf" / "sandbox" / "default.yaml"))
