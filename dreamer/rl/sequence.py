"""Sequence policies: a causal LM reads `[session context] [observation]` and writes the action as token(s).

Two codecs turn numbers into tokens:

- `numeric`: a small LM built from a config (random init) over its own vocabulary, PAD BOS SEP ACT, `bins` number
  tokens, then one token per action. The prompt is `[BOS] [context (C)] [SEP] [observation (O)] [ACT]`, each number
  standardised with fixed statistics, clipped, µ-law companded and binned; the next token is the action.
- `text`: a pretrained LM from a local directory. The prompt is `template` with the context text and the observation
  written out, and the action is its name, decoded under constraint: at each position only tokens that continue
  some action name are allowed, so the action log-probabilities form a proper distribution over the n actions.

`SequencePolicy` takes the context explicitly; `bind(context)` and `bind_from_obs()` give the policy protocol that
PPO and OPSD call (`forward(obs) -> (dist, values)`, `action_token_logits(obs, action)`, `act`, `save` ...).
A saved policy is a folder: `policy.json`, `policy.pt` (a state dict, loaded with `weights_only=True`) and, for the
text codec, the LM and tokenizer in `model/`.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import ClassVar, Literal, get_args

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn
from torch.distributions import Categorical

from dreamer.artifacts import atomic_dir, atomic_path, write_text
from dreamer.rl.policy_folder import read_policy_meta
from dreamer.sim.contract import space_from_dict, space_to_dict

Codec = Literal["numeric", "text"]
DType = Literal["float32", "float16", "bfloat16"]
CODECS, DTYPES = get_args(Codec), get_args(DType)

TextContext = str | list[str] | None
"""Text codec context: one string for every row, one string per row, or None (rendered as "")."""


@dataclass(frozen=True)
class SequencePolicyConfig:
    codec: Codec
    bins: int                       # numeric: tokens per number
    mu: float                       # numeric: µ-law companding strength before uniform binning (0: plain uniform bins)
    value_clip: float               # numeric: standardised values are clipped to ±value_clip before binning
    model: dict                     # numeric: kwargs for transformers.AutoConfig.for_model, model_type included
    model_path: str | None          # text: a local directory with config.json and a tokenizer (never a hub name)
    template: str                   # text: the prompt, with {context} and {observation} fields
    action_names: list[str] | None  # text: one name per discrete action, e.g. ["left", "right"]
    dtype: DType                    # text: the LM's dtype

    def __post_init__(self):
        if self.codec not in CODECS:
            raise ValueError(f"policy.codec must be one of {list(CODECS)}, got {self.codec!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"policy.dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.codec == "numeric":
            if not isinstance(self.bins, int) or self.bins < 2:
                raise ValueError(f"policy.bins must be an int >= 2, got {self.bins!r}")
            if not self.mu >= 0:
                raise ValueError(f"policy.mu must be >= 0 (0: plain uniform bins), got {self.mu!r}")
            if not self.value_clip > 0:
                raise ValueError(f"policy.value_clip must be > 0, got {self.value_clip!r}")
            if not isinstance(self.model, dict) or "model_type" not in self.model:
                raise ValueError(f"policy.model must be a dict naming a model_type (e.g. llama), got {self.model!r}")
        else:
            if not self.model_path:
                raise ValueError("policy.model_path must name a local model directory for policy.codec=text")
            names = self.action_names
            if not names or not all(isinstance(name, str) and name for name in names) or len(set(names)) < len(names):
                raise ValueError(f"policy.action_names must be distinct non-empty strings, got {names!r}")
            try:
                self.template.format(context="", observation="")
            except (KeyError, IndexError, ValueError) as error:
                raise ValueError(f"policy.template may use only the fields {{context}} and {{observation}} "
                                 f"(write literal braces as {{{{ }}}}): {error!r}") from error
            if "{observation}" not in self.template:
                raise ValueError(f"policy.template must contain {{observation}}, got {self.template!r}")


@dataclass(frozen=True)
class TokenLogits:
    """The LM's next-token logits where it writes the taken actions (teacher-forced), for per-token divergences.

    For each row b, `sum_j mask[b, j] * log_softmax(logits)[b, j, tokens[b, j]]` is the action's log-probability.
    """

    logits: Tensor   # (B, L, V) float; tokens that constrained decoding forbids are -inf (none outside `mask`)
    mask: Tensor     # (B, L) bool: the positions of the taken action's tokens (an action may have fewer than L)
    tokens: Tensor   # (B, L) long: the taken action's tokens (indices into V), 0 where masked


@dataclass(frozen=True)
class NumericVocab:
    """Token ids of the numeric codec: PAD BOS SEP ACT, then `bins` number tokens, then one token per action."""

    bins: int
    actions: int
    pad: ClassVar[int] = 0
    bos: ClassVar[int] = 1
    sep: ClassVar[int] = 2
    act: ClassVar[int] = 3
    first_number: ClassVar[int] = 4

    @property
    def first_action(self) -> int:
        return self.first_number + self.bins

    @property
    def size(self) -> int:
        return self.first_action + self.actions


def number_bins(z: Tensor, bins: int, mu: float, value_clip: float) -> Tensor:
    """Standardised values (...) -> bin indices (...) long in [0, bins): clipped to ±value_clip, µ-law companded
    to [-1, 1] (`sign(z) log1p(mu |z| / value_clip) / log1p(mu)`; mu = 0: `z / value_clip`), binned uniformly."""
    unit = z.clamp(-value_clip, value_clip) / value_clip
    if mu > 0:
        unit = unit.sign() * torch.log1p(mu * unit.abs()) / math.log1p(mu)
    return ((unit + 1) * (bins / 2)).floor().long().clamp(0, bins - 1)


def render_numbers(values: Tensor) -> str:
    """(O,) -> "[0.012, -0.3]": each number with 3 significant digits."""
    return "[" + ", ".join(f"{value:.3g}" for value in values.tolist()) + "]"


class SequencePolicy(nn.Module):
    """Actor-critic over a causal LM: the actor is the LM's distribution over the actions after the prompt, the
    critic a linear head on the hidden state at the prompt's last position (the one that predicts the action).

    `forward(obs, context)` takes the context explicitly: numeric, a (B, C) float tensor; text, a string, B strings
    or None; None is an empty context (numeric: no context tokens at all).
    """

    discrete = True

    def __init__(self, observation_space: spaces.Box, action_space: spaces.Discrete, config: SequencePolicyConfig,
                 context_dims: int = 0):
        super().__init__()
        if not isinstance(action_space, spaces.Discrete):
            raise ValueError("sequence policies act in Discrete action spaces; use policy=mlp for Box actions")
        if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 1:
            raise ValueError(f"sequence policies read 1-d Box observations, got {observation_space}")
        self.observation_space, self.action_space, self.config = observation_space, action_space, config
        self.context_dims = int(context_dims)
        self.obs_dim, self.num_actions = int(observation_space.shape[0]), int(action_space.n)
        if config.codec == "numeric":
            self._init_numeric()
        else:
            self._init_text()
        self.value_head = nn.Linear(self.lm.config.get_text_config().hidden_size, 1)

    # ---- construction ----------------------------------------------------------------------------------------

    def _init_numeric(self) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM

        self.vocab = NumericVocab(self.config.bins, self.num_actions)
        kwargs = dict(self.config.model)
        model_config = AutoConfig.for_model(
            kwargs.pop("model_type"), **kwargs, vocab_size=self.vocab.size,
            pad_token_id=self.vocab.pad, bos_token_id=self.vocab.bos, eos_token_id=None,
        )
        prompt_length = 3 + self.context_dims + self.obs_dim
        max_positions = getattr(model_config, "max_position_embeddings", None)
        if max_positions is not None and max_positions < prompt_length:
            raise ValueError(f"policy.model.max_position_embeddings={max_positions} is shorter than the prompt "
                             f"(3 + {self.context_dims} context + {self.obs_dim} observation = {prompt_length} tokens)")
        self.lm = AutoModelForCausalLM.from_config(model_config)
        self.register_buffer("obs_mean", torch.zeros(self.obs_dim))
        self.register_buffer("obs_std", torch.ones(self.obs_dim))
        self.register_buffer("context_mean", torch.zeros(self.context_dims))
        self.register_buffer("context_std", torch.ones(self.context_dims))

    def _init_text(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(self.config.model_path).expanduser()
        if not (path / "config.json").is_file():
            raise ValueError(f"policy.model_path={self.config.model_path!r} must be an existing local directory with "
                             "config.json and a tokenizer; hub names are never downloaded")
        names = self.config.action_names
        if len(names) != self.num_actions:
            raise ValueError(f"policy.action_names has {len(names)} names but the action space is "
                             f"Discrete({self.num_actions}): give one name per action")
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        dtype = getattr(torch, self.config.dtype)
        self.lm = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
        self._init_action_trie([self._name_tokens(name) for name in names])

    def _name_tokens(self, name: str) -> list[int]:
        """The tokens of an action name as it follows a prompt (that of an empty context and a zero observation)."""
        prompt = self.prompt_texts(torch.zeros(1, self.obs_dim), None)[0]
        prompt_ids, ids = self._encode([prompt, prompt + name])
        if ids[: len(prompt_ids)] != prompt_ids or len(ids) == len(prompt_ids):
            raise ValueError(f"policy.action_names: {name!r} merges with the end of the prompt when tokenised; "
                             "start the names or end policy.template differently (e.g. with a space or newline)")
        return ids[len(prompt_ids):]

    def _init_action_trie(self, tokens: list[list[int]]) -> None:
        """Buffers of constrained decoding over the trie of the action names' token sequences (n actions, L the
        longest name in tokens, K the distinct tokens of all names):
        `action_tokens` (n, L) long (0-padded), `action_lengths` (n,), `candidates` (K,) token ids,
        `candidate_slots` (n, L) long (index of each action token in `candidates`), `allowed` (n, L, K) bool:
        the tokens that continue some name sharing the action's first j tokens (every candidate past its end)."""
        names = self.config.action_names
        for a, first in enumerate(tokens):
            for b, second in enumerate(tokens):
                if a != b and second[: len(first)] == first:
                    same = "tokenises identically to" if first == second else "is a token prefix of"
                    raise ValueError(f"policy.action_names: {names[a]!r} {same} {names[b]!r} ({first} vs {second}); "
                                     "constrained decoding needs names whose token sequences are not prefixes of "
                                     "one another")
        n, length = len(tokens), max(map(len, tokens))
        candidates = sorted({token for name in tokens for token in name})
        slot = {token: k for k, token in enumerate(candidates)}
        action_tokens = torch.zeros(n, length, dtype=torch.long)
        candidate_slots = torch.zeros(n, length, dtype=torch.long)
        allowed = torch.ones(n, length, len(candidates), dtype=torch.bool)
        for a, name in enumerate(tokens):
            action_tokens[a, : len(name)] = torch.tensor(name)
            candidate_slots[a, : len(name)] = torch.tensor([slot[token] for token in name])
            for j in range(len(name)):
                allowed[a, j] = False
                for other in tokens:
                    if len(other) > j and other[:j] == name[:j]:
                        allowed[a, j, slot[other[j]]] = True
        self.register_buffer("action_tokens", action_tokens, persistent=False)
        self.register_buffer("action_lengths", torch.tensor([len(name) for name in tokens]), persistent=False)
        self.register_buffer("candidates", torch.tensor(candidates), persistent=False)
        self.register_buffer("candidate_slots", candidate_slots, persistent=False)
        self.register_buffer("allowed", allowed, persistent=False)

    @property
    def tokens_per_action(self) -> int:
        """L: the most tokens an action takes (numeric codec: 1)."""
        return 1 if self.config.codec == "numeric" else int(self.action_tokens.shape[1])

    @property
    def device(self) -> torch.device:
        return self.value_head.weight.device

    def set_obs_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Numeric codec: the (O,) statistics that standardise observations (saved with the weights)."""
        self._set_stats("obs", mean, std)

    def set_context_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Numeric codec: the (C,) statistics that standardise contexts (saved with the weights)."""
        self._set_stats("context", mean, std)

    def _set_stats(self, which: str, mean: np.ndarray, std: np.ndarray) -> None:
        if self.config.codec != "numeric":
            raise ValueError(f"{which} statistics apply to policy.codec=numeric only; policy.codec=text writes the "
                             "raw numbers into the prompt")
        getattr(self, f"{which}_mean").copy_(torch.as_tensor(mean, dtype=torch.float32))
        getattr(self, f"{which}_std").copy_(torch.as_tensor(np.maximum(std, 1e-6), dtype=torch.float32))

    # ---- numeric codec ---------------------------------------------------------------------------------------

    def numeric_prompt(self, obs: Tensor, context: Tensor | None) -> Tensor:
        """(B, O) observations and (B, C) contexts (None: empty) -> (B, P) prompt tokens
        `[BOS] [context] [SEP] [obs] [ACT]`, P = O + 3 (+ C with a context)."""
        if self.config.codec != "numeric":
            raise ValueError("numeric_prompt needs policy.codec=numeric")
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"expected observations of shape (B, {self.obs_dim}), got {tuple(obs.shape)}")
        marker = torch.empty(obs.shape[0], 1, dtype=torch.long, device=obs.device)
        parts = [torch.full_like(marker, self.vocab.bos)]
        if context is not None:
            if not isinstance(context, Tensor) or context.shape != (obs.shape[0], self.context_dims):
                shape = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
                raise ValueError(f"expected a context tensor of shape ({obs.shape[0]}, {self.context_dims}) "
                                 f"(context_dims={self.context_dims}), got {shape}")
            parts.append(self._number_tokens(context, self.context_mean, self.context_std))
        parts += [torch.full_like(marker, self.vocab.sep), self._number_tokens(obs, self.obs_mean, self.obs_std),
                  torch.full_like(marker, self.vocab.act)]
        return torch.cat(parts, 1)

    def _number_tokens(self, values: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        z = (values.float() - mean) / std
        return self.vocab.first_number + number_bins(z, self.config.bins, self.config.mu, self.config.value_clip)

    # ---- text codec ------------------------------------------------------------------------------------------

    def prompt_texts(self, obs: Tensor, context: TextContext) -> list[str]:
        """(B, O) observations and the context text(s) -> B prompts (the tokenizer's chat template around the
        rendered template as the user message, when it has one)."""
        rows = obs.shape[0]
        contexts = [context or ""] * rows if context is None or isinstance(context, str) else list(context)
        if len(contexts) != rows or not all(isinstance(text, str) for text in contexts):
            raise ValueError(f"expected a str, None or {rows} strings as the text context, got {context!r}")
        messages = [self.config.template.format(context=text, observation=render_numbers(row))
                    for text, row in zip(contexts, obs.detach().cpu())]
        if not self.tokenizer.chat_template:
            return messages
        return [self.tokenizer.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True,
                                                   tokenize=False) for message in messages]

    def _encode(self, texts: list[str]) -> list[list[int]]:
        # a chat template writes its own special tokens (BOS ...); plain text gets the tokenizer's usual ones
        return self.tokenizer(texts, add_special_tokens=not self.tokenizer.chat_template)["input_ids"]

    def _pack(self, prompts: list[list[int]], suffix: Tensor, suffix_mask: Tensor) -> dict[str, Tensor]:
        """N prompts, left-padded to the longest, then (N, S) suffix tokens (right-padded, `suffix_mask` (N, S))
        -> the LM's input_ids, attention_mask and position_ids, each (N, P + S)."""
        width = max(map(len, prompts))
        ids = torch.zeros(len(prompts), width, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt):] = torch.tensor(prompt)
            mask[i, width - len(prompt):] = 1
        ids = torch.cat([ids.to(self.device), suffix], 1)
        mask = torch.cat([mask.to(self.device), suffix_mask.long()], 1)
        return {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}

    def _suffixes(self, actions: Tensor) -> tuple[Tensor, Tensor]:
        """(N,) actions -> the tokens that are fed after the prompt to teacher-force them: (N, L - 1) and mask."""
        tokens = self.action_tokens[actions, :-1]
        return tokens, torch.arange(tokens.shape[1], device=self.device) < self.action_lengths[actions, None]

    def _constrained_log_probs(self, logits: Tensor, actions: Tensor) -> Tensor:
        """(N, L, V) teacher-forced logits of (N,) actions -> (N,) their log-probabilities under constrained
        decoding (at each position, a softmax over the tokens the trie allows)."""
        candidate_logits = logits[..., self.candidates]                                   # (N, L, K)
        allowed = candidate_logits.masked_fill(~self.allowed[actions], -torch.inf)
        taken = candidate_logits.gather(-1, self.candidate_slots[actions, :, None]).squeeze(-1)
        per_token = taken - allowed.logsumexp(-1)                                         # (N, L)
        valid = torch.arange(logits.shape[1], device=self.device) < self.action_lengths[actions, None]
        return (per_token * valid).sum(-1)

    def _text_action_log_probs(self, obs: Tensor, context: TextContext,
                               first_token_shortcut: bool = True) -> tuple[Tensor, Tensor]:
        """(B, O) -> (B, n) action log-probabilities and (B, H) hidden states at the prompts' last position.

        Teacher-forces every action: one forward over B * n sequences; when every name is one token (and
        `first_token_shortcut`), one forward over the B prompts."""
        prompts = self._encode(self.prompt_texts(obs, context))
        n, length = self.num_actions, self.action_tokens.shape[1]
        if length == 1 and first_token_shortcut:
            empty = torch.zeros(len(prompts), 0, dtype=torch.long, device=self.device)
            logits, hidden = self._lm(self._pack(prompts, empty, empty), keep=1)
            return logits[:, 0, self.action_tokens[:, 0]].log_softmax(-1), hidden
        actions = torch.arange(n, device=self.device).repeat(len(prompts))               # (B * n,)
        logits, hidden = self._lm(self._pack([p for p in prompts for _ in range(n)], *self._suffixes(actions)), length)
        return self._constrained_log_probs(logits, actions).view(-1, n), hidden.view(-1, n, hidden.shape[-1])[:, 0]

    # ---- shared ----------------------------------------------------------------------------------------------

    def _lm(self, inputs: dict[str, Tensor], keep: int) -> tuple[Tensor, Tensor]:
        """One LM forward -> (N, keep, V) float logits of the last `keep` positions and (N, H) float hidden
        states at the first of them."""
        out = self.lm(**inputs, logits_to_keep=keep, output_hidden_states=True, use_cache=False)
        return out.logits.float(), out.hidden_states[-1][:, -keep].float()

    def forward(self, obs: Tensor, context: Tensor | TextContext = None) -> tuple[Categorical, Tensor]:
        """(B, O) observations and their context -> (Categorical over the n actions with batch shape (B,),
        (B,) values), from one LM forward (text codec, multi-token names: over B * n sequences)."""
        if self.config.codec == "numeric":
            logits, hidden = self._lm({"input_ids": self.numeric_prompt(obs, context)}, keep=1)
            action_logits = logits[:, 0, self.vocab.first_action:]
        else:
            action_logits, hidden = self._text_action_log_probs(obs, context)
        return Categorical(logits=action_logits, validate_args=False), self.value_head(hidden).squeeze(-1)

    def action_token_logits(self, obs: Tensor, context: Tensor | TextContext, action: Tensor) -> TokenLogits:
        """(B, O) observations, their context and (B,) taken actions -> the logits where the LM writes them.

        Numeric: L = 1 and V = n (the logits restricted to the action tokens). Text: L = the longest action name in
        tokens, V = the LM's vocabulary, the tokens that constrained decoding forbids at -inf."""
        action = action.long()
        if self.config.codec == "numeric":
            logits, _ = self._lm({"input_ids": self.numeric_prompt(obs, context)}, keep=1)
            mask = torch.ones(action.shape[0], 1, dtype=torch.bool, device=self.device)
            return TokenLogits(logits[:, :, self.vocab.first_action:], mask, action[:, None])
        prompts = self._encode(self.prompt_texts(obs, context))
        length = self.action_tokens.shape[1]
        logits, _ = self._lm(self._pack(prompts, *self._suffixes(action)), length)                   # (B, L, V)
        mask = torch.arange(length, device=self.device) < self.action_lengths[action, None]
        forbidden = torch.ones_like(logits, dtype=torch.bool).scatter_(
            -1, self.candidates.expand(*mask.shape, -1), ~self.allowed[action])
        return TokenLogits(logits.masked_fill(forbidden & mask[..., None], -torch.inf), mask,
                           self.action_tokens[action] * mask)

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = True,
            context: Tensor | TextContext = None) -> int | np.ndarray:
        """One observation (O,) or a batch (B, O) with its context -> action(s)."""
        obs_t, single = _as_batch(obs, self.device)
        return _choose(self(obs_t, context)[0], deterministic, single)

    def bind(self, context: Tensor | np.ndarray | str | None) -> BoundSequencePolicy:
        """The policy protocol with this context for every row: numeric, a (C,) or (1, C) array; text, a str (or
        numbers, rendered as text); None: an empty context."""
        return BoundSequencePolicy(self, context)

    def bind_from_obs(self) -> ObsContextPolicy:
        """The policy protocol over rows `concat(context (C), observation (O))` (text codec: C numbers as text)."""
        return ObsContextPolicy(self)

    def save(self, folder: str | Path) -> Path:
        """Write `policy.json`, `policy.pt` and, for the text codec, `model/` into `folder` (each atomically)."""
        return self._save(folder, {"type": "none"})

    def _save(self, folder: str | Path, binding: dict) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config, state = self.config, self.state_dict()
        if config.codec == "text":
            with atomic_dir(folder / "model") as staging:
                self.lm.save_pretrained(staging)
                self.tokenizer.save_pretrained(staging)
            config = replace(config, model_path=str((folder / "model").resolve()))
            state = {key: value for key, value in state.items() if not key.startswith("lm.")}
        meta = {
            "kind": "sequence",
            "observation_space": space_to_dict(self.observation_space),
            "action_space": space_to_dict(self.action_space),
            "config": asdict(config),
            "context_dims": self.context_dims,
            "binding": binding,
        }
        with atomic_path(folder / "policy.pt") as tmp:
            torch.save({key: value.detach().cpu() for key, value in state.items()}, tmp)
        write_text(folder / "policy.json", json.dumps(meta, indent=2))  # keeps infinite bounds (Infinity)
        return folder


