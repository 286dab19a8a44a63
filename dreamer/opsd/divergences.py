"""Per-token divergences between a student and a teacher policy, for on-policy self-distillation (OPSD).

Shapes: N = samples, L = token positions, V = vocabulary, A = action dims, M = valid (unmasked) positions.
S is the student's distribution, T the teacher's, at one position.

- forward_kl:  KL(T || S) = sum_v pT (log pT - log pS)   (mode-covering)
- reverse_kl:  KL(S || T) = sum_v pS (log pS - log pT)   (mode-seeking)
- jsd:         generalized Jensen-Shannon divergence with mixture M = beta*T + (1-beta)*S:
                   JSD_beta = [beta*KL(T || M) + (1-beta)*KL(S || M)] / (beta*(1-beta))   for 0 < beta < 1,
               and exactly forward KL at beta = 0, reverse KL at beta = 1. Dividing by beta*(1-beta) makes it
               continuous at both ends: beta -> 0 tends to KL(T || S), beta -> 1 to KL(S || T).
               JSD_beta(S, T) == JSD_{1-beta}(T, S).

Tokens with logit -inf (masked out by constrained decoding; at the same places in student and teacher) have
probability 0 and contribute 0, with no NaN in values or gradients. Log-probs are computed in at least float32.

Estimators of the per-token divergence (`DivergenceConfig.estimator`), each over the M valid positions only:
- exact:   the divergence over the whole vocabulary.
- chunked: the same values and gradients, computed `chunk_size` positions at a time under activation
           checkpointing, so the (chunk, V) softmax temporaries are recomputed in backward, not stored.
- topk:    the divergence over the teacher's `top_k` tokens plus one tail bucket holding the rest of each
           distribution's mass; by the data-processing inequality it is <= the exact divergence.
- sampled: reverse KL only: v = log pS(a) - log pT(a) at the token a the student sampled (E_{a~S}[v] = KL(S || T)),
           trained through the score-function surrogate v + v.detach() * (log pS(a) - log pS(a).detach()),
           whose value is v and whose gradient (1 + v) * grad log pS(a) is unbiased for grad KL(S || T).

Each token's divergence d is clipped at `clip` (a clipped token counts as `clip` and gives no gradient); the loss
is the mean of the clipped values over the valid tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

KINDS = ("forward_kl", "reverse_kl", "jsd")
ESTIMATORS = ("exact", "chunked", "topk", "sampled")


@dataclass(frozen=True)
class DivergenceConfig:
    kind: str            # forward_kl = KL(teacher || student); reverse_kl = KL(student || teacher); jsd = JSD(beta)
    beta: float          # jsd only: 0 -> forward KL, 1 -> reverse KL
    estimator: str       # exact | chunked | topk | sampled (sampled: reverse_kl only)
    chunk_size: int      # chunked: token positions per chunk
    top_k: int           # topk: teacher's top-k tokens kept, the rest pooled in one tail bucket
    clip: float | None   # a token's divergence above this counts as `clip`, with no gradient (None: no clipping)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if not _is_number(self.beta) or not 0 <= self.beta <= 1:
            raise ValueError(f"beta must be a number in [0, 1], got {self.beta!r}")
        for key in ("chunk_size", "top_k"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        if self.clip is not None and (not _is_number(self.clip) or not self.clip > 0):
            raise ValueError(f"clip must be None or a number > 0, got {self.clip!r}")
        if self.estimator == "sampled" and self.kind != "reverse_kl":
            raise ValueError(f"estimator='sampled' is defined for kind='reverse_kl' only, got kind={self.kind!r}; "
                             f"use estimator exact, chunked or topk for {self.kind}")


@dataclass(frozen=True)
class DivergenceResult:
    loss: torch.Tensor           # scalar, differentiable w.r.t. the student: mean clipped divergence over valid tokens
    raw: torch.Tensor            # scalar, detached: mean unclipped divergence over valid tokens
    clipped: torch.Tensor        # scalar, detached: loss.detach()
    clip_fraction: torch.Tensor  # scalar, detached: share of valid tokens whose divergence exceeded clip
    per_token: torch.Tensor      # (N, L) detached unclipped divergences, 0 where masked


def categorical_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str,
                           beta: float = 0.5) -> torch.Tensor:
    """(..., V) logits each -> (...,) exact per-token divergence over the whole vocabulary."""
    return _divergence(_log_probs(student_logits), _log_probs(teacher_logits), kind, beta)


def token_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                     config: DivergenceConfig, tokens: torch.Tensor | None = None) -> DivergenceResult:
    """Masked mean of the per-token divergence, estimated as `config.estimator` says.

    student_logits, teacher_logits: (N, L, V) logits at L token positions of N samples; mask (N, L) bool: which
    positions count; tokens (N, L) long: the tokens the student sampled (needed by estimator='sampled').
    The teacher's logits are detached inside (gradients flow only through the student). Only the valid
    positions enter the computation, so masked positions may hold any logits.
    """
    student, teacher = student_logits[mask], teacher_logits.detach()[mask]  # (M, V)
    kind, beta = config.kind, config.beta
    if config.estimator == "exact":
        divergence = categorical_divergence(student, teacher, kind, beta)
    elif config.estimator == "chunked":
        divergence = torch.cat([
            checkpoint(categorical_divergence, s, t, kind, beta, use_reentrant=False)
            for s, t in zip(student.split(config.chunk_size), teacher.split(config.chunk_size))
        ])
    elif config.estimator == "topk":
        divergence = _topk_divergence(_log_probs(student), _log_probs(teacher), kind, beta, config.top_k)
    else:
        if tokens is None:
            raise ValueError("estimator='sampled' needs `tokens`, the (N, L) tokens the student sampled")
        divergence = _sampled_reverse_kl(_log_probs(student), _log_probs(teacher), tokens[mask])
    return _reduce(divergence, mask, config.clip)


def gaussian_divergence(student_mean: torch.Tensor, student_std: torch.Tensor, teacher_mean: torch.Tensor,
                        teacher_std: torch.Tensor, kind: str) -> torch.Tensor:
    """(N, A) each -> (N,) closed-form KL between diagonal Gaussians, summed over the A action dims."""
    if kind == "forward_kl":
        return _gaussian_kl(teacher_mean, teacher_std, student_mean, student_std)
    if kind == "reverse_kl":
        return _gaussian_kl(student_mean, student_std, teacher_mean, teacher_std)
    if kind == "jsd":
        raise ValueError("kind='jsd' has no closed form for Gaussian policies; use kind forward_kl or reverse_kl")
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def gaussian_token_divergence(student_mean: torch.Tensor, student_std: torch.Tensor, teacher_mean: torch.Tensor,
                              teacher_std: torch.Tensor, mask: torch.Tensor,
                              config: DivergenceConfig) -> DivergenceResult:
    """Masked mean of the per-step Gaussian divergence: (N, A) each, mask (N,) bool -> per_token (N, 1).

    The teacher is detached inside. The closed form is exact, so `config.estimator` does not apply here.
    """
    divergence = gaussian_divergence(student_mean[mask], student_std[mask], teacher_mean.detach()[mask],
                                     teacher_std.detach()[mask], config.kind)
    return _reduce(divergence, mask[:, None], config.clip)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    """(..., V) logits -> (..., V) log-probs, in float32 at least (bf16/fp16 logits are upcast)."""
    return logits.log_softmax(-1, dtype=torch.promote_types(logits.dtype, torch.float32))


def _divergence(log_s: torch.Tensor, log_t: torch.Tensor, kind: str, beta: float) -> torch.Tensor:
    """(..., C) student and teacher log-probs -> (...,) divergence of `kind` over the C categories."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "jsd" and not 0 <= beta <= 1:
        raise ValueError(f"beta must be in [0, 1], got {beta!r}")
    if kind == "forward_kl" or (kind == "jsd" and beta == 0):
        return _kl(log_t, log_s)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1):
        return _kl(log_s, log_t)
    log_m = _log_mixture(log_t, log_s, beta)
    return (beta * _kl(log_t, log_m) + (1 - beta) * _kl(log_s, log_m)) / (beta * (1 - beta))


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """(..., C) log-probs each -> (...,) KL(p || q); categories with p = 0 add 0 (and no NaN gradient)."""
    live = ~torch.isneginf(log_p)
    log_p, log_q = torch.where(live, log_p, 0.0), torch.where(live, log_q, 0.0)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _log_mixture(log_t: torch.Tensor, log_s: torch.Tensor, beta: float) -> torch.Tensor:
    """log(beta*T + (1-beta)*S), elementwise and stable; -inf where both are 0 (with no NaN gradient)."""
    dead = torch.isneginf(log_t) & torch.isneginf(log_s)
    terms = torch.stack([log_t + math.log(beta), log_s + math.log1p(-beta)])
    return torch.where(dead, -math.inf, torch.where(dead, 0.0, terms).logsumexp(0))


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, stable; x is clamped to <= -eps, so the result stays finite."""
    x = x.clamp(max=-torch.finfo(x.dtype).eps)
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _topk_divergence(log_s: torch.Tensor, log_t: torch.Tensor, kind: str, beta: float, k: int) -> torch.Tensor:
    """(M, V) log-probs each -> (M,) divergence over the teacher's top-k tokens plus one tail bucket."""
    ids = log_t.topk(min(k, log_t.shape[-1]), dim=-1).indices  # (M, k)

    def coarsen(log_p: torch.Tensor) -> torch.Tensor:  # (M, V) -> (M, k + 1)
        kept = log_p.gather(-1, ids)
        return torch.cat([kept, _log1mexp(kept.logsumexp(-1, keepdim=True))], dim=-1)

    return _divergence(coarsen(log_s), coarsen(log_t), kind, beta)


