"""The learned writers (neural, hybrid), the fallback chain, a sim's weights file, and the dream's use of uncertainty."""

import json
import sys
from dataclasses import replace

import gymnasium
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dreamer.config import build
from dreamer.export import export
from dreamer.pipelines import compose_config
from dreamer.sandbox import load_sim
from dreamer.sandbox.worker import check_loads
from dreamer.sim import FuncSim, SimVectorEnv
from dreamer.sim.branch import BranchConfig, branched
from dreamer.sim.env import UncertaintyConfig, step_and_reset_every_row
from dreamer.sim.weights import WeightsError, load_weights, save_weights, weights_path
from dreamer.traces import collect_trace
from dreamer.writers import make_writer, write_sim
from dreamer.writers.coordinates import Coordinates
from dreamer.writers.hybrid import attribution
from dreamer.writers.protocol import WriteTask
from dreamer.writers.symbolic import SymbolicWriterConfig, fit_sparse, libraries

from conftest import FIXTURES

sys.path.insert(0, str(FIXTURES))
import bumpy_cart  # noqa: E402,F401  (registers BumpyCart-v0)

# A small, quick ensemble: enough for CartPole's near-linear steps.
SMALL = ["writer.ensemble.members=3", "writer.ensemble.hidden=32", "writer.ensemble.epochs=300",
         "writer.ensemble.patience=20", "writer.ensemble.batch_size=32"]


def writer_from(*overrides: str):
    return make_writer(compose_config("train", list(overrides)).writer)


@pytest.fixture(scope="module")
def cartpole_split():
    return collect_trace(gymnasium.make("CartPole-v1"), 600, seed=0).split(0.3, 0)


@pytest.fixture(scope="module")
def neural_run(cartpole_split, config, tmp_path_factory):
    """The neural writer's sim of 600 CartPole steps, written and judged as the write stage does."""
    env_dir = tmp_path_factory.mktemp("neural") / "env"
    train, held_out = cartpole_split
    return write_sim(writer_from("writer=neural", *SMALL), train, held_out, config, "dream", env_dir), env_dir


def test_the_neural_writer_writes_source_and_weights_that_the_sandbox_accepts(neural_run):
    written, env_dir = neural_run
    assert written.report.accepted, written.report.reasons
    assert written.report.fidelity.accuracy >= 0.95
    assert "weight tensors" in written.report.checks["loads"]["detail"]
    assert "all six functions keep the contract" in written.report.checks["shapes_and_dtypes"]["detail"]
    assert (env_dir / "dream.py").is_file() and weights_path(env_dir / "dream.py").is_file()
    assert (env_dir / "search" / "neural" / "sim.safetensors").is_file()
    fit = json.loads((env_dir / "search" / "neural" / "fit.json").read_text())
    assert len(fit["dynamics"]["epochs"]) == 3 and all(e >= 1 for e in fit["dynamics"]["epochs"])
    sim = load_sim(env_dir / "dream.py")  # reads the weights beside the source
    loaded = sim.transition.__globals__["WEIGHTS"]
    assert sorted(loaded) == sorted(written.weights) and all(torch.equal(loaded[k], written.weights[k]) for k in loaded)
    assert sim.uncertainty is not None


def test_a_learned_sim_without_its_weights_file_is_refused_by_name(neural_run, tmp_path):
    _, env_dir = neural_run
    (tmp_path / "dream.py").write_text((env_dir / "dream.py").read_text())
    with pytest.raises(ValueError, match=r"dream\.py reads WEIGHTS, but no weights file .*dream\.safetensors"):
        load_sim(tmp_path / "dream.py")


def test_an_exported_learned_sim_carries_its_weights(neural_run, tmp_path):
    _, env_dir = neural_run
    run_dir = env_dir.parent
    (run_dir / "config.yaml").write_text("seed: 0\nsim:\n  name: dream\n")
    env_id = export(run_dir, tmp_path / "cartpole_neural")
    assert (tmp_path / "cartpole_neural" / "sim.safetensors").is_file()
    sys.path.insert(0, str(tmp_path))
    try:
        import cartpole_neural  # noqa: F401  (registers the env)
        env = gymnasium.make(env_id)
        obs, _ = env.reset(seed=0)
        obs, reward, *_ = env.step(0)
        assert obs.shape == (4,) and np.isfinite(obs).all() and reward == pytest.approx(1.0, abs=1e-3)
    finally:
        sys.path.remove(str(tmp_path))
        gymnasium.registry.pop(env_id, None)


