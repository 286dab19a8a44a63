"""OPSD as PPO's auxiliary loss: the teacher supervises the student per token / per step on the
student's own on-policy samples, with a drift guard on anchor states from earlier tasks.

On a PPO minibatch of student samples (obs, action, episode step):

    L_OPSD = mean over valid tokens of clip(D(student || teacher))         (dreamer.opsd.divergences)
           + anchors.coef * mean over anchor states of KL(base || student)

where a token is valid when it belongs to the taken action and its step is past `skip_first` in its
episode. Gradients reach the student only; the teacher follows it per `teacher.mode` after every
optimizer step. Categorical policies give per-token logits (a sequence policy's action tokens, or
one "token" over the Discrete actions for an MLP); Gaussian policies use the closed-form KL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Normal

from dreamer.opsd.context import ContextConfig
from dreamer.opsd.divergences import (
    DivergenceConfig, DivergenceResult, categorical_divergence, gaussian_divergence, gaussian_token_divergence,
    token_divergence,
)
from dreamer.opsd.schedules import ScheduleConfig
from dreamer.opsd.teachers import Teacher, TeacherConfig
from dreamer.rl.sequence import TokenLogits
from dreamer.sim import FuncSim, SimVectorEnv


@dataclass(frozen=True)
class AnchorConfig:
    coef: float          # weight of KL(base || student) on anchor states (0: no drift guard)
    states: int          # anchor states collected per earlier task, by the base policy acting there
    batch: int           # anchor states per minibatch
    envs: int            # parallel envs of the sim the base collects them in

    def __post_init__(self):
        if not self.coef >= 0:
            raise ValueError(f"anchors.coef must be >= 0, got {self.coef}")
        for key in ("states", "batch", "envs"):
            if getattr(self, key) < 1:
                raise ValueError(f"anchors.{key} must be >= 1, got {getattr(self, key)}")


@dataclass(frozen=True)
class OPSDConfig:
    enabled: bool                  # false: plain PPO
    teacher: TeacherConfig
    context: ContextConfig         # how the session context of a self_context teacher is built from the trace
    divergence: DivergenceConfig
    schedule: ScheduleConfig
    skip_first: int                # steps at the start of each episode that are not distilled
    anchors: AnchorConfig
    eval_every: int                # PPO updates between evaluations of teacher, student and retention

    def __post_init__(self):
        if self.skip_first < 0:
            raise ValueError(f"skip_first must be >= 0, got {self.skip_first}")
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")


def token_logits(policy: nn.Module, obs: Tensor, action: Tensor, dist: Categorical | None = None) -> TokenLogits:
    """Per-token logits of a categorical policy at the taken actions. When every action is one token (an MLP,
    a numeric sequence policy), that token's distribution is the action distribution: (B, 1, n) from `dist`
    (computed here when None); otherwise the sequence policy's own (B, L, V)."""
    if getattr(policy, "tokens_per_action", 1) > 1:
        return policy.action_token_logits(obs, action)
    dist = policy(obs)[0] if dist is None else dist
    ones = torch.ones(len(obs), 1, dtype=torch.bool, device=obs.device)
    return TokenLogits(dist.logits[:, None, :], ones, action.long()[:, None])


def token_entropy(logits: TokenLogits) -> Tensor:
    """Mean entropy (nats) of the next-token distributions at the valid positions."""
    logp = torch.log_softmax(logits.logits, -1)
    entropy = -torch.where(torch.isfinite(logp), logp.exp() * logp, 0.0).sum(-1)
    return (entropy * logits.mask).sum() / logits.mask.sum().clamp(min=1)


def action_divergence(model: nn.Module, base: nn.Module, obs: Tensor) -> Tensor:
    """Mean forward KL(base || model) between the whole action distributions at `obs` (B, O)."""
    dist, _ = model(obs)
    with torch.no_grad():
        base_dist, _ = base(obs)
    if isinstance(dist, Categorical):
        return categorical_divergence(dist.logits, base_dist.logits, "forward_kl").mean()
    return gaussian_divergence(dist.loc, dist.scale, base_dist.loc, base_dist.scale, "forward_kl").mean()


