import gymnasium
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dreamer import load_policy
from dreamer.config import build
from dreamer.rl import MLPPolicy, MLPPolicyConfig, PPOConfig, TorchVectorEnv, evaluate_policy, train_ppo
from dreamer.sim import FuncSim, SimVectorEnv

POLICY = MLPPolicyConfig(hidden_sizes=[32, 32], activation="Tanh", initial_log_std=0.0)


def ppo_config(**overrides) -> PPOConfig:
    values = OmegaConf.to_container(OmegaConf.load("conf/algo/ppo.yaml"))
    return build(PPOConfig, {**values, **overrides}, "algo", ignore=("name", "progress"))


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_saved_policy_loads_and_acts_validly_on_one_obs_or_a_batch(tmp_path, env_id):
    env = gymnasium.make(env_id)
    policy = MLPPolicy(env.observation_space, env.action_space, POLICY)
    policy.set_obs_stats(np.ones(env.observation_space.shape), np.full(env.observation_space.shape, 2.0))
    policy.save(tmp_path / "policy")
    loaded = load_policy(tmp_path)  # a run dir holding policy/ works too
    obs = np.stack([env.observation_space.sample() for _ in range(16)])
    np.testing.assert_array_equal(loaded.act(obs), policy.act(obs))
    assert all(env.action_space.contains(a) for a in loaded.act(obs))
    assert env.action_space.contains(loaded.act(obs[0]))
    torch.testing.assert_close(loaded.obs_std, policy.obs_std)


def test_ppo_learns_cartpole_in_the_exact_sim(cartpole_source):
    torch.manual_seed(0)
    sim = FuncSim.from_source(cartpole_source)
    policy = MLPPolicy(sim.observation_space, sim.action_space, POLICY)
    result = train_ppo(policy, SimVectorEnv(sim, 64), ppo_config(num_envs=64, total_steps=150_000), seed=0, progress=False)
    first, last = result.history[0]["episode_return_mean"], result.episode_return_mean
    assert last > 150 and last > 5 * first
    returns = evaluate_policy(policy, gymnasium.make("CartPole-v1"), episodes=5, seed=0)
    assert returns.mean() > 150  # the exact sim's policy transfers to the real env


def test_ppo_runs_on_real_gymnasium_envs_with_final_obs_bootstrap():
    env_fns = [lambda: gymnasium.make("Pendulum-v1")] * 4
    envs = TorchVectorEnv(env_fns, device="cpu")
    policy = MLPPolicy(envs.single_observation_space, envs.single_action_space, POLICY)
    result = train_ppo(policy, envs, ppo_config(num_envs=4, num_steps=100, total_steps=800), seed=0, progress=False)
    assert result.env_steps == 800 and result.episodes == 4  # 200-step episodes, truncated
    assert np.isfinite(result.history[-1]["value_loss"])