def test_weights_are_read_only_and_name_the_sim_module():
    source = "import torch\nOBSERVATION_LOW = [0.0]\nOBSERVATION_HIGH = [1.0]\nACTION_SPACE = {'type': 'Discrete', 'n': 2}\n" \
             "MAX_EPISODE_STEPS = 5\n" + "".join(f"def {f}(*args):\n    return WEIGHTS['w']\n" for f in (
                 "initial", "transition", "observation", "reward", "terminal"))
    one, two = (FuncSim.from_source(source, "s", {"w": torch.full((1,), value)}) for value in (1.0, 2.0))
    assert one.transition() == 1.0 and two.transition() == 2.0
    assert one.transition.__module__ != two.transition.__module__
    with pytest.raises(TypeError):
        one.transition.__globals__["WEIGHTS"]["w"] = torch.zeros(1)


def test_a_weights_file_that_is_not_safetensors_is_refused_with_its_name(tmp_path):
    path = save_weights(tmp_path / "sim.safetensors", {"w": torch.ones(3)})
    assert torch.equal(load_weights(path)["w"], torch.ones(3))
    with pytest.raises(WeightsError, match="more than the 1e-06 MB allowed"):
        load_weights(path, max_mb=1e-6)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04 a pickle, say")
    with pytest.raises(WeightsError, match=r"bad\.safetensors: not a safetensors file"):
        load_weights(bad)
    check, sim = check_loads("x = 1\n", "sim", str(bad), 64)
    assert sim is None and not check.passed and check.reasons[0].startswith("weights: ") and "bad.safetensors" in check.reasons[0]


def uncertain_sim() -> FuncSim:
    """A 1-d sim whose uncertainty is its state: 0.5 at the start, +1 each step."""
    return FuncSim.from_source("""
import torch
OBSERVATION_LOW = [-100.0]
OBSERVATION_HIGH = [100.0]
ACTION_SPACE = {"type": "Discrete", "n": 2}
MAX_EPISODE_STEPS = 50
def initial(rng, n):
    return torch.full((n, 1), 0.5)
def transition(state, action, rng):
    return state + 1.0
def observation(state, rng):
    return state
def reward(state, action, next_state, rng):
    return torch.ones(state.shape[0])
def terminal(state, rng):
    return torch.zeros(state.shape[0], dtype=torch.bool)
def uncertainty(state, action, rng):
    return state[:, 0]
""", "uncertain")


def test_the_dream_pays_the_uncertainty_penalty_and_truncates_past_the_limit():
    env = SimVectorEnv(uncertain_sim(), 3, uncertainty=UncertaintyConfig(penalty=0.5, truncate_above=2.0))
    env.reset(seed=0)
    rewards, truncations = [], []
    for _ in range(4):
        _, reward, terminated, truncated, info = env.step(np.zeros(3, dtype=np.int64))
        rewards.append(reward[0].item())
        truncations.append(truncated[0].item())
        assert not terminated.any()
    # uncertainty of the state stepped from: 0.5, 1.5, 2.5 (over the limit: truncated, back to 0.5), 0.5
    assert rewards == [1 - 0.25, 1 - 0.75, 1 - 1.25, 1 - 0.25]
    assert truncations == [False, False, True, False]
    stats = env.uncertainty_stats()
    assert stats["mean"] == pytest.approx((0.5 + 1.5 + 2.5 + 0.5) / 4) and stats["truncated_share"] == pytest.approx(0.25)
    plain = SimVectorEnv(uncertain_sim(), 3, uncertainty=UncertaintyConfig(penalty=0.0, truncate_above=None))
    plain.reset(seed=0)
    assert plain.step(np.zeros(3, dtype=np.int64))[1][0].item() == 1.0 and plain.uncertainty_stats() is None


def test_the_branch_free_step_for_accelerators_treats_uncertainty_the_same():
    sim, settings = uncertain_sim(), UncertaintyConfig(penalty=0.5, truncate_above=2.0)
    state, steps, rng = sim.initial(None, 3), torch.zeros(3, dtype=torch.int32), torch.Generator()
    rewards, truncations = [], []
    for _ in range(4):
        _, reward, _, truncated, *_ = step_and_reset_every_row(sim, state, steps, torch.zeros(3, dtype=torch.long), rng,
                                                                settings)
        rewards.append(reward[0].item())
        truncations.append(truncated[0].item())
    assert rewards == [0.75, 0.25, -0.25, 0.75] and truncations == [False, False, True, False]


def test_uncertainty_settings_are_checked():
    with pytest.raises(ValueError, match="penalty must be >= 0"):
        UncertaintyConfig(penalty=-1.0, truncate_above=None)
    cfg = compose_config("train", ["sim.uncertainty.truncate_above=0"])
    with pytest.raises(ValueError, match="truncate_above > 0"):
        build(UncertaintyConfig, cfg.sim.uncertainty, "sim.uncertainty")


