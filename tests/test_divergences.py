import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Normal, kl_divergence

from dreamer.opsd.divergences import (
    DivergenceConfig,
    categorical_divergence,
    gaussian_divergence,
    gaussian_token_divergence,
    token_divergence,
)

KIND_BETAS = [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3)]
ALL_CASES = [(kind, beta, estimator) for kind, beta in KIND_BETAS for estimator in ("exact", "chunked", "topk")]
ALL_CASES.append(("reverse_kl", 0.5, "sampled"))


def config(**overrides) -> DivergenceConfig:
    settings = dict(kind="forward_kl", beta=0.5, estimator="exact", chunk_size=4, top_k=3, clip=None)
    return DivergenceConfig(**{**settings, **overrides})


def logits_pair(*shape, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=generator, dtype=dtype) for _ in range(2))


def student_samples(student_logits: torch.Tensor, seed=0) -> torch.Tensor:
    """(N, L, V) logits -> (N, L) tokens sampled from the student."""
    generator = torch.Generator().manual_seed(seed)
    probs = student_logits.detach().softmax(-1)
    return torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(probs.shape[:-1])


def reference_divergence(p_s: np.ndarray, p_t: np.ndarray, kind: str, beta: float) -> float:
    """Divergence of `kind` between two probability vectors, in float64 with plain loops, from the definitions."""
    def kl(p, q):
        return sum(p[v] * (math.log(p[v]) - math.log(q[v])) for v in range(len(p)) if p[v] > 0)

    if kind == "forward_kl":
        return kl(p_t, p_s)
    if kind == "reverse_kl":
        return kl(p_s, p_t)
    m = [beta * p_t[v] + (1 - beta) * p_s[v] for v in range(len(p_s))]
    return (beta * kl(p_t, m) + (1 - beta) * kl(p_s, m)) / (beta * (1 - beta))


# --- categorical_divergence -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl"])
def test_kl_matches_torch_distributions(kind):
    student, teacher = logits_pair(4, 6, 11)
    p, q = (Categorical(logits=teacher), Categorical(logits=student))
    expected = kl_divergence(p, q) if kind == "forward_kl" else kl_divergence(q, p)
    torch.testing.assert_close(categorical_divergence(student, teacher, kind), expected)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_matches_float64_reference(beta):
    student, teacher = logits_pair(5, 9, dtype=torch.float64)
    p_s, p_t = student.softmax(-1).numpy(), teacher.softmax(-1).numpy()
    expected = torch.tensor([reference_divergence(p_s[i], p_t[i], "jsd", beta) for i in range(5)])
    torch.testing.assert_close(categorical_divergence(student, teacher, "jsd", beta), expected)


def test_jsd_endpoints_are_the_kls_and_it_is_continuous_there():
    student, teacher = logits_pair(16, 50, dtype=torch.float64)  # float64: no cancellation at beta -> 0, 1
    forward = categorical_divergence(student, teacher, "forward_kl")
    reverse = categorical_divergence(student, teacher, "reverse_kl")
    assert torch.equal(categorical_divergence(student, teacher, "jsd", 0.0), forward)
    assert torch.equal(categorical_divergence(student, teacher, "jsd", 1.0), reverse)
    torch.testing.assert_close(categorical_divergence(student, teacher, "jsd", 1e-4), forward, rtol=1e-2, atol=0)
    torch.testing.assert_close(categorical_divergence(student, teacher, "jsd", 1 - 1e-4), reverse, rtol=1e-2, atol=0)
    # and away from the ends it is neither
    assert not torch.allclose(categorical_divergence(student, teacher, "jsd", 0.5), forward, rtol=1e-2)


@pytest.mark.parametrize("beta", [0.0, 0.2, 0.5, 0.7, 1.0])
def test_jsd_swap_symmetry(beta):
    student, teacher = logits_pair(8, 13)
    torch.testing.assert_close(categorical_divergence(student, teacher, "jsd", beta),
                               categorical_divergence(teacher, student, "jsd", 1 - beta))


@pytest.mark.parametrize("kind, beta", KIND_BETAS)
def test_nonnegative_and_zero_at_equality(kind, beta):
    student, teacher = logits_pair(32, 20)
    assert (categorical_divergence(student, teacher, kind, beta) >= 0).all()
    torch.testing.assert_close(categorical_divergence(student, student, kind, beta), torch.zeros(32))


@pytest.mark.parametrize("kind, beta, estimator", ALL_CASES)
def test_every_estimator_is_zero_at_equality(kind, beta, estimator):
    student, _ = logits_pair(2, 5, 20)
    result = token_divergence(student, student.clone(), torch.ones(2, 5, dtype=torch.bool),
                              config(kind=kind, beta=beta, estimator=estimator), tokens=student_samples(student))
    torch.testing.assert_close(result.per_token, torch.zeros(2, 5))


