"""Sequence policies: the numeric codec's prompt and binning, the policy protocol of bound policies, context
conditioning, constrained decoding of multi-token action names (text codec), and save/load."""

import json

import numpy as np
import pytest
import torch
from gymnasium import spaces
from tiny_lm import build_tiny_causal_lm
from torch.distributions import Categorical

from dreamer.rl.sequence import (
    BoundSequencePolicy,
    ObsContextPolicy,
    SequencePolicy,
    SequencePolicyConfig,
    TokenLogits,
    load_sequence_policy,
    number_bins,
)

TINY_LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 32}
OBS_DIM, CONTEXT_DIMS, ACTIONS = 4, 3, 3
TEMPLATE = "Task: {context}\nObservation: {observation}\nAction:"
MULTI_TOKEN_NAMES = ["push left", "push right", "stay"]


def numeric_config(**changes) -> SequencePolicyConfig:
    values = dict(codec="numeric", bins=16, mu=8.0, value_clip=4.0, model=TINY_LLAMA, model_path=None, template="",
                  action_names=None, dtype="float32")
    return SequencePolicyConfig(**{**values, **changes})


def text_config(model_path, action_names=MULTI_TOKEN_NAMES) -> SequencePolicyConfig:
    return SequencePolicyConfig(codec="text", bins=0, mu=0.0, value_clip=1.0, model={}, model_path=str(model_path),
                                template=TEMPLATE, action_names=list(action_names), dtype="float32")


def box(dims: int) -> spaces.Box:
    return spaces.Box(-np.inf, np.inf, (dims,), np.float32)


def numeric_policy(seed: int = 0, actions: int = ACTIONS, **changes) -> SequencePolicy:
    torch.manual_seed(seed)
    return SequencePolicy(box(OBS_DIM), spaces.Discrete(actions), numeric_config(**changes), context_dims=CONTEXT_DIMS)


def token_log_prob(token_logits: TokenLogits) -> torch.Tensor:
    """(B,) sum over the valid positions of log_softmax(logits) at the taken tokens."""
    per_token = token_logits.logits.log_softmax(-1).gather(-1, token_logits.tokens[..., None]).squeeze(-1)
    return torch.where(token_logits.mask, per_token, 0.0).sum(-1)


# ---- numeric codec --------------------------------------------------------------------------------------------


def test_numeric_prompt_is_bos_context_sep_obs_act():
    policy = numeric_policy()
    vocab = policy.vocab
    policy.set_obs_stats(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 0.5, 1.0]))
    policy.set_context_stats(np.array([-1.0, 0.0, 1.0]), np.array([1.0, 1.0, 1.0]))
    obs, context = torch.randn(5, OBS_DIM), torch.randn(5, CONTEXT_DIMS)
    tokens = policy.numeric_prompt(obs, context)
    assert tokens.shape == (5, 1 + CONTEXT_DIMS + 1 + OBS_DIM + 1)
    assert (tokens[:, 0] == vocab.bos).all() and (tokens[:, 1 + CONTEXT_DIMS] == vocab.sep).all()
    assert (tokens[:, -1] == vocab.act).all()
    numbers = torch.cat([tokens[:, 1 : 1 + CONTEXT_DIMS], tokens[:, 2 + CONTEXT_DIMS : -1]], 1)
    assert ((numbers >= vocab.first_number) & (numbers < vocab.first_action)).all()
    assert torch.equal(tokens[:, 1 : 1 + CONTEXT_DIMS] - vocab.first_number,
                       number_bins((context - policy.context_mean) / policy.context_std, 16, 8.0, 4.0))

    empty = policy.numeric_prompt(obs, None)   # an empty context has no context tokens at all
    assert torch.equal(empty, torch.cat([tokens[:, :1], tokens[:, 1 + CONTEXT_DIMS :]], 1))
    # an observation at its mean lands in the middle bin: the stored statistics standardise it
    at_mean = policy.numeric_prompt(policy.obs_mean[None], None)
    assert (at_mean[0, 2:-1] == vocab.first_number + 8).all()
    with pytest.raises(ValueError, match=r"context_dims=3"):
        policy.numeric_prompt(obs, torch.randn(5, 2))


@pytest.mark.parametrize("mu", [0.0, 8.0])
def test_number_bins_are_monotone_and_saturate_at_the_clip(mu):
    z = torch.linspace(-10, 10, 2001)
    bins = number_bins(z, 16, mu, value_clip=4.0)
    assert (bins.diff() >= 0).all() and bins.min() == 0 and bins.max() == 15
    assert (bins[z <= -4.0] == 0).all() and (bins[z >= 4.0] == 15).all()
    assert (bins[(z > -2.5) & (z < 2.5)] > 0).all() and (bins[(z > -2.5) & (z < 2.5)] < 15).all()
    assert len(bins.unique()) == 16
    assert number_bins(torch.tensor([-1e9, 1e9]), 16, mu, 4.0).tolist() == [0, 15]


