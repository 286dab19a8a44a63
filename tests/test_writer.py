import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces
from omegaconf import OmegaConf

from dreamer.config import build
from dreamer.sandbox import check_source
from dreamer.sim import FuncSim
from dreamer.traces import Trace, collect_trace
from dreamer.writers import SymbolicWriter, SymbolicWriterConfig
from dreamer.writers.coordinates import Coordinates
from dreamer.writers.termination import fit_termination


@pytest.fixture(scope="module")
def writer() -> SymbolicWriter:
    config = OmegaConf.load("conf/writer/symbolic.yaml")
    config.seed = 0
    return SymbolicWriter(build(SymbolicWriterConfig, config, "writer", ignore=("kind",)))


def one_step_nrmse(sim: FuncSim, held_out) -> np.ndarray:
    """(O,) RMSE of predicted next obs / std of the real one-step change, per dimension."""
    with torch.no_grad():
        pred = sim.transition(torch.as_tensor(held_out.obs), torch.as_tensor(held_out.action), torch.Generator()).numpy()
    rmse = np.sqrt(np.mean((pred - held_out.next_obs) ** 2, axis=0))
    return rmse / (held_out.next_obs - held_out.obs).std(axis=0)


def test_cartpole_sim_is_faithful_on_held_out_episodes(writer):
    train, held_out = collect_trace(gymnasium.make("CartPole-v1"), 5000, seed=0).split(0.2, seed=0)
    source = writer.draft(train)
    assert check_source(source, "cartpole.py") == []
    sim = FuncSim.from_source(source)
    assert one_step_nrmse(sim, held_out).mean() <= 0.01
    terminal = sim.terminal(torch.as_tensor(held_out.next_obs), torch.Generator()).numpy()
    assert (terminal == held_out.terminated).mean() >= 0.99
    reward = sim.reward(torch.as_tensor(held_out.obs), torch.as_tensor(held_out.action), None, torch.Generator())
    np.testing.assert_allclose(reward.numpy(), held_out.reward, atol=1e-5)
    assert sim.max_episode_steps == 500  # from the recording env's time limit


def test_pendulum_angles_are_found_and_the_dynamics_recovered(writer):
    train, held_out = collect_trace(gymnasium.make("Pendulum-v1"), 3000, seed=1).split(0.2, seed=0)
    assert Coordinates.detect(train.obs, 1e-3).angle_starts == (0,)
    source = writer.draft(train)
    assert "torch.atan2(state[:, 1], state[:, 0])" in source
    sim = FuncSim.from_source(source)
    assert one_step_nrmse(sim, held_out).mean() <= 0.01
    reward = sim.reward(torch.as_tensor(held_out.obs), torch.as_tensor(held_out.action), None, torch.Generator())
    scale = held_out.reward.std()
    assert np.sqrt(np.mean((reward.numpy() - held_out.reward) ** 2)) / scale <= 0.01
    assert not sim.terminal(torch.as_tensor(held_out.next_obs), torch.Generator()).any()


def test_a_one_episode_session_is_fitted_on_its_start_and_scored_on_its_end(writer):
    """A trace of one episode (1,800 steps of MountainCarContinuous split 0.2 leaves the writer a single
    999-step episode) once crashed the writer: no row was left to score its equations on."""
    trace = collect_trace(gymnasium.make("MountainCarContinuous-v0"), 1800, seed=0)
    train, held_out = trace.split(0.2, seed=0)
    assert train.num_episodes == 1
    sim = FuncSim.from_source(writer.draft(train))
    assert one_step_nrmse(sim, held_out).mean() <= 0.1  # 0.073 measured: a sane sim, not a crash


def test_written_initial_states_stay_in_the_box_of_episode_starts(writer):
    trace = collect_trace(gymnasium.make("CartPole-v1"), 2000, seed=2)
    sim = FuncSim.from_source(writer.draft(trace))
    starts = trace.obs[trace.episode_starts()]
    states = sim.initial(torch.Generator().manual_seed(0), 4096).numpy()
    assert (states >= starts.min(0) - 1e-6).all() and (states <= starts.max(0) + 1e-6).all()
    assert (states.max(0) - states.min(0) > 0.9 * (starts.max(0) - starts.min(0))).all()


def test_a_reward_on_the_cosine_of_a_coordinate_reads_that_coordinate(writer):
    """Regressions: the reward once used `cos_x0` without unpacking `x0`; a never-taken action crashed the fit."""
    rng = np.random.default_rng(0)
    obs = rng.uniform(-3, 3, (600, 2)).astype(np.float32)
    next_obs = (0.9 * obs).astype(np.float32)
    trace = Trace(obs=obs, action=np.zeros(600, dtype=np.int64), reward=np.cos(obs[:, 0]).astype(np.float32),
                  next_obs=next_obs, terminated=np.zeros(600, bool), truncated=np.arange(600) % 50 == 49,
                  episode=np.arange(600) // 50, episode_ids=[str(i) for i in range(12)],
                  observation_space=spaces.Box(-10, 10, (2,)), action_space=spaces.Discrete(2))
    source = writer.draft(trace)
    assert "cos_x0" in source
    sim = FuncSim.from_source(source)
    state = torch.as_tensor(obs[:8])
    reward = sim.reward(state, torch.zeros(8, dtype=torch.long), state, torch.Generator())
    np.testing.assert_allclose(reward.numpy(), np.cos(obs[:8, 0]), atol=1e-4)


