"""A tiny random causal LM saved to a local directory, for tests that need a real transformers model offline.

    from tiny_lm import build_tiny_causal_lm   # tests/ is on sys.path under pytest (no __init__.py, "prepend" mode)

    path = build_tiny_causal_lm(tmp_path / "lm")   # then AutoModelForCausalLM.from_pretrained(path) etc.

Its output is gibberish (random weights); it is for checking plumbing, seeding and decoding, not quality.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
"""The chat template `build_tiny_causal_lm` sets: each message as `<|role|>\\ncontent</s>`."""

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]

_TEXT = '''
import torch

def transition(obs, action, generator):
    """One step of the dynamics."""
    x, x_dot, theta, theta_dot = obs.unbind(-1)
    force = torch.where(action == 1, 10.0, -10.0)
    temp = (force + 0.05 * theta_dot**2 * torch.sin(theta)) / 1.1
    theta_acc = (9.8 * torch.sin(theta) - torch.cos(theta) * temp) / (0.5 * (4 / 3 - 0.1 * torch.cos(theta) ** 2 / 1.1))
    x_acc = temp - 0.05 * theta_acc * torch.cos(theta) / 1.1
    dt = 0.02
    return torch.stack([x + dt * x_dot, x_dot + dt * x_acc, theta + dt * theta_dot, theta_dot + dt * theta_acc], -1)

def reward(obs, action, next_obs, generator):
    return torch.ones(obs.shape[0])
'''


def build_tiny_causal_lm(path: Path, chat_template: bool = True, seed: int = 0) -> Path:
    """Save a byte-level BPE tokenizer (~400 tokens trained on Python-like text; specials <pad> <s> </s>) and
    a random 2-layer Llama (hidden size 32) into `path`; with `chat_template`, the tokenizer has `CHAT_TEMPLATE`."""
    path = Path(path)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([_TEXT] * 4, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    if chat_template:
        wrapped.chat_template = CHAT_TEMPLATE
    wrapped.save_pretrained(path)

    config = LlamaConfig(
        vocab_size=len(wrapped),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=wrapped.pad_token_id,
        bos_token_id=wrapped.bos_token_id,
        eos_token_id=wrapped.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    return path