def test_the_symbolic_writer_caps_the_size_of_an_equation():
    trace = collect_trace(gymnasium.make("BumpyCart-v0"), 1000, seed=0)
    config = build(SymbolicWriterConfig, {**OmegaConf.to_container(OmegaConf.load("conf/writer/symbolic.yaml")),
                                          "seed": 0, "max_terms": 6}, "writer", ignore=("kind",))
    coords = Coordinates.detect(trace.obs, config.angle_tolerance)
    q = coords.from_obs(trace.obs)
    change = coords.change(trace.obs, trace.next_obs)
    rows = np.arange(len(trace)) < 800
    fit = fit_sparse(libraries(coords, q, trace, config.degree), change[:, 1], rows, config)
    assert 1 <= fit.num_terms <= 6


class WallCart(gymnasium.Env):
    """A cart on [-1, 1] whose left end is a wall that stops it dead; reaching x >= 0.9 pays 10 and ends the episode
    (a random session meets the wall and the goal about a dozen times each in 1,500 steps)."""

    def __init__(self):
        self.observation_space = gymnasium.spaces.Box(np.array([-1.0, -2.0], np.float32), np.array([1.0, 2.0], np.float32))
        self.action_space = gymnasium.spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.state = np.array([self.np_random.uniform(-0.5, 0.5), 0.0])
        return self.state.astype(np.float32), {}

    def step(self, action):
        x, v = self.state
        v = np.clip(v + 0.05 * (int(action) - 1), -2.0, 2.0)
        x = x + 0.1 * v
        if x <= -1.0:
            x, v = -1.0, 0.0
        self.state = np.array([min(x, 1.0), v])
        return self.state.astype(np.float32), 10.0 if x >= 0.9 else -0.1, bool(x >= 0.9), False, {}


def test_the_neural_sim_keeps_the_sessions_walls_and_pays_a_rare_goal_bonus():
    """What a net alone blurs: the velocity at a wall (the symbolic writer's wall rule holds it, and the clipped steps
    stay out of the fit) and a bonus paid at a dozen terminal steps of 1,500 (the reward line on (1, action,
    terminated) gets it from those)."""
    trace = collect_trace(gymnasium.wrappers.TimeLimit(WallCart(), 200), 1500, seed=0)
    assert 5 <= trace.terminated.sum() and 5 <= np.isclose(trace.next_obs[:, 0], -1.0).sum()
    writer = writer_from("writer=neural", *SMALL, "writer.ensemble.epochs=30")
    draft = writer.draft(trace)
    assert "x[:, 1] = torch.where(x[:, 0] <= OBSERVATION_LOW[0], torch.full_like(x[:, 1], 0), x[:, 1])" in draft.source
    sim = FuncSim.from_source(draft.source, weights=draft.weights)
    rng = torch.Generator().manual_seed(0)
    at_wall = sim.transition(torch.tensor([[-0.99, -0.5], [-0.995, -1.0]]), torch.tensor([0, 0]), rng)
    assert at_wall[:, 0].tolist() == [-1.0, -1.0] and at_wall[:, 1].tolist() == [0.0, 0.0]
    # The steps the wall clipped are left out of the fit (they jump by tens of stds): with them, 5% of fresh steps
    # missed the sandbox's tolerance.
    fresh = collect_trace(gymnasium.wrappers.TimeLimit(WallCart(), 200), 1000, seed=7)
    predicted = sim.transition(torch.from_numpy(fresh.obs), torch.from_numpy(fresh.action), rng).numpy()
    assert (np.abs(predicted - fresh.next_obs) <= 0.1 * (fresh.next_obs - fresh.obs).std(0)).all()
    goal = torch.from_numpy(trace.terminated)
    reward = sim.reward(torch.from_numpy(trace.obs), torch.from_numpy(trace.action), torch.from_numpy(trace.next_obs), rng)
    assert sim.terminal(torch.from_numpy(trace.next_obs), rng).tolist() == goal.tolist()
    np.testing.assert_allclose(reward[goal].numpy(), 10.0, atol=0.05)  # a net alone: off by 0.2-0.3
    np.testing.assert_allclose(reward[~goal].numpy(), -0.1, atol=0.5)


def test_attribution_splits_the_error_removed_between_equations_and_residual(neural_run):
    report = neural_run[0].report
    equations = replace(report, fidelity=replace(report.fidelity, obs_nrmse_mean=0.4))
    hybrid = replace(report, fidelity=replace(report.fidelity, obs_nrmse_mean=0.05))
    shares = attribution(equations, hybrid)
    assert shares["removed_by_equations"] == pytest.approx(0.6) and shares["removed_by_residual"] == pytest.approx(0.35)
    assert attribution(replace(report, fidelity=None), hybrid) is None


