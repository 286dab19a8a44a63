"""Teachers: who supervises the student, and how the teacher follows the student's weights.

- `self_context`: the student's own model with the session context in its window. Its weights are a
  copy taken at the start of consolidation and then `frozen`, an `ema` of the student's
  (θ_T <- d θ_T + (1 - d) θ_S after every optimizer step), or hard-`sync`ed every N steps.
- `checkpoint`: a saved veteran policy (`dreamer.load_policy`), frozen.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dreamer.rl import load_policy

TEACHERS = ("self_context", "checkpoint")
MODES = ("frozen", "ema", "sync")


@dataclass(frozen=True)
class TeacherConfig:
    kind: str            # self_context | checkpoint
    mode: str            # self_context: frozen | ema | sync
    ema_decay: float     # mode=ema: d in θ_T <- d θ_T + (1 - d) θ_S
    sync_every: int      # mode=sync: optimizer steps between copies of the student's weights
    path: str | None     # checkpoint: a saved policy folder (or a run dir holding policy/)

    def __post_init__(self):
        if self.kind not in TEACHERS:
            raise ValueError(f"teacher.kind must be one of {TEACHERS}, got {self.kind!r}")
        if self.mode not in MODES:
            raise ValueError(f"teacher.mode must be one of {MODES}, got {self.mode!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"teacher.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.sync_every < 1:
            raise ValueError(f"teacher.sync_every must be >= 1, got {self.sync_every}")


class Teacher:
    """`view` acts for the teacher (the PPO protocol, no gradients); `follow` keeps its weights per its mode."""

    def __init__(self, model: nn.Module, view: nn.Module, mode: str = "frozen", ema_decay: float = 0.0, sync_every: int = 1):
        self.model, self.view = model.requires_grad_(False), view
        self.mode, self.ema_decay, self.sync_every = mode, ema_decay, sync_every
        self.steps = 0

    @classmethod
    def self_context(cls, student_model: nn.Module, context, config: TeacherConfig) -> "Teacher":
        """A copy of the student's sequence model with `context` bound into its window."""
        model = copy.deepcopy(student_model)
        return cls(model, model.bind(context), config.mode, config.ema_decay, config.sync_every)

    @classmethod
    def checkpoint(cls, path: str | Path, device: str | torch.device) -> "Teacher":
        """A saved veteran (`dreamer.load_policy`), frozen; a sequence policy acts with an empty context."""
        model = load_policy(path, device)
        return cls(model, model.bind(None) if hasattr(model, "bind") else model)

    @torch.no_grad()
    def follow(self, student_model: nn.Module) -> None:
        """After an optimizer step on `student_model`: EMA or periodic copy (frozen: nothing)."""
        self.steps += 1
        if self.mode == "ema":
            for teacher, student in zip(self.model.parameters(), student_model.parameters()):
                teacher.lerp_(student, 1.0 - self.ema_decay)
        elif self.mode == "sync" and self.steps % self.sync_every == 0:
            self.model.load_state_dict(student_model.state_dict())

    def state_dict(self) -> dict:
        """The optimizer steps followed, and the weights unless frozen (they moved with the student)."""
        return {"steps": self.steps, "model": None if self.mode == "frozen" else self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        if state["model"] is not None:
            self.model.load_state_dict(state["model"])
