"""Exploration for sessions that never showed the goal: the task-signal check and the novelty sim."""

import dataclasses

import gymnasium
import numpy as np
import pytest
import torch

from dreamer.rl import NoveltyConfig, novelty_sim
from dreamer.sim import FuncSim
from dreamer.traces import collect_trace
from dreamer.pipelines.dream import missing_task_signal


@pytest.mark.parametrize("env_id, missing", [
    ("CartPole-v1", None),                    # episodes terminate
    ("Pendulum-v1", None),                    # never terminates, but the reward reads the state
    ("Acrobot-v1", "one reward (-1) at every step and no episode that terminated"),
    ("MountainCarContinuous-v0", "a reward the action alone explains and no episode that terminated"),
])
def test_a_session_without_the_goal_is_told_apart_from_one_with_it(env_id, missing):
    assert missing_task_signal(collect_trace(gymnasium.make(env_id), 1500, seed=0), min_terminations=1) == missing


def test_a_session_whose_goal_is_rare_lacks_it_too():
    """Acrobot's seed 1 reaches its goal once in 5,000 random steps (reward 0 there, -1 elsewhere): too few
    terminations to learn where the goal lies from, so a round with another after it explores rather than trust a
    sim of one goal. The goal's own reward does not count as a task signal of its own."""
    session = collect_trace(gymnasium.make("Acrobot-v1"), 5000, seed=1)
    assert int(session.terminated.sum()) == 1 and set(session.reward[session.terminated]) == {0.0}
    assert missing_task_signal(session, min_terminations=1) is None
    assert missing_task_signal(session, min_terminations=5) == (
        f"one reward (-1) at every step but where an episode terminated, and only 1 of {session.num_episodes:,} "
        "episodes that terminated (fewer than 5)")


def test_novelty_is_the_capped_distance_to_the_session_in_its_standard_deviations(cartpole_source):
    sim = FuncSim.from_source(cartpole_source)
    session = collect_trace(gymnasium.make("CartPole-v1"), 600, seed=0)
    explorer = novelty_sim(sim, session.next_obs, NoveltyConfig(reference_states=600, cap=10.0, min_terminations=5), seed=0)
    std = session.next_obs.std(0)
    seen = torch.as_tensor(session.next_obs[:50])
    away = seen + torch.as_tensor(3 * std * np.array([1.0, 0, 0, 0]), dtype=torch.float32)
    action = torch.zeros(50, dtype=torch.long)
    novelty = lambda s: explorer.reward(s, action, s, torch.Generator())  # noqa: E731 (identity observation)
    assert torch.all(novelty(seen) < 1e-2)  # (cdist rounds)
    assert torch.all(novelty(away) > 0.5) and torch.all(novelty(away) <= 3.0 + 1e-4)
    assert torch.all(novelty(seen * 1000) == 10.0)
    assert explorer.transition is sim.transition and explorer.terminal is sim.terminal  # only the reward changes


def test_the_symbolic_reward_pays_a_goal_bonus_on_the_step_that_ends_the_episode():
    from omegaconf import OmegaConf

    from dreamer.config import build
    from dreamer.writers import SymbolicWriter, SymbolicWriterConfig

    session = collect_trace(gymnasium.make("CartPole-v1"), 2000, seed=0)
    session = dataclasses.replace(session, reward=(1.0 + 10.0 * session.terminated).astype(np.float32))
    config = build(SymbolicWriterConfig, {**OmegaConf.to_container(OmegaConf.load("conf/writer/symbolic.yaml")), "seed": 0},
                   "writer", ignore=("kind",))
    source = SymbolicWriter(config).draft(session)
    assert "done = terminal(next_state, rng).float()" in source
    sim = FuncSim.from_source(source)
    obs, next_obs, action = (torch.as_tensor(x) for x in (session.obs, session.next_obs, session.action))
    reward = sim.reward(obs, action, next_obs, torch.Generator()).numpy()
    np.testing.assert_allclose(reward, session.reward, atol=1e-3)
