"""OPSD: schedules, teachers, session contexts, the distillation loss in PPO, and the task family."""

import copy

import numpy as np
import pytest
import torch
from gymnasium import spaces
from omegaconf import OmegaConf

from dreamer.config import build
from envs.hidden_goal import HiddenGoalEnv, family_source, goal_at
from dreamer.opsd import (
    Anchors, ContextConfig, Distillation, OPSDConfig, ScheduleConfig, Teacher, TeacherConfig, build_context, collect_states,
)
from dreamer.opsd.distill import token_logits
from dreamer.opsd.divergences import categorical_divergence, gaussian_divergence
from dreamer.rl import MLPPolicy, MLPPolicyConfig, PPOConfig, train_ppo
from dreamer.rl.sequence import SequencePolicy, SequencePolicyConfig
from dreamer.sim import FuncSim, SimVectorEnv
from dreamer.traces import TraceRecorder, record_steps

GOAL = goal_at(30.0, 0.6)


def opsd_config(**overrides) -> OPSDConfig:
    values = OmegaConf.to_container(OmegaConf.load("conf/opsd/default.yaml"))
    for key, value in overrides.items():  # "divergence.kind": "jsd"
        *path, last = key.split(".")
        section = values
        for part in path:
            section = section[part]
        section[last] = value
    return build(OPSDConfig, values, "opsd")


def ppo_config(**overrides) -> PPOConfig:
    values = OmegaConf.to_container(OmegaConf.load("conf/algo/ppo.yaml"))
    values.update(anneal_lr=False, update_obs_stats=False, normalize_reward=False)  # as the OPSD experiments set them
    return build(PPOConfig, {**values, **overrides}, "algo", ignore=("kind", "progress"))