class _Binding(nn.Module, ABC):
    """The policy protocol PPO and OPSD call, over a `SequencePolicy` whose context the subclass supplies.
    Its parameters are the policy's."""

    discrete = True

    def __init__(self, policy: SequencePolicy):
        super().__init__()
        self.policy = policy

    @abstractmethod
    def split(self, obs: Tensor) -> tuple[Tensor, Tensor | TextContext]:
        """(B, D) rows -> the policy's (B, O) observations and their context."""

    @abstractmethod
    def binding(self) -> dict:
        """How the context is bound, as saved in `policy.json`."""

    def forward(self, obs: Tensor) -> tuple[Categorical, Tensor]:
        """(B, D) -> (Categorical with batch shape (B,), (B,) values), one LM forward."""
        return self.policy(*self.split(obs))

    def distribution(self, obs: Tensor) -> Categorical:
        return self(obs)[0]

    def value(self, obs: Tensor) -> Tensor:
        """(B, D) -> (B,) state values."""
        return self(obs)[1]

    def log_prob(self, dist: Categorical, action: Tensor) -> Tensor:
        """(B,) log-probabilities of (B,) actions."""
        return dist.log_prob(action)

    def entropy(self, dist: Categorical) -> Tensor:
        return dist.entropy()

    def env_action(self, action: Tensor) -> Tensor:
        return action

    def action_token_logits(self, obs: Tensor, action: Tensor) -> TokenLogits:
        return self.policy.action_token_logits(*self.split(obs), action)

    @property
    def tokens_per_action(self) -> int:
        return self.policy.tokens_per_action

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = True) -> int | np.ndarray:
        """One row (D,) or a batch (B, D) -> action(s)."""
        obs_t, single = _as_batch(obs, self.policy.device)
        return _choose(self.distribution(obs_t), deterministic, single)

    def save(self, folder: str | Path) -> Path:
        """The policy's `save`, with the binding recorded so that loading gives this bound policy back."""
        return self.policy._save(folder, self.binding())