def test_mu_law_spends_more_bins_near_zero():
    z = torch.linspace(-1, 1, 2001)
    assert len(number_bins(z, 16, 8.0, 4.0).unique()) > len(number_bins(z, 16, 0.0, 4.0).unique()) + 2


def test_numeric_forward_gives_a_categorical_values_and_matching_token_logits():
    policy = numeric_policy().bind(torch.randn(CONTEXT_DIMS))
    obs, action = torch.randn(7, OBS_DIM), torch.randint(0, ACTIONS, (7,))
    dist, values = policy(obs)
    assert isinstance(dist, Categorical) and dist.batch_shape == (7,) and dist.probs.shape == (7, ACTIONS)
    assert torch.allclose(dist.probs.sum(-1), torch.ones(7)) and values.shape == (7,)
    assert torch.equal(policy.value(obs), values) and torch.equal(policy.distribution(obs).logits, dist.logits)
    assert policy.log_prob(dist, action).shape == (7,) and policy.entropy(dist).shape == (7,)
    assert torch.equal(policy.env_action(action), action) and policy.discrete

    token_logits = policy.action_token_logits(obs, action)
    assert token_logits.logits.shape == (7, 1, ACTIONS) and token_logits.mask.all()
    assert torch.allclose(token_log_prob(token_logits), dist.log_prob(action), atol=1e-5)
    token_log_prob(token_logits).sum().backward()
    assert policy.policy.lm.get_input_embeddings().weight.grad.abs().sum() > 0


def test_bound_policies_share_parameters_and_depend_on_the_context():
    policy = numeric_policy()
    context = torch.randn(CONTEXT_DIMS)
    bound, unbound, from_obs = policy.bind(context), policy.bind(None), policy.bind_from_obs()
    parameter_ids = [id(p) for p in policy.parameters()]
    for binding in (bound, unbound, from_obs):
        assert [id(p) for p in binding.parameters()] == parameter_ids
    obs = torch.randn(6, OBS_DIM)
    assert not torch.allclose(bound(obs)[0].probs, unbound(obs)[0].probs)
    assert not torch.allclose(bound(obs)[1], unbound(obs)[1])
    assert torch.allclose(policy.bind(context[None])(obs)[0].probs, bound(obs)[0].probs)   # (1, C) == (C,)
    assert isinstance(bound.act(obs[0].numpy()), int) and bound.act(obs.numpy()).shape == (6,)
    assert bound.act(obs.numpy()).tolist() == bound(obs)[0].probs.argmax(-1).tolist()
    with pytest.raises(ValueError, match="context_dims"):
        policy.bind(torch.randn(CONTEXT_DIMS + 1))


def test_bind_from_obs_splits_each_row_into_its_context_and_observation():
    policy = numeric_policy()
    contexts, obs = torch.randn(5, CONTEXT_DIMS), torch.randn(5, OBS_DIM)
    dist, values = policy.bind_from_obs()(torch.cat([contexts, obs], 1))
    for row in range(5):
        row_dist, row_value = policy.bind(contexts[row])(obs[row : row + 1])
        assert torch.allclose(dist.probs[row], row_dist.probs[0], atol=1e-6)
        assert torch.allclose(values[row], row_value[0], atol=1e-6)
    action = torch.randint(0, ACTIONS, (5,))
    token_logits = policy.bind_from_obs().action_token_logits(torch.cat([contexts, obs], 1), action)
    assert torch.allclose(token_log_prob(token_logits), dist.log_prob(action), atol=1e-5)


def test_box_action_space_is_refused():
    with pytest.raises(ValueError, match="sequence policies act in Discrete action spaces; use policy=mlp for Box"):
        SequencePolicy(box(OBS_DIM), box(2), numeric_config())


def test_bad_config_values_name_the_key():
    with pytest.raises(ValueError, match=r"policy\.codec must be one of \['numeric', 'text'\]"):
        numeric_config(codec="bytes")
    with pytest.raises(ValueError, match=r"policy\.bins"):
        numeric_config(bins=1)
    with pytest.raises(ValueError, match=r"policy\.model\.max_position_embeddings=8"):
        numeric_policy(model={**TINY_LLAMA, "max_position_embeddings": 8})


