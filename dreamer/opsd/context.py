"""Session contexts: what a session revealed, built from its Trace for a teacher's context window.

- `facts`: numbers the session revealed in its info dicts (`keys`, e.g. the goal a real env reports
  when the agent reaches it), from the last transition that has them -> a (C,) float tensor;
- `transitions`: the `count` highest-reward transitions, each flattened as (obs, action, reward,
  next_obs) -> a (count * (2 O + A + 1),) float tensor (a Discrete action counts as one number);
- `text`: the trace's notes and feedback texts -> a str, for policies with a text codec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch

from dreamer.traces import Trace

Builder = Literal["facts", "transitions", "text"]
BUILDERS = get_args(Builder)


@dataclass(frozen=True)
class ContextConfig:
    builder: Builder
    keys: list[str]       # facts: info keys whose values (numbers or lists of numbers) form the context
    count: int            # transitions: how many, the highest rewards first

    def __post_init__(self):
        if self.builder not in BUILDERS:
            raise ValueError(f"context.builder must be one of {BUILDERS}, got {self.builder!r}")
        if self.builder == "facts" and not self.keys:
            raise ValueError("context.keys must name at least one info key for builder=facts")
        if self.builder == "transitions" and self.count < 1:
            raise ValueError(f"context.count must be >= 1, got {self.count}")


def build_context(trace: Trace, config: ContextConfig) -> torch.Tensor | str:
    """The session context of `trace` (see the module docstring); raises ValueError when it revealed nothing."""
    if config.builder == "facts":
        rows = [i for i, info in enumerate(trace.info or []) if all(key in info for key in config.keys)]
        if not rows:
            raise ValueError(f"the session {trace.name!r} revealed no {config.keys} in any transition's info "
                             f"({len(trace)} transitions): nothing to build the context from")
        info = trace.info[rows[-1]]
        return torch.as_tensor(np.concatenate([np.ravel(np.asarray(info[key], dtype=np.float32)) for key in config.keys]))
    if config.builder == "transitions":
        best = np.argsort(-trace.reward, kind="stable")[: config.count]
        action = trace.action.reshape(len(trace), -1).astype(np.float32)
        rows = np.concatenate([trace.obs, action, trace.reward[:, None], trace.next_obs], 1)[best]
        return torch.as_tensor(rows.reshape(-1))
    parts = [trace.notes.strip()] if trace.notes.strip() else []
    parts += [f"step {row}: {text}" for row, text in sorted(trace.feedback.items())]
    parts += [f"episode {episode}: {text}" for episode, text in sorted(trace.episode_feedback.items())]
    return "\n".join(parts)