def test_low_precision_logits_are_upcast():
    student, teacher = logits_pair(4, 7, 30)
    value = categorical_divergence(student.bfloat16(), teacher.bfloat16(), "jsd")
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, categorical_divergence(student.bfloat16().float(), teacher.bfloat16().float(), "jsd"))


def test_unknown_kind_is_an_error():
    student, teacher = logits_pair(2, 5)
    with pytest.raises(ValueError, match="kind must be one of"):
        categorical_divergence(student, teacher, "kl")


# --- -inf logits (constrained decoding) -------------------------------------------------------------------------


@pytest.mark.parametrize("top_k", [3, 8])
@pytest.mark.parametrize("kind, beta, estimator", ALL_CASES)
def test_minus_inf_logits_are_zero_probability_tokens(kind, beta, estimator, top_k):
    base_student, teacher = logits_pair(3, 4, 8)
    banned = torch.tensor([2, 5])
    base_student[..., banned] = -math.inf
    teacher[..., banned] = -math.inf
    student = base_student.clone().requires_grad_(True)
    mask = torch.ones(3, 4, dtype=torch.bool)
    cfg = config(kind=kind, beta=beta, estimator=estimator, top_k=top_k)
    tokens = student_samples(student)
    result = token_divergence(student, teacher, mask, cfg, tokens=tokens)
    result.loss.backward()

    kept = torch.tensor([v for v in range(8) if v not in banned.tolist()])
    remap = torch.full((8,), -1).index_put((kept,), torch.arange(len(kept)))
    expected = token_divergence(base_student[..., kept], teacher[..., kept], mask, cfg, tokens=remap[tokens])
    assert torch.isfinite(result.per_token).all()
    torch.testing.assert_close(result.per_token, expected.per_token)
    assert torch.isfinite(student.grad).all()
    assert (student.grad[..., banned] == 0).all()


# --- estimators ----------------------------------------------------------------------------------------------------


def masked_inputs(n=3, length=7, vocab=5000):
    student, teacher = logits_pair(n, length, vocab)
    mask = (torch.arange(n * length) % 5 != 3).view(n, length)  # 17 of 21 positions valid
    return student.requires_grad_(True), teacher, mask


@pytest.mark.parametrize("kind, beta", KIND_BETAS)
def test_chunked_equals_exact_in_values_and_gradients(kind, beta):
    student, teacher, mask = masked_inputs()
    assert mask.sum() % 4 != 0  # the last chunk is a partial one
    results = {}
    for estimator in ("exact", "chunked"):
        student.grad = None
        result = token_divergence(student, teacher, mask, config(kind=kind, beta=beta, estimator=estimator))
        result.loss.backward()
        results[estimator] = result, student.grad.clone()
    (exact, exact_grad), (chunked, chunked_grad) = results["exact"], results["chunked"]
    torch.testing.assert_close(chunked.per_token, exact.per_token)
    torch.testing.assert_close(chunked.loss, exact.loss)
    torch.testing.assert_close(chunked_grad, exact_grad)


def test_chunked_stores_no_vocabulary_sized_temporaries_for_backward():
    student, teacher, mask = masked_inputs()
    inputs = 2 * int(mask.sum()) * student.shape[-1]  # the valid rows of student and teacher
    saved = {}
    for estimator in ("exact", "chunked"):
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda x: sizes.append(x.numel()) or x, lambda x: x):
            token_divergence(student, teacher, mask, config(kind="jsd", estimator=estimator))
        saved[estimator] = sum(sizes)
    assert saved["chunked"] < 1.1 * inputs < saved["exact"]


@pytest.mark.parametrize("kind, beta", KIND_BETAS)
def test_topk_with_the_whole_vocabulary_is_exact(kind, beta):
    student, teacher, mask = masked_inputs(vocab=50)
    exact = token_divergence(student, teacher, mask, config(kind=kind, beta=beta))
    for top_k in (50, 64):
        topk = token_divergence(student, teacher, mask, config(kind=kind, beta=beta, estimator="topk", top_k=top_k))
        torch.testing.assert_close(topk.per_token, exact.per_token)


