from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from dreamer.sim import FuncSim, SimContractError, SimEnv, SimVectorEnv, register_sim
from dreamer.sim.env import step_and_reset_every_row

ROOT = Path(__file__).resolve().parent.parent

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


NOISY_BOX = PENDULUM_LIKE.replace("MAX_EPISODE_STEPS = 7", "MAX_EPISODE_STEPS = 9").replace(
    "return torch.zeros(n, 3, device=rng.device)", "return torch.rand(n, 3, generator=rng, device=rng.device) - 0.5").replace(
    "return state + action[:, :1] * torch.tensor([0.0, 0.0, 1.0], device=state.device)",
    "return state + action[:, :1] * torch.tensor([0.0, 0.0, 1.0], device=state.device) "
    "+ 0.1 * torch.randn(state.shape, generator=rng, device=state.device)").replace(
    "return torch.zeros(state.shape[0], dtype=torch.bool, device=state.device)", "return state[:, 2].abs() > 3.0")


def rollout(envs: SimVectorEnv, steps: int, seed: int) -> list[torch.Tensor]:
    """Everything `reset` and `step` return over a random-action rollout, in order."""
    obs, _ = envs.reset(seed=seed)
    envs.action_space.seed(seed)
    record = [obs]
    for _ in range(steps):
        obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
        record += [obs, reward, terminated, truncated, info["final_obs"], info["_final_obs"]]
    return record


@pytest.mark.parametrize("sim_name", ["written", "noisy_box", "exact_physics"])
def test_compiled_and_eager_steps_agree_row_for_row_through_resets_and_truncations(sim_name, cartpole_source):
    """The fused, compiled step is the eager step in every row, the rows that terminate, truncate and reset
    included: bit for bit for the symbolic writer's CartPole and for a sim that draws noise from the rng; for
    hand-written physics, within float32 rounding (inductor's vectorized sin/cos differ from eager's by an ulp)."""
    source = {"written": (ROOT / "envs" / "cartpole_dream" / "sim.py").read_text(), "noisy_box": NOISY_BOX,
              "exact_physics": cartpole_source}[sim_name].replace("MAX_EPISODE_STEPS = 500", "MAX_EPISODE_STEPS = 12")
    sim = FuncSim.from_source(source, name=sim_name)
    compiled = SimVectorEnv(sim, num_envs=48, compile=True)
    fused, eager = rollout(compiled, 40, seed=3), rollout(SimVectorEnv(sim, num_envs=48), 40, seed=3)
    assert compiled.compiled and compiled.compile_seconds > 0
    assert len(fused) == len(eager)
    for step, (a, b) in enumerate(zip(fused, eager)):
        where = f"output {(step - 1) % 6} of step {(step - 1) // 6}"
        assert a.dtype == b.dtype, where
        if sim_name == "exact_physics" and a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=where)
        else:
            assert torch.equal(a, b), where
    terminated, truncated = torch.stack(fused[3::6]), torch.stack(fused[4::6])
    assert terminated.any() and truncated.any()  # both kinds of reset were compared


def test_returned_tensors_are_never_changed_by_later_steps(cartpole_source):
    """The env steps its state in place; what `reset` and `step` returned stays as it was."""
    envs = SimVectorEnv(FuncSim.from_source(cartpole_source), num_envs=16)
    first, _ = envs.reset(seed=0)
    kept = first.clone()
    obs, *_ , info = envs.step(torch.ones(16, dtype=torch.long))
    kept_obs, kept_final = obs.clone(), info["final_obs"].clone()
    for _ in range(30):
        envs.step(torch.ones(16, dtype=torch.long))
    assert torch.equal(first, kept) and torch.equal(obs, kept_obs) and torch.equal(info["final_obs"], kept_final)