def terminates(expression: str, states: np.ndarray) -> np.ndarray:
    """Evaluate a `fit_termination` expression on (N, 2) states (coordinates x0, x1)."""
    x = torch.as_tensor(states)
    names = {"torch": torch, "state": x, "x0": x[:, 0], "x1": x[:, 1], "abs_x0": x[:, 0].abs(), "abs_x1": x[:, 1].abs()}
    return eval(expression, names).numpy()  # noqa: S307 (our own writer's output)


@pytest.mark.parametrize("seen_side", [1.0, -1.0])
def test_a_bound_the_session_met_on_one_side_holds_on_the_other(writer, seen_side):
    """A session whose cart only ever left on one side cannot tell |x| > 2.4 from x > 2.4; the sim written from
    it keeps the bound on the side it never saw (a one-sided sim was exploited by running off the other side)."""
    rng = np.random.default_rng(0)
    states = np.stack([seen_side * rng.uniform(-0.5, 2.5, 4000), rng.uniform(-0.25, 0.25, 4000)], axis=1)
    terminated = (np.abs(states[:, 0]) > 2.4) | (np.abs(states[:, 1]) > 0.21)
    unseen = np.array([[-seen_side * 2.6, 0.0], [-seen_side * 1.0, 0.0], [-seen_side * 1.0, 0.3]])
    for seed in range(8):  # the tree breaks ties between equal splits at random
        expression = fit_termination(Coordinates(2, ()), states, terminated, writer.config.termination, seed)
        np.testing.assert_array_equal(terminates(expression, unseen), [True, False, True], err_msg=expression)


def test_a_one_sided_goal_stays_one_sided(writer):
    """Where the magnitudes cannot explain the terminal states (a goal at x >= 0.5, the left hill open), the
    tree uses the signed coordinate."""
    rng = np.random.default_rng(0)
    states = np.stack([rng.uniform(-1.2, 0.6, 4000), rng.uniform(-0.07, 0.07, 4000)], axis=1)
    expression = fit_termination(Coordinates(2, ()), states, states[:, 0] >= 0.5, writer.config.termination, writer.config.seed)
    np.testing.assert_array_equal(terminates(expression, np.array([[0.55, 0.0], [-0.9, 0.0], [-0.55, 0.0]])),
                                  [True, False, False])


def tip_above_bar(angles: np.ndarray) -> np.ndarray:
    """Acrobot's terminal observations [cos θ1, sin θ1, cos θ2, sin θ2] for (N, 2) angles, and whether the tip is
    above the bar (-cos θ1 - cos(θ1 + θ2) > 1)."""
    obs = np.stack([np.cos(angles[:, 0]), np.sin(angles[:, 0]), np.cos(angles[:, 1]), np.sin(angles[:, 1])], axis=1)
    return obs.astype(np.float32), -np.cos(angles[:, 0]) - np.cos(angles.sum(1)) > 1.0


def test_a_terminal_boundary_no_box_holds_is_learned_from_a_few_terminations(writer):
    """Acrobot's goal is a curve in its observed cos/sin: from these ~110 terminations a depth-4 tree catches 64% of
    fresh goal states at 54% precision; the linear threshold on the observation's monomials is the law itself."""
    rng = np.random.default_rng(0)
    angles = np.concatenate([rng.normal(0.0, [0.8, 1.2], (4000, 2)),  # hanging, as random play keeps it
                             rng.normal([np.pi, 0.0], [0.6, 0.6], (60, 2))])  # a few swings to the top
    obs, terminated = tip_above_bar(angles)
    assert 50 <= terminated.sum() <= 200
    expression = fit_termination(Coordinates.detect(obs, 1e-3), obs, terminated, writer.config.termination, 0)
    assert "abs_" not in expression and "state[:, 1] * state[:, 3]" in expression, expression
    fresh, truth = tip_above_bar(rng.uniform(-np.pi, np.pi, (20000, 2)))
    predicted = eval(expression, {"torch": torch, "state": torch.as_tensor(fresh)}).numpy()  # noqa: S307
    assert predicted[truth].mean() >= 0.9 and truth[predicted].mean() >= 0.9


def test_writing_and_judging_show_progress_on_a_terminal(writer, monkeypatch, tmp_path):
    """The write stage's slow steps draw a live line on a terminal (and nothing in a log)."""
    import io

    from rich.console import Console

    from dreamer import progress
    from dreamer.sandbox import SandboxConfig
    from dreamer.writers import WriteTask

    screen = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=screen, force_terminal=True, width=120))
    train, held_out = collect_trace(gymnasium.make("CartPole-v1"), 1000, seed=0).split(0.2, seed=0)
    sandbox = SandboxConfig.from_dict(OmegaConf.load("conf/sandbox/default.yaml"))
    task = WriteTask(train, held_out, sandbox, "dream", tmp_path, None)
    assert writer.write(task).report.accepted
    shown = screen.getvalue()
    assert f"fitting equations to {len(train):,} transitions" in shown
    assert f"judging 1 candidate in the sandbox on {len(held_out):,} held-out transitions" in shown