@torch.no_grad()
def collect_states(policy: nn.Module, sim: FuncSim, count: int, seed: int, envs: int) -> Tensor:
    """(count, O) observations visited by `policy` (sampling its actions) in `envs` copies of `sim`."""
    device = next(policy.parameters()).device
    vector = SimVectorEnv(sim, min(envs, count), device=device)
    obs, _ = vector.reset(seed=seed)
    states = []
    for _ in range(-(-count // vector.num_envs)):
        states.append(obs)
        dist, _ = policy(obs)
        obs, *_ = vector.step(policy.env_action(dist.sample()))
    return torch.cat(states)[:count]


@dataclass
class Anchors:
    """States (and contexts, inside the views' obs) from earlier tasks, where the student must keep acting
    as the `base` (the model before consolidation) did."""

    student: nn.Module   # the student model's view on anchor obs (e.g. a sequence policy bound from obs)
    base: nn.Module      # the same view of a frozen copy of the model before consolidation
    obs: Tensor          # (M, O') anchor observations
    coef: float
    batch: int


class Distillation:
    """The OPSD term of `train_ppo` (its `AuxiliaryLoss`). `student` is the view PPO trains (it shares
    the parameters of `student_model`, which the teacher follows)."""

    def __init__(self, student: nn.Module, student_model: nn.Module, teacher: Teacher, config: OPSDConfig,
                 anchors: Anchors | None = None, seed: int = 0):
        self.student, self.student_model, self.teacher, self.config, self.anchors = student, student_model, teacher, config, anchors
        self.gaussian = not student.discrete
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    def weights(self, update: int, num_updates: int) -> tuple[float, float]:
        return self.config.schedule.weights(update, num_updates)

    def loss(self, obs: Tensor, action: Tensor, episode_step: Tensor, dist: Distribution) -> tuple[Tensor, dict[str, Tensor]]:
        valid = episode_step >= self.config.skip_first
        if self.gaussian:
            result, entropies = self._gaussian(obs, dist, valid)
        else:
            student = token_logits(self.student, obs, action, dist)
            with torch.no_grad():
                teacher = token_logits(self.teacher.view, obs, action)
            mask = student.mask & valid[:, None]
            result = token_divergence(student.logits, teacher.logits, mask, self.config.divergence, tokens=student.tokens)
            entropies = (token_entropy(student).detach(), token_entropy(teacher))
        loss = result.loss
        figures = {"opsd/divergence_raw": result.raw, "opsd/divergence_clipped": result.clipped,
                   "opsd/clip_fraction": result.clip_fraction, "opsd/student_entropy": entropies[0],
                   "opsd/teacher_entropy": entropies[1], "opsd/valid_fraction": valid.float().mean()}
        if self.anchors is not None and self.anchors.coef > 0:
            rows = torch.randint(len(self.anchors.obs), (self.anchors.batch,), generator=self.generator)
            anchor_kl = action_divergence(self.anchors.student, self.anchors.base, self.anchors.obs[rows.to(obs.device)])
            loss = loss + self.anchors.coef * anchor_kl
            figures["opsd/anchor_kl"] = anchor_kl.detach()
        return loss, figures

    def _gaussian(self, obs: Tensor, dist: Normal, valid: Tensor) -> tuple[DivergenceResult, tuple[Tensor, Tensor]]:
        with torch.no_grad():
            teacher, _ = self.teacher.view(obs)
        result = gaussian_token_divergence(dist.loc, dist.scale, teacher.loc, teacher.scale, valid, self.config.divergence)
        return result, (dist.entropy().sum(-1).mean().detach(), teacher.entropy().sum(-1).mean())

    def after_step(self) -> None:
        self.teacher.follow(self.student_model)

    def state_dict(self) -> dict:
        return {"teacher": self.teacher.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.generator.set_state(state["generator"])