def tiny_sequence_policy(context_dims: int = 2, seed: int = 0) -> SequencePolicy:
    values = OmegaConf.to_container(OmegaConf.load("conf/policy/sequence.yaml"))
    values["model"].update(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    config = build(SequencePolicyConfig, values, "policy", ignore=("kind",))
    torch.manual_seed(seed)
    policy = SequencePolicy(spaces.Box(-1.0, 1.0, (2,), np.float32), spaces.Discrete(5), config, context_dims)
    policy.set_obs_stats(np.zeros(2), np.full(2, 0.3))
    policy.set_context_stats(np.zeros(context_dims), np.full(context_dims, 0.5))
    return policy


def towards_goal(obs: np.ndarray) -> int:
    """The move along the axis with the larger distance to GOAL."""
    dx, dy = np.asarray(GOAL) - obs[:2]
    return (1 if dx > 0 else 2) if abs(dx) > abs(dy) else (3 if dy > 0 else 4)


def reaching_session(steps: int = 300, seed: int = 0):
    """A session in the real variant by a policy that walks to the goal (it reaches it, revealing it)."""
    return record_steps(TraceRecorder(HiddenGoalEnv(GOAL)), steps, seed, towards_goal)


# -- schedules ---------------------------------------------------------------------------------------------

def test_schedules_mix_ppo_and_opsd_as_configured():
    def schedule(**values):
        return ScheduleConfig(**{"kind": "constant", "coef": 0.5, "start": 1.0, "end": 0.0, "opsd_updates": 2,
                                 "ppo_updates": 3, **values})

    assert schedule().weights(7, 10) == (1.0, 0.5)
    linear = schedule(kind="linear", start=2.0, end=0.0)
    assert linear.weights(0, 5) == (1.0, 2.0) and linear.weights(4, 5) == (1.0, 0.0) and linear.weights(2, 5) == (1.0, 1.0)
    alternating = schedule(kind="alternating")
    phases = [alternating.weights(u, 10) for u in range(10)]
    assert phases == [(0.0, 0.5)] * 2 + [(1.0, 0.0)] * 3 + [(0.0, 0.5)] * 2 + [(1.0, 0.0)] * 3
    with pytest.raises(ValueError, match="schedule.kind must be one of"):
        schedule(kind="cosine")


def test_bad_opsd_config_names_the_key():
    with pytest.raises(ValueError, match=r"opsd\.teacher: teacher\.mode must be one of"):
        opsd_config(**{"teacher.mode": "live"})
    with pytest.raises(ValueError, match=r"opsd\.divergence: kind must be one of"):
        opsd_config(**{"divergence.kind": "kl"})
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['opsd\.schedule\.lambda'\]"):
        opsd_config(**{"schedule.lambda": 1.0})


# -- teachers ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["frozen", "ema", "sync"])
def test_teacher_follows_the_student_per_its_mode(mode):
    student = tiny_sequence_policy()
    config = TeacherConfig(kind="self_context", mode=mode, ema_decay=0.75, sync_every=3, path=None)
    teacher = Teacher.self_context(student, torch.tensor([0.3, -0.2]), config)
    start = [p.clone() for p in teacher.model.parameters()]
    assert not any(p.requires_grad for p in teacher.model.parameters())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    teacher.follow(student)
    teacher.follow(student)
    for before, now, target in zip(start, teacher.model.parameters(), student.parameters()):
        if mode == "frozen":
            torch.testing.assert_close(now, before)
        elif mode == "ema":  # two steps of θ <- 0.75 θ + 0.25 (θ + 1)  ->  θ + 1 - 0.75²
            torch.testing.assert_close(now, before + 1 - 0.75 ** 2)
        else:  # not yet synced after 2 of 3 steps
            torch.testing.assert_close(now, before)
    teacher.follow(student)
    if mode == "sync":
        for now, target in zip(teacher.model.parameters(), student.parameters()):
            torch.testing.assert_close(now, target)


def test_checkpoint_teacher_is_the_saved_veteran(tmp_path):
    veteran = MLPPolicy(spaces.Box(-1.0, 1.0, (3,), np.float32), spaces.Discrete(5), MLPPolicyConfig([16], "Tanh", 0.0))
    veteran.save(tmp_path / "veteran")
    teacher = Teacher.checkpoint(tmp_path / "veteran", "cpu")
    obs = torch.randn(8, 3)
    torch.testing.assert_close(teacher.view(obs)[0].logits, veteran(obs)[0].logits)
    sequence = tiny_sequence_policy(context_dims=0)
    sequence.save(tmp_path / "sequence")
    teacher = Teacher.checkpoint(tmp_path / "sequence", "cpu")
    torch.testing.assert_close(teacher.view(obs[:, :2])[0].logits, sequence(obs[:, :2], None)[0].logits)


# -- session contexts --------------------------------------------------------------------------------------

def test_facts_context_is_what_the_session_revealed():
    session = reaching_session()
    context = build_context(session, ContextConfig("facts", ["goal"], 1))
    np.testing.assert_allclose(context.numpy(), GOAL, rtol=1e-6)
    wandering = record_steps(TraceRecorder(HiddenGoalEnv(GOAL)), 60, 0, lambda obs: 0)  # stays put: reveals nothing
    with pytest.raises(ValueError, match=r"revealed no \['goal'\]"):
        build_context(wandering, ContextConfig("facts", ["goal"], 1))


def test_transitions_and_text_contexts():
    session = reaching_session()
    context = build_context(session, ContextConfig("transitions", [], 2)).reshape(2, -1)
    assert context.shape == (2, 2 + 1 + 1 + 2) and (context[:, 3] == 1.0).all()  # the rewarded transitions
    assert np.linalg.norm(context[0, 4:].numpy() - GOAL) < 0.15  # their next obs lies at the goal
    session.notes, session.feedback = "the goal is up and right", {3: "too slow"}
    assert build_context(session, ContextConfig("text", [], 1)) == "the goal is up and right\nstep 3: too slow"


# -- the task family ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("cue", [None, 0.5])
def test_the_dream_of_a_variant_steps_like_its_real_env(cue):
    env = HiddenGoalEnv(GOAL, cue)
    sim = FuncSim.from_source(family_source([GOAL], None if cue is None else [cue]))
    assert sim.observation_space.shape == env.observation_space.shape
    rng = np.random.default_rng(0)
    reached = 0
    for episode in range(20):
        obs, _ = env.reset(seed=episode)
        state = torch.tensor([[*GOAL, cue or 0.0, *obs[:2]]])
        done = False
        while not done:  # half the steps towards the goal, half at random
            action = towards_goal(obs) if rng.random() < 0.5 else int(rng.integers(5))
            obs, reward, terminated, truncated, _ = env.step(action)
            next_state = sim.transition(state, torch.tensor([action]), None)
            np.testing.assert_allclose(sim.observation(next_state, None)[0].numpy(), obs, atol=1e-6)
            assert float(sim.reward(state, torch.tensor([action]), next_state, None)) == reward
            assert bool(sim.terminal(next_state, None)) == terminated
            state, done = next_state, terminated or truncated
        reached += terminated
    assert 0 < reached < 20  # both ways of ending were compared


# -- the distillation loss ---------------------------------------------------------------------------------

def test_distillation_reaches_the_student_only_and_masks_early_steps():
    student = tiny_sequence_policy()
    teacher = Teacher.self_context(student, torch.tensor([0.6, 0.0]), TeacherConfig("self_context", "frozen", 0.9, 1, None))
    distill = Distillation(student.bind(None), student, teacher, opsd_config(skip_first=3))
    obs, action = torch.rand(60, 2) - 0.5, torch.randint(5, (60,))
    episode_step = torch.arange(60) % 6  # half the rows are within the first 3 steps
    view = student.bind(None)
    loss, figures = distill.loss(obs, action, episode_step, view(obs)[0])
    loss.backward()
    assert figures["opsd/valid_fraction"] == 0.5 and figures["opsd/divergence_raw"] > 0
    assert all(p.grad is None for p in teacher.model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    # Only the valid rows count: the same loss from those rows alone, without masking.
    rows = episode_step >= 3
    alone, _ = Distillation(view, student, teacher, opsd_config()).loss(obs[rows], action[rows], episode_step[rows], view(obs[rows])[0])
    torch.testing.assert_close(loss.detach(), alone.detach())
    # With the same (empty) context the teacher is the student: nothing to distil.
    same = Teacher.self_context(student, None, TeacherConfig("self_context", "frozen", 0.9, 1, None))
    zero, _ = Distillation(view, student, same, opsd_config()).loss(obs, action, episode_step, view(obs)[0])
    assert zero.abs() < 1e-6


def test_one_token_actions_reuse_ppos_distribution_as_their_token_logits():
    view = tiny_sequence_policy().bind(torch.tensor([0.1, 0.2]))
    obs, action = torch.rand(8, 2), torch.randint(5, (8,))
    own = view.action_token_logits(obs, action)
    shortcut = token_logits(view, obs, action, view(obs)[0])
    assert shortcut.logits.shape == own.logits.shape == (8, 1, 5)
    torch.testing.assert_close(torch.log_softmax(shortcut.logits, -1), torch.log_softmax(own.logits, -1))
    assert torch.equal(shortcut.tokens, own.tokens) and torch.equal(shortcut.mask, own.mask)


def test_gaussian_policies_distil_with_the_closed_form_kl_and_anchors_add_kl_to_base():
    box = spaces.Box(-2.0, 2.0, (1,), np.float32)
    config = MLPPolicyConfig([16], "Tanh", 0.0)
    torch.manual_seed(0)
    student, veteran = MLPPolicy(spaces.Box(-1, 1, (3,), np.float32), box, config), MLPPolicy(spaces.Box(-1, 1, (3,), np.float32), box, config)
    base = copy.deepcopy(student).requires_grad_(False)
    anchors = Anchors(student, base, torch.randn(32, 3), coef=2.0, batch=16)
    distill = Distillation(student, student, Teacher(veteran, veteran), opsd_config(**{"divergence.kind": "forward_kl"}), anchors)
    obs = torch.randn(16, 3)
    loss, figures = distill.loss(obs, torch.zeros(16, 1), torch.zeros(16, dtype=torch.long), student(obs)[0])
    s, t = student(obs)[0], veteran(obs)[0]
    expected = gaussian_divergence(s.loc, s.scale, t.loc, t.scale, "forward_kl").mean()
    torch.testing.assert_close(figures["opsd/divergence_raw"], expected.detach())
    assert figures["opsd/anchor_kl"] == 0  # the student still is the base
    torch.testing.assert_close(loss, expected)



def test_a_resumed_consolidation_goes_on_with_the_teachers_weights_and_the_anchor_draws():
    """An EMA teacher's weights and steps, and the anchor sampler's state, travel in PPO's checkpoints."""
    sim = FuncSim.from_source(family_source([GOAL]))

    def consolidation() -> tuple[MLPPolicy, Distillation]:
        torch.manual_seed(0)
        student = MLPPolicy(sim.observation_space, sim.action_space, MLPPolicyConfig([16], "Tanh", 0.0))
        teacher = copy.deepcopy(student)
        anchors = Anchors(student, copy.deepcopy(student).requires_grad_(False), torch.randn(64, 2), 1.0, 8)
        return student, Distillation(student, student, Teacher(teacher, teacher, "ema", 0.5), opsd_config(), anchors, seed=3)

    config = ppo_config(num_envs=8, num_steps=8, total_steps=8 * 8 * 4, checkpoint_every=2)
    student, distill = consolidation()
    start = copy.deepcopy(distill.teacher.model.state_dict())
    saved = []
    train_ppo(student, SimVectorEnv(sim, 8), config, seed=0, progress=False, auxiliary=distill,
              checkpoint=lambda state: saved.append(copy.deepcopy(state)))
    first = saved[0]  # after 2 of 4 updates
    assert first.auxiliary["teacher"]["steps"] == 2 * config.update_epochs * config.num_minibatches

    student, resumed = consolidation()
    train_ppo(student, SimVectorEnv(sim, 8), ppo_config(num_envs=8, num_steps=8, total_steps=8 * 8 * 2), seed=0,
              progress=False, auxiliary=resumed, resume=first)  # nothing left to train: the state is restored
    assert resumed.teacher.steps == first.auxiliary["teacher"]["steps"]
    for key, weights in resumed.teacher.model.state_dict().items():
        torch.testing.assert_close(weights, first.auxiliary["teacher"]["model"][key])
    assert any(not torch.equal(start[key], weights) for key, weights in resumed.teacher.model.state_dict().items())
    assert torch.equal(resumed.generator.get_state(), first.auxiliary["generator"])
    assert not torch.equal(resumed.generator.get_state(), torch.Generator().manual_seed(3).get_state())

@pytest.mark.slow
def test_short_consolidation_with_a_tiny_transformer_closes_the_gap_and_keeps_the_anchors():
    """PPO + OPSD in a variant's dream: the empty-context student comes to act like the teacher with the
    session's context; the anchor term holds the model's behaviour with other contexts."""
    model = tiny_sequence_policy(seed=1)
    context = torch.tensor(GOAL, dtype=torch.float32)
    sim = FuncSim.from_source(family_source([GOAL]))
    family = FuncSim.from_source(family_source(None, reveal_goal=True))
    base = copy.deepcopy(model).requires_grad_(False)
    anchor_obs = collect_states(base.bind_from_obs(), family, 512, seed=0, envs=256)
    # A random tiny model hardly reads its context; a sharpened other model with the context is a teacher
    # whose actions really differ from the student's.
    veteran = tiny_sequence_policy(seed=2)
    with torch.no_grad():
        veteran.lm.lm_head.weight.mul_(30.0)
    teacher = Teacher(veteran, veteran.bind(context))
    config = opsd_config(**{"schedule.coef": 5.0, "anchors.coef": 1.0})
    anchors = Anchors(model.bind_from_obs(), base.bind_from_obs(), anchor_obs, 1.0, 128)
    distill = Distillation(model.bind(None), model, teacher, config, anchors)
    obs = torch.rand(256, 2) - 0.5

    def gap() -> float:
        with torch.no_grad():
            return float(categorical_divergence(model(obs, None)[0].logits, teacher.view(obs)[0].logits, "reverse_kl").mean())

    before = gap()
    result = train_ppo(model.bind(None), SimVectorEnv(sim, 32), ppo_config(num_envs=32, num_steps=16, total_steps=32 * 16 * 12,
                       learning_rate=3e-3), seed=0, progress=False, auxiliary=distill)
    first, last = result.history[0], result.history[-1]
    assert gap() < 0.3 * before
    assert last["opsd/divergence_raw"] < 0.5 * first["opsd/divergence_raw"]
    assert last["aux_weight"] == 5.0 and "opsd/teacher_entropy" in last and "opsd/clip_fraction" in last
    assert last["opsd/anchor_kl"] < 0.05
