import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from dreamer.sim import FuncSim, SimContractError, SimEnv, SimVectorEnv, register_sim

PENDULUM_LIKE = '''
import torch
OBSERVATION_LOW = [-1.0, -1.0, -8.0]
OBSERVATION_HIGH = [1.0, 1.0, 8.0]
ACTION_SPACE = {"type": "Box", "low": [-2.0], "high": [2.0]}
MAX_EPISODE_STEPS = 7

def initial(rng, n):
    return torch.zeros(n, 3, device=rng.device)

def transition(state, action, rng):
    return state + action[:, :1] * torch.tensor([0.0, 0.0, 1.0], device=state.device)

def observation(state, rng):
    return state

def reward(state, action, next_state, rng):
    return action[:, 0]

def terminal(state, rng):
    return torch.zeros(state.shape[0], dtype=torch.bool, device=state.device)
'''


def test_missing_function_is_named(cartpole_source):
    source = cartpole_source.replace("def terminal(", "def not_terminal(")
    with pytest.raises(SimContractError, match="terminal"):
        FuncSim.from_source(source)


def test_sim_env_passes_gymnasium_checker(cartpole_source):
    check_env(SimEnv(FuncSim.from_source(cartpole_source)), skip_render_check=True)


def test_sim_env_matches_real_cartpole_step(cartpole_source):
    env, real = SimEnv(FuncSim.from_source(cartpole_source)), gymnasium.make("CartPole-v1")
    obs, _ = real.reset(seed=3)
    env.reset(seed=0)
    env.unwrapped._state = torch.as_tensor(obs)[None]
    for action in [1, 0, 0, 1, 1]:
        sim_obs, sim_reward, sim_term, _, _ = env.step(action)
        obs, reward, term, _, _ = real.step(action)
        np.testing.assert_allclose(sim_obs, obs, atol=1e-5)
        assert (sim_reward, sim_term) == (reward, term)


def test_vector_env_autoresets_in_the_same_step_and_reports_final_obs(cartpole_source):
    envs = SimVectorEnv(FuncSim.from_source(cartpole_source), num_envs=64)
    obs, _ = envs.reset(seed=0)
    pushes = torch.ones(64, dtype=torch.long)  # always push right: the pole falls within ~10 steps
    for _ in range(40):
        obs, reward, terminated, truncated, info = envs.step(pushes)
        if terminated.any():
            break
    assert terminated.any() and not truncated.any()
    final = info["final_obs"][terminated]
    assert ((final[:, 2].abs() > 0.2094) | (final[:, 0].abs() > 2.4)).all()  # the terminal state
    assert (obs[terminated].abs() <= 0.05).all()  # already the next episode's first observation
    assert info["_final_obs"].equal(terminated)


def test_vector_env_truncates_at_the_horizon_and_clips_box_actions():
    envs = SimVectorEnv(FuncSim.from_source(PENDULUM_LIKE), num_envs=3)
    envs.reset(seed=0)
    for step in range(1, 8):
        obs, reward, terminated, truncated, info = envs.step(np.full((3, 1), 5.0))
        assert torch.equal(reward, torch.full((3,), 2.0))  # 5.0 clipped to the bound 2.0
        assert truncated.all() == (step == 7)
    assert torch.equal(info["final_obs"][:, 2], torch.full((3,), 14.0))
    assert torch.equal(obs, torch.zeros(3, 3))


def test_both_front_ends_count_an_episode_that_ends_at_the_horizon_as_terminated_only():
    """A terminal step that is also the horizon's last is not a truncation, in one env as in the vector env
    (so PPO never bootstraps a terminal state's value)."""
    ends_at_the_horizon = PENDULUM_LIKE.replace(
        "return torch.zeros(state.shape[0], dtype=torch.bool, device=state.device)", "return state[:, 2] >= 14.0")
    sim = FuncSim.from_source(ends_at_the_horizon)
    env, vector = SimEnv(sim), SimVectorEnv(sim, num_envs=2)
    env.reset(seed=0)
    vector.reset(seed=0)
    for _ in range(7):
        *_, terminated, truncated, _ = env.step(np.array([2.0]))
        *_, vector_terminated, vector_truncated, _ = vector.step(np.full((2, 1), 2.0))
    assert (terminated, truncated) == (True, False)
    assert vector_terminated.all() and not vector_truncated.any()


def test_registered_sim_builds_with_make_and_make_vec(cartpole_source):
    env_id = register_sim(FuncSim.from_source(cartpole_source, name="cartpole_test"))
    assert env_id == "dreamer/cartpole_test"
    env = gymnasium.make(env_id)
    obs, _ = env.reset(seed=1)
    assert env.observation_space.contains(obs)
    vec = gymnasium.make_vec(env_id, num_envs=5)
    obs, _ = vec.reset(seed=1)
    assert isinstance(vec, SimVectorEnv)
    assert obs.shape == (5, 4)