def _sampled_reverse_kl(log_s: torch.Tensor, log_t: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(M, V) log-probs each, (M,) sampled tokens -> (M,) surrogate whose value is v = log pS(a) - log pT(a)."""
    log_s_a = log_s.gather(-1, tokens[:, None]).squeeze(-1)
    v = log_s_a - log_t.gather(-1, tokens[:, None]).squeeze(-1)
    return v + v.detach() * (log_s_a - log_s_a.detach())


def _gaussian_kl(mean_p: torch.Tensor, std_p: torch.Tensor, mean_q: torch.Tensor, std_q: torch.Tensor) -> torch.Tensor:
    """(N, A) each -> (N,) KL(p || q) between diagonal Gaussians, summed over A."""
    var_p, var_q = std_p.square(), std_q.square()
    return (torch.log(std_q / std_p) + (var_p + (mean_p - mean_q).square()) / (2 * var_q) - 0.5).sum(-1)


def _reduce(divergence: torch.Tensor, mask: torch.Tensor, clip: float | None) -> DivergenceResult:
    """(M,) per-token divergences at the valid positions of `mask` (any shape) -> masked means and per_token."""
    count = max(1, divergence.numel())
    raw = divergence.detach()
    clipped = divergence if clip is None else divergence.clamp(max=clip)
    loss = clipped.sum() / count
    exceeded = torch.zeros_like(raw) if clip is None else (raw > clip).to(raw.dtype)
    return DivergenceResult(
        loss=loss,
        raw=raw.sum() / count,
        clipped=loss.detach(),
        clip_fraction=exceeded.sum() / count,
        per_token=raw.new_zeros(mask.shape).masked_scatter(mask, raw),
    )
