from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def cartpole_source() -> str:
    """CartPole-v1's exact physics in the sim contract."""
    return (FIXTURES / "cartpole_sim.py").read_text()