@pytest.fixture(scope="module")
def bumpy_split():
    return collect_trace(gymnasium.make("BumpyCart-v0"), 1500, seed=0).split(0.3, 0)


@pytest.mark.slow
def test_the_hybrid_writer_judges_the_equations_alone_and_with_the_residual(bumpy_split, config, tmp_path):
    train, held_out = bumpy_split
    written = write_sim(writer_from("writer=hybrid", *[o.replace("writer.", "writer.neural.") for o in SMALL]),
                        train, held_out, config, "dream", tmp_path / "env")
    selection = json.loads((tmp_path / "env" / "search" / "selection.json").read_text())
    assert [c["label"] for c in selection["candidates"]] == ["equations", "hybrid"]
    shares = selection["attribution"]
    assert shares["hybrid_nrmse"] < shares["equations_nrmse"]  # the residual removes error the equations leave
    assert shares["removed_by_residual"] > 0
    source = (tmp_path / "env" / "search" / "hybrid" / "sim.py").read_text()
    assert "def equations(state, action, rng):" in source and "base = equations(state, action, rng)" in source
    assert "base[:, 0] + change[:, 0]" in source  # the residual is added to the equations' coordinates
    assert written.label in ("equations", "hybrid")


@pytest.mark.slow
def test_writer_auto_falls_back_in_order_and_says_why(bumpy_split, config, tmp_path):
    train, held_out = bumpy_split
    writer = writer_from("writer=auto", "writer.order=[symbolic,neural]",
                         *[o.replace("writer.", "writer.neural.") for o in SMALL])
    written = writer.write(WriteTask(train, held_out, config, "dream", tmp_path / "search", None))
    selection = json.loads((tmp_path / "search" / "selection.json").read_text())
    assert [w["writer"] for w in selection["writers"]] == ["symbolic", "neural"]
    assert not selection["writers"][0]["accepted"]  # no equation library fits the bumpy track
    assert written.tried[0].startswith("symbolic: REJECTED (") and selection["tried"] == list(written.tried)
    assert written.label.split("/")[0] in ("symbolic", "neural")
    assert [c["label"] for c in selection["candidates"]] == ["symbolic/symbolic", "neural/neural"]
    assert all((tmp_path / "search" / c["label"] / "report.json").is_file() for c in selection["candidates"])
    assert (tmp_path / "search" / "symbolic" / "symbolic" / "sim.py").is_file()
    assert (tmp_path / "search" / "neural" / "neural" / "sim.safetensors").is_file()


def test_writer_auto_stops_at_the_first_accepted_sim(cartpole_split, config, tmp_path):
    train, held_out = cartpole_split
    written = writer_from("writer=auto").write(WriteTask(train, held_out, config, "dream", tmp_path / "search", None))
    assert written.report.accepted and written.label == "symbolic/symbolic" and written.tried == ()
    assert not (tmp_path / "search" / "hybrid").exists() and not (tmp_path / "search" / "neural").exists()


@pytest.mark.parametrize("overrides, message", [
    (["writer=auto", "writer.order=[symbolic,gpt]"], "writer.order must be a non-empty list of ['symbolic', 'hybrid', 'neural']"),
    (["writer=neural", "writer.sampling=often"], "writer.sampling='often' is not one of ['mean', 'member', 'sample']"),
    (["writer=neural", "writer.ensemble.members=0"], "members must be an int >= 1"),
    (["writer=hybrid", "writer.max_equation_nrmse=0"], "max_equation_nrmse must be > 0"),
])
def test_a_bad_learned_writer_setting_names_the_key(overrides, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        writer_from(*overrides)


def test_branched_rollouts_start_from_the_session_and_stay_short():
    sim = uncertain_sim()  # starts at 0.5, +1 per step, horizon 50
    session = torch.tensor([[10.0], [20.0], [30.0]])
    short = branched(sim, BranchConfig(from_session=True, horizon=3), session)
    env = SimVectorEnv(short, 64)
    obs, _ = env.reset(seed=0)
    assert set(obs[:, 0].tolist()) == {10.0, 20.0, 30.0}
    for step in range(3):
        obs, _, _, truncated, info = env.step(np.zeros(64, dtype=np.int64))
    assert truncated.all() and set(info["final_obs"][:, 0].tolist()) == {13.0, 23.0, 33.0}
    assert branched(sim, BranchConfig(from_session=False, horizon=None), session) == sim
    with pytest.raises(ValueError, match="branch.horizon must be an int >= 1 or null"):
        BranchConfig(from_session=False, horizon=0)
