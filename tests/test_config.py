import pytest
from omegaconf import OmegaConf

from dreamer.config import build
from dreamer.rl import PPOConfig

ALGO = OmegaConf.to_container(OmegaConf.load("conf/algo/ppo.yaml"))


def ppo(**overrides) -> PPOConfig:
    return build(PPOConfig, {**ALGO, **overrides}, "algo", ignore=("name", "progress"))


def test_the_shipped_algo_config_builds():
    assert ppo().num_envs == ALGO["num_envs"]


def test_unknown_and_missing_keys_are_named_with_their_group():
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['algo.learning_rat'\]; allowed keys: \[.*'learning_rate'"):
        ppo(learning_rat=1e-3)
    values = {k: v for k, v in ALGO.items() if k != "gamma"}
    with pytest.raises(ValueError, match=r"missing config key\(s\) \['algo.gamma'\]"):
        build(PPOConfig, values, "algo", ignore=("name", "progress"))


@pytest.mark.parametrize("overrides, message", [
    ({"num_envs": 0}, "algo: num_envs must be a positive int, got 0"),
    ({"total_steps": -5}, "algo: total_steps must be a positive int, got -5"),
    ({"num_minibatches": 3}, "must be divisible by num_minibatches = 3"),
])
def test_impossible_values_are_refused_with_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        ppo(**overrides)