class BoundSequencePolicy(_Binding):
    """A `SequencePolicy` with one fixed context: a (1, C) tensor broadcast to every row (numeric), a str (text;
    numbers are rendered as text, e.g. "[0.52, 0.3]"), or None (an empty context)."""

    def __init__(self, policy: SequencePolicy, context: Tensor | np.ndarray | str | None):
        super().__init__(policy)
        numeric = policy.config.codec == "numeric"
        if not numeric and context is not None and not isinstance(context, str):
            context = render_numbers(torch.as_tensor(np.asarray(context, dtype=np.float32)).reshape(-1))
        if context is None:
            self.context = None
        elif numeric and not isinstance(context, str):
            self.context = torch.as_tensor(np.asarray(context, dtype=np.float32)).reshape(1, -1)
            if self.context.shape[1] != policy.context_dims:
                raise ValueError(f"expected a context of {policy.context_dims} numbers (context_dims), got "
                                 f"shape {tuple(np.shape(context))}")
        elif not numeric and isinstance(context, str):
            self.context = context
        else:
            raise ValueError(f"policy.codec=numeric binds a (C,) array or None, got {type(context).__name__}")

    def split(self, obs: Tensor) -> tuple[Tensor, Tensor | str | None]:
        if isinstance(self.context, Tensor):
            return obs, self.context.to(obs.device).expand(obs.shape[0], -1)
        return obs, self.context

    def binding(self) -> dict:
        context = self.context[0].tolist() if isinstance(self.context, Tensor) else self.context
        return {"type": "context", "context": context}


