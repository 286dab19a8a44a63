"""The dream trusts its sim only where the session went (`dreamer.sim.support`)."""

import numpy as np
import pytest
import torch

from dreamer.sim import FuncSim, SimVectorEnv
from dreamer.sim.support import Support, SupportConfig, within_support

DRIFT = '''
import torch
OBSERVATION_LOW = [-10.0, -1.0]
OBSERVATION_HIGH = [10.0, 1.0]
ACTION_SPACE = {"type": "Discrete", "n": 2}
MAX_EPISODE_STEPS = 50

def initial(rng, n):
    return torch.zeros(n, 2, device=rng.device)

def transition(state, action, rng):  # x moves one step left or right; y is the action
    return torch.stack([state[:, 0] + 2 * action.float() - 1, 2 * action.float() - 1], dim=-1)

def observation(state, rng):
    return state

def reward(state, action, next_state, rng):
    return REWARD * torch.ones(state.shape[0], device=state.device)

def terminal(state, rng):  # a goal at x >= 4
    return state[:, 0] >= 4
'''


def drift_sim(reward: float) -> FuncSim:
    return FuncSim.from_source(DRIFT.replace("REWARD", str(reward)))


def session_support(rewards: list[float], margin: float = 0.0) -> Support:
    """A session that went from x = -2 to 2 (y = ±1)."""
    observations = np.array([[-2.0, -1.0], [2.0, 1.0], [0.0, 1.0]])
    return Support.of_session(observations, np.array(rewards), 50, SupportConfig(margin))


def test_the_box_is_the_sessions_widened_by_the_margin_of_its_range():
    support = session_support([1.0], margin=0.25)
    torch.testing.assert_close(support.low, torch.tensor([-3.0, -1.5]))
    torch.testing.assert_close(support.high, torch.tensor([3.0, 1.5]))
    assert support.outside(torch.tensor([[0.0, 0.0], [3.1, 0.0], [0.0, -1.6]])).tolist() == [False, True, True]


@pytest.mark.parametrize("rewards, halt", [([1.0, 0.5], 0.0), ([-1.0, 0.0], -50.0), ([-0.3, 2.0], -15.0)])
def test_leaving_the_support_ends_the_episode_paying_the_worst_the_session_allows(rewards, halt):
    """Nothing more where every reward was positive (the lost future is the cost); the lowest reward for a whole
    episode where some was negative, so that leaving never ends a costly task early."""
    sim = within_support(drift_sim(reward=float(min(rewards))), session_support(rewards))
    envs = SimVectorEnv(sim, 1)
    envs.reset(seed=0)
    for step in range(3):  # right: x = 1, 2, 3; the session went up to 2
        _, reward, terminated, truncated, info = envs.step(torch.ones(1, dtype=torch.long))
    assert terminated.item() and not truncated.item() and info["final_obs"][0, 0] == 3.0
    assert reward.item() == halt


def test_an_episode_the_sim_ends_itself_keeps_its_reward():
    support = Support(torch.tensor([-2.0, -1.0]), torch.tensor([3.0, 1.0]), halt_reward=-100.0)
    sim = within_support(drift_sim(reward=5.0), support)
    state = torch.tensor([[2.0, 1.0], [3.0, 1.0]])  # to x = 3 (inside) and x = 4 (outside, and the goal)
    action = torch.ones(2, dtype=torch.long)
    next_state = sim.transition(state, action, torch.Generator())
    assert sim.terminal(next_state, torch.Generator()).tolist() == [False, True]
    assert sim.reward(state, action, next_state, torch.Generator()).tolist() == [5.0, 5.0]


def test_inside_the_support_the_sim_is_unchanged():
    sim, plain = within_support(drift_sim(reward=1.0), session_support([1.0])), drift_sim(reward=1.0)
    rng = torch.Generator()
    state, action = torch.tensor([[0.0, 1.0], [1.0, -1.0]]), torch.tensor([0, 1])
    after = plain.transition(state, action, rng)
    assert torch.equal(sim.reward(state, action, after, rng), plain.reward(state, action, after, rng))
    assert torch.equal(sim.terminal(after, rng), plain.terminal(after, rng))


def test_a_negative_margin_is_refused():
    with pytest.raises(ValueError, match="support.margin must be a number >= 0"):
        SupportConfig(-0.1)


class Always(torch.nn.Module):
    """A policy with PPO's protocol that always takes `action`."""

    def __init__(self, action: int):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.nn.functional.one_hot(torch.tensor(action), 2).float() * 10)

    def forward(self, obs):
        return torch.distributions.Categorical(logits=self.logits.expand(len(obs), 2)), torch.zeros(len(obs))

    def env_action(self, action):
        return action


@pytest.mark.parametrize("action, share", [(1, 1.0), (0, 0.0)])
def test_the_run_reports_how_often_its_policy_leaves_the_support_in_the_sim_as_written(action, share):
    """Right, every episode passes x = 2 on its way to the goal at 4; left, x goes down to -50, all of it inside."""
    from dreamer.pipelines.config import EvalConfig
    from dreamer.pipelines.dream import share_leaving

    support = Support(torch.tensor([-100.0, -1.0]), torch.tensor([2.0, 1.0]), halt_reward=0.0)
    config = EvalConfig(env_id=None, episodes=1, seed=0, dream_episodes=8, max_gap=0.25)
    assert share_leaving(Always(action), drift_sim(1.0), support, config) == share