def test_context_conditioning_trains():
    """Action 1 where context[0] > 0, else 0, whatever the observation: learnable only through the context."""
    policy = numeric_policy(seed=1, actions=2, mu=0.0, value_clip=3.0)
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        context = torch.randn(128, CONTEXT_DIMS, generator=generator)
        dist, _ = policy(torch.randn(128, OBS_DIM, generator=generator), context)
        loss = -dist.log_prob((context[:, 0] > 0).long()).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    context, obs = torch.randn(1000, CONTEXT_DIMS, generator=generator), torch.randn(1000, OBS_DIM, generator=generator)
    chosen = torch.as_tensor(policy.act(obs.numpy(), context=context))
    positive = context[:, 0] > 0
    assert (chosen[positive] == 1).float().mean() > 0.95 and (chosen[~positive] == 0).float().mean() > 0.95


# ---- text codec -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm_path(tmp_path_factory):
    return build_tiny_causal_lm(tmp_path_factory.mktemp("lm") / "lm")


@pytest.fixture(scope="module")
def text_policy(lm_path) -> SequencePolicy:
    return SequencePolicy(box(2), spaces.Discrete(3), text_config(lm_path), context_dims=0)


def test_action_names_tokenise_to_several_tokens_sharing_a_first_token(text_policy):
    tokens = [text_policy._name_tokens(name) for name in MULTI_TOKEN_NAMES]
    assert len(tokens[0]) > 1 and len(tokens[1]) > 1 and tokens[0][0] == tokens[1][0] != tokens[2][0]
    assert text_policy.action_tokens.shape == (3, max(map(len, tokens)))


def test_text_action_probabilities_sum_to_one_and_match_the_token_logits(text_policy):
    obs = torch.randn(4, 2)
    contexts = ["balance the pole", "", "a much longer description of the task at hand", "x"]
    dist, values = text_policy(obs, contexts)
    assert dist.batch_shape == (4,) and values.shape == (4,)
    assert torch.allclose(dist.probs.sum(-1), torch.ones(4), atol=1e-6)
    assert (dist.probs > 0).all()
    for taken in range(3):
        action = torch.full((4,), taken)
        token_logits = text_policy.action_token_logits(obs, contexts, action)
        assert torch.allclose(token_log_prob(token_logits), dist.log_prob(action), atol=1e-5)


def test_text_token_logits_are_minus_inf_exactly_at_the_forbidden_tokens(text_policy):
    names = [text_policy._name_tokens(name) for name in MULTI_TOKEN_NAMES]
    action = torch.tensor([0, 1, 2])
    token_logits = text_policy.action_token_logits(torch.randn(3, 2), "task", action)
    length, vocab = token_logits.logits.shape[1:]
    assert vocab == len(text_policy.tokenizer) and length == max(map(len, names))
    for row, taken in enumerate(action.tolist()):
        name = names[taken]
        assert token_logits.mask[row].tolist() == [j < len(name) for j in range(length)]
        assert token_logits.tokens[row].tolist() == name + [0] * (length - len(name))
        for j in range(len(name)):
            allowed = {other[j] for other in names if len(other) > j and other[:j] == name[:j]}
            finite = set(torch.isfinite(token_logits.logits[row, j]).nonzero().flatten().tolist())
            assert finite == allowed


def test_text_context_changes_the_output_and_batching_does_not(text_policy):
    obs = torch.randn(3, 2)
    contexts = ["push it to the left", "keep still", "?"]
    dist, values = text_policy(obs, contexts)
    assert not torch.allclose(dist.probs, text_policy(obs, None)[0].probs)
    for row, context in enumerate(contexts):   # left padding leaves every row as it is alone
        row_dist, row_value = text_policy(obs[row : row + 1], context)
        assert torch.allclose(row_dist.logits[0], dist.logits[row], atol=1e-5)
        assert torch.allclose(row_value[0], values[row], atol=1e-5)


def test_text_codec_renders_numeric_contexts_as_text(lm_path):
    policy = SequencePolicy(box(2), spaces.Discrete(3), text_config(lm_path), context_dims=2)
    obs, goal = torch.randn(3, 2), torch.tensor([0.5, -0.25])
    rendered = policy(obs, "[0.5, -0.25]")[0].logits
    assert torch.allclose(policy.bind(goal)(obs)[0].logits, rendered, atol=1e-5)
    rows = torch.cat([goal.expand(3, -1), obs], 1)   # each row's context in its first columns
    assert torch.allclose(policy.bind_from_obs()(rows)[0].logits, rendered, atol=1e-5)


def test_single_token_shortcut_agrees_with_teacher_forcing_every_action(lm_path):
    policy = SequencePolicy(box(2), spaces.Discrete(3), text_config(lm_path, ["def", "import", "x"]))
    assert policy.action_tokens.shape == (3, 1)
    obs = torch.randn(4, 2)
    shortcut, shortcut_hidden = policy._text_action_log_probs(obs, "ctx")
    every_action, hidden = policy._text_action_log_probs(obs, "ctx", first_token_shortcut=False)
    assert torch.allclose(shortcut, every_action, atol=1e-5) and torch.allclose(shortcut_hidden, hidden, atol=1e-5)
    action = torch.tensor([0, 1, 2, 0])
    assert torch.allclose(token_log_prob(policy.action_token_logits(obs, "ctx", action)),
                          policy(obs, "ctx")[0].log_prob(action), atol=1e-5)