class ObsContextPolicy(_Binding):
    """A `SequencePolicy` over rows `concat(context (C), observation (O))`: each row's first C columns are its
    context (for envs that expose a task variant's context in the observation); the text codec renders them as text."""

    def split(self, obs: Tensor) -> tuple[Tensor, Tensor | list[str]]:
        expected = self.policy.context_dims + self.policy.obs_dim
        if obs.ndim != 2 or obs.shape[1] != expected:
            raise ValueError(f"expected rows of context_dims + observation = {expected} numbers, "
                             f"got {tuple(obs.shape)}")
        context = obs[:, : self.policy.context_dims]
        if self.policy.config.codec == "text":
            context = [render_numbers(row) for row in context.detach().cpu()]
        return obs[:, self.policy.context_dims:], context

    def binding(self) -> dict:
        return {"type": "obs"}


def _as_batch(obs: np.ndarray, device: torch.device) -> tuple[Tensor, bool]:
    """One row (D,) or a batch (B, D) -> a (B, D) float tensor on `device`, and whether it was one row."""
    obs_t = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=device)
    return obs_t.reshape(-1, obs_t.shape[-1]), obs_t.ndim == 1


def _choose(dist: Categorical, deterministic: bool, single: bool) -> int | np.ndarray:
    action = (dist.probs.argmax(-1) if deterministic else dist.sample()).cpu().numpy().astype(np.int64)
    return int(action[0]) if single else action


