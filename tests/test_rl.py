import dataclasses

import gymnasium
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dreamer import load_policy
from dreamer.config import build
from dreamer.rl import MLPPolicy, MLPPolicyConfig, NonFiniteError, PPOConfig, TorchVectorEnv, evaluate_policy, train_ppo
from dreamer.rl.ppo import ReturnScale
from dreamer.sim import FuncSim, SimVectorEnv

POLICY = MLPPolicyConfig(hidden_sizes=[32, 32], activation="Tanh", initial_log_std=0.0)


def ppo_config(**overrides) -> PPOConfig:
    values = OmegaConf.to_container(OmegaConf.load("conf/algo/ppo.yaml"))
    return build(PPOConfig, {**values, **overrides}, "algo", ignore=("kind", "progress"))


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


@pytest.mark.parametrize("normalize_reward", [True, False])
def test_ppo_learns_the_same_whatever_the_reward_units_when_it_normalizes_them(cartpole_source, normalize_reward):
    """CartPole's +1 per step puts the critic's targets near 100; PPO that had reached 500 in a faithful dream then
    fell back to 100-170 on 6 of 16 training seeds. Rewards divided by the running std of the discounted return
    (`algo.normalize_reward`) give the same updates in any reward units; raw rewards do not."""
    def trained(units: float) -> MLPPolicy:
        sim = FuncSim.from_source(cartpole_source.replace("return torch.ones(", f"return {units} * torch.ones("))
        torch.manual_seed(0)
        policy = MLPPolicy(sim.observation_space, sim.action_space, POLICY)
        train_ppo(policy, SimVectorEnv(sim, 16), ppo_config(num_envs=16, num_steps=32, total_steps=16 * 32 * 4,
                                                            normalize_reward=normalize_reward), seed=0, progress=False)
        return policy

    one, hundred = trained(1.0), trained(100.0)
    same = [torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(one.parameters(), hundred.parameters())]
    assert all(same) == normalize_reward


def test_the_return_scale_is_the_std_of_the_discounted_returns_so_far():
    scale = ReturnScale(num_envs=2, gamma=0.5, device=torch.device("cpu"))
    rewards = torch.tensor([[1.0, 4.0], [1.0, 4.0], [1.0, 4.0]])
    done = torch.tensor([[False, False], [False, True], [False, False]])
    for reward, ended in zip(rewards, done):
        scale.observe(reward, ended)
    returns = torch.tensor([1.0, 4.0, 1.5, 6.0, 1.75, 4.0])  # env 1's episode ended at the second step
    torch.testing.assert_close(scale.std(), returns.std(unbiased=False))
    again = ReturnScale(num_envs=2, gamma=0.5, device=torch.device("cpu"))
    again.load_state_dict(scale.state_dict())
    torch.testing.assert_close(again.std(), scale.std())


def test_ppo_runs_on_real_gymnasium_envs_with_final_obs_bootstrap():
    env_fns = [lambda: gymnasium.make("Pendulum-v1")] * 4
    envs = TorchVectorEnv(env_fns, device="cpu")
    policy = MLPPolicy(envs.single_observation_space, envs.single_action_space, POLICY)
    result = train_ppo(policy, envs, ppo_config(num_envs=4, num_steps=100, total_steps=800), seed=0, progress=False)
    assert result.env_steps == 800 and result.episodes == 4  # 200-step episodes, truncated
    assert np.isfinite(result.history[-1]["value_loss"])


@pytest.mark.parametrize("shown", [True, False])
def test_ppo_shows_its_progress_on_a_terminal_unless_told_not_to(cartpole_source, monkeypatch, shown):
    import io

    from rich.console import Console

    from dreamer import progress

    screen = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=screen, force_terminal=True, width=120))
    sim = FuncSim.from_source(cartpole_source)
    policy = MLPPolicy(sim.observation_space, sim.action_space, POLICY)
    train_ppo(policy, SimVectorEnv(sim, 16), ppo_config(num_envs=16, num_steps=16, total_steps=1024), seed=0,
              progress=shown)
    assert ("PPO, 1,024 env steps" in screen.getvalue()) == shown
    assert ("steps/s" in screen.getvalue()) == shown


def test_a_sim_that_turns_nan_stops_training_naming_the_transition(cartpole_source):
    """Past |x| > 0.1 the sim's transition returns NaN: the error holds the state that produced it."""
    source = cartpole_source.replace("def transition(state, action, rng):\n",
                                     "def transition(state, action, rng):\n    state = state / (state[:, :1].abs() < 0.1)\n")
    sim = FuncSim.from_source(source)
    policy = MLPPolicy(sim.observation_space, sim.action_space, POLICY)
    with pytest.raises(NonFiniteError, match=r"the env returned a non-finite observation at env step [\d,]+ \(env \d+\)") as error:
        train_ppo(policy, SimVectorEnv(sim, 16), ppo_config(num_envs=16, num_steps=64, total_steps=16 * 64 * 20), seed=0,
                  progress=False)
    details = error.value.where, error.value.details
    assert details[0] == "env" and abs(details[1]["obs"][0]) >= 0.1 and np.isnan(details[1]["next_obs"]).any()
    assert np.isfinite(details[1]["obs"]).all()