def test_text_config_errors_name_the_key(lm_path, text_policy):
    with pytest.raises(ValueError, match=r"policy\.model_path='not/a/dir' must be an existing local directory"):
        SequencePolicy(box(2), spaces.Discrete(3), text_config("not/a/dir"))
    with pytest.raises(ValueError, match=r"policy\.model_path=.* must be an existing local directory"):
        SequencePolicy(box(2), spaces.Discrete(3), text_config(lm_path / "config.json"))
    with pytest.raises(ValueError, match=r"policy\.action_names: 'push' is a token prefix of 'push left'"):
        SequencePolicy(box(2), spaces.Discrete(2), text_config(lm_path, ["push", "push left"]))
    with pytest.raises(ValueError, match=r"policy\.action_names has 3 names but the action space is Discrete\(2\)"):
        SequencePolicy(box(2), spaces.Discrete(2), text_config(lm_path))
    with pytest.raises(ValueError, match=r"apply to policy\.codec=numeric only"):
        text_policy.set_obs_stats(np.zeros(2), np.ones(2))


def test_text_without_a_chat_template_renders_the_template_as_plain_text(tmp_path):
    path = build_tiny_causal_lm(tmp_path / "plain", chat_template=False)
    policy = SequencePolicy(box(2), spaces.Discrete(3), text_config(path))
    assert policy.prompt_texts(torch.tensor([[0.0123456, -0.3]]), "ctx") == [
        "Task: ctx\nObservation: [0.0123, -0.3]\nAction:"]
    assert torch.allclose(policy(torch.randn(2, 2), "ctx")[0].probs.sum(-1), torch.ones(2), atol=1e-6)


# ---- save and load ------------------------------------------------------------------------------------------


def test_numeric_save_load_round_trip(tmp_path):
    policy = numeric_policy(seed=3)
    policy.set_obs_stats(np.arange(OBS_DIM, dtype=np.float32), np.full(OBS_DIM, 2.0))
    policy.set_context_stats(np.ones(CONTEXT_DIMS), np.full(CONTEXT_DIMS, 0.5))
    context, obs = torch.randn(CONTEXT_DIMS), torch.randn(8, OBS_DIM)
    policy.save(tmp_path / "plain")
    policy.bind(context).save(tmp_path / "bound")
    policy.bind_from_obs().save(tmp_path / "from_obs")
    assert json.loads((tmp_path / "plain" / "policy.json").read_text())["kind"] == "sequence"

    loaded = load_sequence_policy(tmp_path / "plain")
    assert isinstance(loaded, SequencePolicy) and not loaded.training
    assert torch.equal(loaded.obs_mean, policy.obs_mean) and torch.equal(loaded.context_std, policy.context_std)
    assert torch.allclose(loaded(obs, context.expand(8, -1))[0].probs, policy(obs, context.expand(8, -1))[0].probs)
    bound = load_sequence_policy(tmp_path / "bound")
    assert isinstance(bound, BoundSequencePolicy)
    assert torch.allclose(bound(obs)[0].probs, policy.bind(context)(obs)[0].probs, atol=1e-6)
    from_obs = load_sequence_policy(tmp_path / "from_obs")
    rows = torch.cat([context.expand(8, -1), obs], 1)
    assert isinstance(from_obs, ObsContextPolicy)
    assert from_obs.act(rows.numpy()).tolist() == policy.bind_from_obs().act(rows.numpy()).tolist()


def test_text_save_load_round_trip(text_policy, tmp_path):
    text_policy.bind("balance the pole").save(tmp_path / "policy")
    meta = json.loads((tmp_path / "policy" / "policy.json").read_text())
    assert meta["config"]["model_path"] == str((tmp_path / "policy" / "model").resolve())
    state = torch.load(tmp_path / "policy" / "policy.pt", weights_only=True)
    assert state and not any(key.startswith("lm.") for key in state)   # the LM lives in model/ only
    loaded = load_sequence_policy(tmp_path)   # a run dir holding policy/
    obs = torch.randn(3, 2)
    assert isinstance(loaded, BoundSequencePolicy) and loaded.context == "balance the pole"
    assert torch.allclose(loaded(obs)[0].probs, text_policy(obs, "balance the pole")[0].probs, atol=1e-6)
    assert torch.allclose(loaded(obs)[1], text_policy(obs, "balance the pole")[1], atol=1e-6)