def test_vector_env_autoresets_as_gymnasium_same_step_mode():
    """Row for row what Gymnasium's own SyncVectorEnv (AutoresetMode.SAME_STEP) makes of the single env: the
    returned obs of a finished row is the next episode's first, `final_obs` holds the last one."""
    source = PENDULUM_LIKE.replace("return torch.zeros(state.shape[0], dtype=torch.bool, device=state.device)",
                                   "return state[:, 2] >= 4.0")
    sim = FuncSim.from_source(source)
    actions = np.random.default_rng(0).uniform(0.0, 2.0, size=(30, 4, 1)).astype(np.float32)
    reference = gymnasium.vector.SyncVectorEnv([lambda: SimEnv(sim)] * 4, autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP)
    reference.reset(seed=0)
    for compile in (False, True):
        envs = SimVectorEnv(sim, num_envs=4, compile=compile)
        envs.reset(seed=0)
        ends = 0
        for action in actions:
            want_obs, want_reward, want_terminated, want_truncated, want_info = reference.step(action)
            obs, reward, terminated, truncated, info = envs.step(action)
            np.testing.assert_allclose(obs.numpy(), want_obs, rtol=1e-6)
            np.testing.assert_allclose(reward.numpy(), want_reward, rtol=1e-6)
            assert terminated.tolist() == want_terminated.tolist() and truncated.tolist() == want_truncated.tolist()
            finished = want_terminated | want_truncated
            assert info["_final_obs"].tolist() == finished.tolist()
            for row in np.flatnonzero(finished):
                np.testing.assert_allclose(info["final_obs"][row].numpy(), want_info["final_obs"][row], rtol=1e-6)
            ends += int(finished.sum())
        assert ends > 8
        reference.reset(seed=0)


def test_a_failed_compile_warns_and_steps_eagerly_with_the_same_numbers(cartpole_source, monkeypatch):
    sim = FuncSim.from_source(cartpole_source)

    def no_compiler(function, **options):
        def fails(*args, **kwargs):
            raise RuntimeError("no C++ compiler found")
        return fails

    monkeypatch.setattr(torch, "compile", no_compiler)
    envs = SimVectorEnv(sim, num_envs=8, compile=True)
    with pytest.warns(UserWarning, match="torch.compile of sim 'sim' failed, stepping eagerly .*no C\\+\\+ compiler"):
        fused = rollout(envs, 30, seed=1)
    assert not envs.compiled
    assert all(torch.equal(a, b) for a, b in zip(fused, rollout(SimVectorEnv(sim, num_envs=8), 30, seed=1)))


def test_the_branch_free_step_for_accelerators_compiles_to_the_same_numbers():
    """`step_and_reset_every_row` (the step off the CPU) checked on CPU tensors, as CI has no GPU."""
    written = (ROOT / "envs" / "cartpole_dream" / "sim.py").read_text()
    sim = FuncSim.from_source(written.replace("MAX_EPISODE_STEPS = 500", "MAX_EPISODE_STEPS = 10"), name="branch_free")
    compiled = torch.compile(step_and_reset_every_row, dynamic=False)
    outputs = []
    for step in (step_and_reset_every_row, compiled):
        rng = torch.Generator().manual_seed(0)
        state, steps = sim.initial(rng, 32), torch.zeros(32, dtype=torch.int32)
        actions = torch.Generator().manual_seed(1)
        record = []
        for _ in range(25):
            with torch.no_grad():  # as SimVectorEnv.step runs it
                obs, reward, terminated, truncated, done, final_obs, _, _ = step(sim, state, steps, torch.randint(0, 2, (32,), generator=actions), rng)
            assert torch.equal(obs[~done], final_obs[~done]) and torch.equal(state, obs)  # observation is the state
            assert (obs[done].abs() <= 0.05).all() and (steps[done] == 0).all()  # finished rows start anew
            record += [obs, reward, terminated, truncated, final_obs, steps.clone()]
        outputs.append(record)
    assert all(torch.equal(a, b) for a, b in zip(*outputs))
    assert torch.stack(outputs[0][3::6]).any() and torch.stack(outputs[0][2::6]).any()


def test_a_loaded_sim_is_an_importable_module(cartpole_source):
    """torch.compile (dynamo) finds a function's globals through `sys.modules[function.__module__]`."""
    import importlib
    sim = FuncSim.from_source(cartpole_source, name="module_check")
    module = importlib.import_module(sim.transition.__module__)
    assert module.__dict__ is sim.transition.__globals__
    assert module.MAX_EPISODE_STEPS == 500 and "open" not in module.__builtins__