class ValueTurnsNaN(MLPPolicy):
    """Its value is NaN whenever gradients flow (PPO's update), finite in rollouts."""

    def forward(self, obs):
        dist, value = super().forward(obs)
        return dist, value * float("nan") if torch.is_grad_enabled() else value


def test_a_nan_loss_stops_before_the_weights_take_it(cartpole_source):
    sim = FuncSim.from_source(cartpole_source)
    policy = ValueTurnsNaN(sim.observation_space, sim.action_space, POLICY)
    before = {key: value.clone() for key, value in policy.state_dict().items()}
    with pytest.raises(NonFiniteError, match=r"non-finite loss or gradient in PPO update 1 .* the update was not applied"):
        train_ppo(policy, SimVectorEnv(sim, 16), ppo_config(num_envs=16, num_steps=16), seed=0, progress=False)
    for key, value in policy.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)


def test_resuming_from_a_checkpoint_continues_the_counters_and_the_weights(cartpole_source):
    sim = FuncSim.from_source(cartpole_source)
    config = ppo_config(num_envs=16, num_steps=16, total_steps=16 * 16 * 6, checkpoint_every=2)
    torch.manual_seed(0)
    policy = MLPPolicy(sim.observation_space, sim.action_space, POLICY)
    saved = []
    full = train_ppo(policy, SimVectorEnv(sim, 16), config, seed=0, progress=False, checkpoint=saved.append)
    assert [c.updates for c in saved] == [2, 4, 6] and saved[-1].env_steps == full.env_steps
    assert float(saved[1].return_scale["count"]) == 4 * 16 * 16  # the reward scale goes on from where it was
    resumed_policy = MLPPolicy(sim.observation_space, sim.action_space, POLICY)
    resumed = train_ppo(resumed_policy, SimVectorEnv(sim, 16), config, seed=0, progress=False, resume=saved[1])
    assert resumed.updates == 6 and resumed.env_steps == full.env_steps
    assert [row["env_steps"] for row in resumed.history] == [row["env_steps"] for row in full.history]
    assert resumed.history[:4] == full.history[:4], "the rows before the checkpoint are kept, not redone"
    untouched = train_ppo(MLPPolicy(sim.observation_space, sim.action_space, POLICY), SimVectorEnv(sim, 16),
                          config, seed=0, progress=False, resume=saved[-1])
    assert untouched.history == full.history, "resuming a finished training runs no update"


def test_running_obs_statistics_equal_those_of_every_observation_merged():
    env = gymnasium.make("CartPole-v1")
    policy = MLPPolicy(env.observation_space, env.action_space, POLICY)
    first, later = torch.randn(100, 4) * 0.05, torch.randn(3, 4096, 4) * torch.tensor([2.0, 1.5, 0.1, 0.5]) + 1.0
    policy.set_obs_stats(first.mean(0).numpy(), first.std(0, unbiased=False).numpy(), count=100)
    for batch in later:
        policy.update_obs_stats(batch)
    every = torch.cat([first, *later])
    torch.testing.assert_close(policy.obs_mean, every.mean(0))
    torch.testing.assert_close(policy.obs_std, every.std(0, unbiased=False))
    assert float(policy.obs_count) == len(every)


def test_ppo_obs_statistics_follow_the_states_the_policy_visits(cartpole_source):
    """Statistics frozen from a short random session left a later, better policy blind past 10 std
    (a cart at 2.4 was 33 std out): with `update_obs_stats` they cover the rollouts."""
    torch.manual_seed(0)
    sim = FuncSim.from_source(cartpole_source)
    policy = MLPPolicy(sim.observation_space, sim.action_space, POLICY)
    policy.set_obs_stats(np.zeros(4), np.full(4, 0.01), count=100)  # far too narrow, as a random session's are
    config = ppo_config(num_envs=64, num_steps=16, total_steps=64 * 16 * 3)
    train_ppo(policy, SimVectorEnv(sim, 64), dataclasses.replace(config, update_obs_stats=False), seed=0, progress=False)
    assert torch.all(policy.obs_std == 0.01)
    train_ppo(policy, SimVectorEnv(sim, 64), config, seed=0, progress=False)
    assert float(policy.obs_count) == 100 + 3 * 64 * 16 and torch.all(policy.obs_std > 0.02)
