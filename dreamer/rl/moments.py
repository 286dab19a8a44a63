"""Running mean and variance, merged a batch at a time (Chan et al., 1979), for the statistics that training
keeps as it goes: the policy's observation statistics and PPO's return scale."""

from __future__ import annotations

from torch import Tensor


def merge_moments(count: Tensor, mean: Tensor, var: Tensor, batch: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The (count, mean, population variance) of `count` values merged with a (B, ...) batch's B rows: the
    new (count, mean, var), in the dtype of `mean` (float64 keeps millions of merges exact enough)."""
    batch = batch.to(mean.dtype)
    n, total = batch.shape[0], count + batch.shape[0]
    delta = batch.mean(0) - mean
    m2 = var * count + batch.var(0, unbiased=False) * n + delta**2 * count * n / total
    return total, mean + delta * n / total, m2 / total