def load_sequence_policy(
    path: str | Path, device: str = "cpu"
) -> SequencePolicy | BoundSequencePolicy | ObsContextPolicy:
    """Load a saved sequence policy folder (or a run dir holding `policy/`), in eval mode: the policy itself, or
    the bound policy that was saved (so `.act(obs)` acts as it did in training)."""
    folder, meta = read_policy_meta(path)
    if meta.get("kind") != "sequence":
        raise ValueError(f"{folder / 'policy.json'} holds a policy of kind {meta.get('kind')!r}, not 'sequence'")
    config = SequencePolicyConfig(**meta["config"])
    if config.codec == "text":
        config = replace(config, model_path=str(folder / "model"))
    policy = SequencePolicy(space_from_dict(meta["observation_space"]), space_from_dict(meta["action_space"]), config,
                            meta["context_dims"])
    state = torch.load(folder / "policy.pt", map_location="cpu", weights_only=True)
    missing, unexpected = policy.load_state_dict(state, strict=config.codec == "numeric")
    if unexpected or any(not key.startswith("lm.") for key in missing):
        raise ValueError(f"{folder / 'policy.pt'} does not match policy.json: "
                         f"missing {missing}, unexpected {unexpected}")
    policy = policy.to(device).eval()
    binding = meta["binding"]
    if binding["type"] == "context":
        return policy.bind(binding["context"]).eval()
    if binding["type"] == "obs":
        return policy.bind_from_obs().eval()
    return policy