@pytest.mark.parametrize("kind, beta", KIND_BETAS)
def test_topk_is_the_divergence_of_the_coarsened_distributions(kind, beta):
    student, teacher = logits_pair(6, 40)
    top_k = 5
    result = token_divergence(student[None], teacher[None], torch.ones(1, 6, dtype=torch.bool),
                              config(kind=kind, beta=beta, estimator="topk", top_k=top_k))
    p_s, p_t = student.double().softmax(-1).numpy(), teacher.double().softmax(-1).numpy()
    expected = []
    for i in range(6):
        ids = np.argsort(-p_t[i])[:top_k]
        coarse_s, coarse_t = (np.append(p[i][ids], 1 - p[i][ids].sum()) for p in (p_s, p_t))
        expected.append(reference_divergence(coarse_s, coarse_t, kind, beta))
    torch.testing.assert_close(result.per_token[0].double(), torch.tensor(expected), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind, beta", KIND_BETAS)
def test_topk_obeys_the_data_processing_inequality(kind, beta):
    student, teacher, mask = masked_inputs(vocab=200)
    exact = token_divergence(student, teacher, mask, config(kind=kind, beta=beta)).per_token
    for top_k in (1, 4, 32):
        topk = token_divergence(student, teacher, mask, config(kind=kind, beta=beta, estimator="topk", top_k=top_k))
        assert (topk.per_token <= exact + 1e-6).all()
        assert (topk.per_token[mask] < exact[mask]).any()  # a real coarsening loses something


def test_sampled_value_and_gradient_are_unbiased_for_reverse_kl():
    samples, vocab = 20_000, 10
    student_row, teacher_row = logits_pair(vocab, seed=3)
    student_row.requires_grad_(True)
    exact = categorical_divergence(student_row, teacher_row, "reverse_kl")
    (exact_grad,) = torch.autograd.grad(exact, student_row)

    student = student_row.expand(samples, 1, vocab)
    teacher = teacher_row.expand(samples, 1, vocab)
    result = token_divergence(student, teacher, torch.ones(samples, 1, dtype=torch.bool),
                              config(kind="reverse_kl", estimator="sampled"), tokens=student_samples(student))
    (grad,) = torch.autograd.grad(result.loss, student_row)

    v = result.per_token[:, 0]
    standard_error = v.std() / math.sqrt(samples)
    assert abs(result.raw - exact) < 4 * standard_error
    torch.testing.assert_close(result.loss.detach(), result.raw)
    # With 20k samples the Monte-Carlo error of the mean gradient is ~1/sqrt(20k) of its spread: ~3% here.
    assert torch.cosine_similarity(grad, exact_grad, dim=0) > 0.95
    assert (grad - exact_grad).norm() < 0.15 * exact_grad.norm()


def test_sampled_needs_tokens():
    student, teacher = logits_pair(2, 3, 5)
    with pytest.raises(ValueError, match="tokens"):
        token_divergence(student, teacher, torch.ones(2, 3, dtype=torch.bool),
                         config(kind="reverse_kl", estimator="sampled"))


# --- gradients, masking, clipping -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, beta, estimator", ALL_CASES)
def test_teacher_gets_no_gradient(kind, beta, estimator):
    student, teacher = logits_pair(2, 5, 30)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    result = token_divergence(student, teacher, torch.ones(2, 5, dtype=torch.bool),
                              config(kind=kind, beta=beta, estimator=estimator), tokens=student_samples(student))
    result.loss.backward()
    assert teacher.grad is None
    assert student.grad.abs().sum() > 0


@pytest.mark.parametrize("kind, beta, estimator", ALL_CASES)
def test_masked_positions_change_nothing(kind, beta, estimator):
    student, teacher = logits_pair(3, 6, 30)
    mask = torch.rand(3, 6, generator=torch.Generator().manual_seed(1)) > 0.4
    tokens = student_samples(student)
    cfg = config(kind=kind, beta=beta, estimator=estimator)

    def run(student, teacher):
        student = student.clone().requires_grad_(True)
        result = token_divergence(student, teacher, mask, cfg, tokens=tokens)
        result.loss.backward()
        return result, student.grad

    result, grad = run(student, teacher)
    garbage_student, garbage_teacher = student.clone(), teacher.clone()
    garbage_student[~mask] = torch.randn(int((~mask).sum()), 30) * 10
    garbage_teacher[~mask] = -math.inf  # even rows that would be NaN must not leak
    garbage_result, garbage_grad = run(garbage_student, garbage_teacher)

    assert (result.per_token[~mask] == 0).all() and (result.per_token[mask] != 0).all()
    torch.testing.assert_close(garbage_result.loss, result.loss)
    torch.testing.assert_close(garbage_result.per_token, result.per_token)
    torch.testing.assert_close(garbage_grad, grad)
    assert (grad[~mask] == 0).all()
    expected_loss = categorical_divergence(student, teacher, kind, beta)[mask].mean()
    if estimator == "exact":
        torch.testing.assert_close(result.loss, expected_loss)


@pytest.mark.parametrize("estimator", ["exact", "chunked"])
def test_no_valid_position_gives_zero(estimator):
    student, teacher = logits_pair(2, 3, 7)
    student.requires_grad_(True)
    result = token_divergence(student, teacher, torch.zeros(2, 3, dtype=torch.bool), config(estimator=estimator))
    result.loss.backward()
    assert result.loss == 0 and result.raw == 0 and result.clip_fraction == 0
    assert (student.grad == 0).all()


@pytest.mark.parametrize("kind, beta, estimator", ALL_CASES)
def test_clipping(kind, beta, estimator):
    student, teacher = logits_pair(4, 8, 30)
    student.requires_grad_(True)
    mask = torch.ones(4, 8, dtype=torch.bool)
    mask[0, :3] = False
    tokens = student_samples(student)
    unclipped = token_divergence(student, teacher, mask, config(kind=kind, beta=beta, estimator=estimator),
                                 tokens=tokens)
    d = unclipped.per_token[mask]
    clip = d.median().item()
    result = token_divergence(student, teacher, mask, config(kind=kind, beta=beta, estimator=estimator, clip=clip),
                              tokens=tokens)
    (grad,) = torch.autograd.grad(result.loss, student)

    torch.testing.assert_close(result.loss, d.clamp(max=clip).mean())
    torch.testing.assert_close(result.clipped, result.loss.detach())
    torch.testing.assert_close(result.raw, d.mean())
    torch.testing.assert_close(result.per_token, unclipped.per_token)
    assert result.clip_fraction == (d > clip).float().mean()
    assert 0 < result.clip_fraction < 1
    above = mask & (unclipped.per_token > clip)
    below = mask & (unclipped.per_token < clip)
    assert (grad[above] == 0).all()
    assert (grad[below].abs().sum(-1) > 0).all()
    assert unclipped.clip_fraction == 0


# --- Gaussian policies ---------------------------------------------------------------------------------------------


def gaussian_pair(n=6, actions=3):
    generator = torch.Generator().manual_seed(0)
    means = [torch.randn(n, actions, generator=generator) for _ in range(2)]
    stds = [torch.rand(n, actions, generator=generator) + 0.2 for _ in range(2)]
    return means[0], stds[0], means[1], stds[1]


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl"])
def test_gaussian_matches_torch_distributions(kind):
    s_mean, s_std, t_mean, t_std = gaussian_pair()
    student, teacher = Normal(s_mean, s_std), Normal(t_mean, t_std)
    expected = (kl_divergence(teacher, student) if kind == "forward_kl" else kl_divergence(student, teacher)).sum(-1)
    torch.testing.assert_close(gaussian_divergence(s_mean, s_std, t_mean, t_std, kind), expected)


def test_gaussian_jsd_is_an_error():
    with pytest.raises(ValueError, match="forward_kl or reverse_kl"):
        gaussian_divergence(*gaussian_pair(), "jsd")


def test_gaussian_token_divergence_masks_clips_and_keeps_the_teacher_out():
    s_mean, s_std, t_mean, t_std = gaussian_pair()
    s_mean.requires_grad_(True)
    t_mean.requires_grad_(True)
    mask = torch.tensor([True, True, False, True, True, True])
    d = gaussian_divergence(s_mean, s_std, t_mean, t_std, "reverse_kl").detach()
    clip = d[mask].median().item()
    result = gaussian_token_divergence(s_mean, s_std, t_mean, t_std, mask, config(kind="reverse_kl", clip=clip))
    result.loss.backward()

    assert result.per_token.shape == (6, 1)
    torch.testing.assert_close(result.per_token[:, 0], torch.where(mask, d, 0))
    torch.testing.assert_close(result.loss, d[mask].clamp(max=clip).mean())
    torch.testing.assert_close(result.raw, d[mask].mean())
    assert result.clip_fraction == (d[mask] > clip).float().mean()
    assert t_mean.grad is None
    assert (s_mean.grad[~mask | (d > clip)] == 0).all()
    assert (s_mean.grad[mask & (d < clip)].abs().sum(-1) > 0).all()


# --- config -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, field", [
    (dict(kind="kl"), "kind"),
    (dict(estimator="mc"), "estimator"),
    (dict(beta=-0.1), "beta"),
    (dict(beta=1.5), "beta"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(top_k=0), "top_k"),
    (dict(clip=0.0), "clip"),
    (dict(estimator="sampled", kind="forward_kl"), "estimator='sampled'"),
    (dict(estimator="sampled", kind="jsd"), "estimator='sampled'"),
])
def test_config_rejects_bad_values(overrides, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        config(**overrides)


def test_config_accepts_good_values():
    cfg = config(kind="jsd", beta=0, estimator="topk", top_k=64, clip=5)
    assert replace(cfg, estimator="sampled", kind="reverse_kl").estimator == "sampled"
