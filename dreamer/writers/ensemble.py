"""A bootstrap ensemble of small MLPs with Gaussian heads, fitted with early stopping (PETS, Chua et al. 2018).

Every member is one MLP; the members are stacked so that the whole ensemble is one batched matmul per layer:
layer `l` holds `w{l}` (M, in, out) and `b{l}` (M, 1, out). Inputs and targets are normalized by their
training mean and std, kept beside the weights (`x_mean`, `x_std`, `y_mean`, `y_std`, each (1, 1, D)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

MIN_STD = 1e-6  # floor of a normalizing std (a constant input or target)


@dataclass(frozen=True)
class EnsembleConfig:
    members: int              # MLPs in the ensemble, each fitted on its own bootstrap resample
    hidden: int               # units per hidden layer
    layers: int               # hidden layers
    epochs: int               # at most, over each member's resample
    batch_size: int
    learning_rate: float      # Adam
    weight_decay: float       # AdamW's decoupled decay
    validation_fraction: float  # share of the rows held back from fitting, to stop early on
    patience: int             # epochs in which the best validation loss falls by less than min_improvement, then stop
    min_improvement: float    # relative fall of the best validation loss that restarts the patience (MBPO: 0.01)
    probabilistic: bool       # Gaussian heads (mean and log-variance, NLL) instead of a mean (MSE)

    def __post_init__(self):
        for key in ("members", "hidden", "layers", "epochs", "batch_size", "patience"):
            if not (isinstance(getattr(self, key), int) and getattr(self, key) >= 1):
                raise ValueError(f"{key} must be an int >= 1, got {getattr(self, key)!r}")
        if not 0 <= self.min_improvement < 1:
            raise ValueError(f"min_improvement must be in [0, 1), got {self.min_improvement}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if not (self.learning_rate > 0 and self.weight_decay >= 0):
            raise ValueError(f"learning_rate must be > 0 and weight_decay >= 0, got "
                             f"{self.learning_rate} and {self.weight_decay}")


@dataclass(frozen=True)
class FitReport:
    """How one ensemble's fit went: the epoch each member stopped at and its best validation loss."""

    epochs: list[int]
    validation_mse: list[float]  # per member, in normalized target units (1.0: as wrong as predicting the mean)
    rows: int                    # fitting rows
    validation_rows: int


class Ensemble(torch.nn.Module):
    """`members` MLPs `in_dim -> out_dim` (x2 with Gaussian heads: mean, then log-variance)."""

    def __init__(self, in_dim: int, out_dim: int, config: EnsembleConfig):
        super().__init__()
        m, h, heads = config.members, config.hidden, 2 if config.probabilistic else 1
        sizes = [in_dim] + [h] * config.layers + [out_dim * heads]
        self.out_dim, self.probabilistic = out_dim, config.probabilistic
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1 / math.sqrt(fan_in)  # torch.nn.Linear's default initialization
            self.weights.append(torch.nn.Parameter(torch.empty(m, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(torch.nn.Parameter(torch.empty(m, 1, fan_out).uniform_(-bound, bound)))
        # PETS's soft bounds on the log-variance, learned (the logvar of the normalized targets).
        self.max_logvar = torch.nn.Parameter(torch.full((1, 1, out_dim), 0.5))
        self.min_logvar = torch.nn.Parameter(torch.full((1, 1, out_dim), -10.0))
        for name in ("x_mean", "x_std", "y_mean", "y_std"):
            self.register_buffer(name, torch.zeros(1, 1, in_dim if name[0] == "x" else out_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalized (M, n, in) -> normalized mean (M, n, out) and log-variance (M, n, out) or None."""
        for layer, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(bias, x, weight)
            if layer < len(self.weights) - 1:
                x = torch.nn.functional.silu(x)
        if not self.probabilistic:
            return x, None
        mean, logvar = x[..., :self.out_dim], x[..., self.out_dim:]
        logvar = self.max_logvar - torch.nn.functional.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + torch.nn.functional.softplus(logvar - self.min_logvar)
        return mean, logvar

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(M,) training loss per member on normalized (M, n, in) and (M, n, out): Gaussian NLL (+ the bound
        penalty of PETS) or MSE."""
        mean, logvar = self(x)
        if logvar is None:
            return (mean - y).pow(2).mean((1, 2))
        nll = ((mean - y).pow(2) * torch.exp(-logvar) + logvar).mean((1, 2))
        return nll + 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor the emitted sim reads, detached and contiguous: `w{l}`, `b{l}`, the normalizers and, with
        Gaussian heads, `max_logvar`/`min_logvar`."""
        tensors = {f"w{l}": w for l, w in enumerate(self.weights)} | {f"b{l}": b for l, b in enumerate(self.biases)}
        tensors |= {name: getattr(self, name) for name in ("x_mean", "x_std", "y_mean", "y_std")}
        if self.probabilistic:
            tensors |= {"max_logvar": self.max_logvar, "min_logvar": self.min_logvar}
        return {name: t.detach().float().contiguous().clone() for name, t in tensors.items()}


def fit_ensemble(x: np.ndarray, y: np.ndarray, config: EnsembleConfig, seed: int,
                 on_epoch: Callable[[int, float], None] | None = None) -> tuple[Ensemble, FitReport]:
    """An ensemble fitted to (N, in) inputs and (N, out) targets.

    A random `validation_fraction` of the rows is held back; each member trains on its own bootstrap resample
    of the rest, for at most `epochs`, and keeps the weights of its best validation loss (mean squared error
    of its mean, normalized), stopping after `patience` epochs in which that best fell by less than a fraction
    `min_improvement` of its value when the patience last restarted. `on_epoch(epoch, worst member's best
    validation loss)` is called after each epoch."""
    generator = torch.Generator().manual_seed(seed)
    n = len(x)
    order = torch.randperm(n, generator=generator)
    n_val = min(max(1, round(config.validation_fraction * n)), n - 1)
    val_rows, fit_rows = order[:n_val], order[n_val:]
    x_t, y_t = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    torch.manual_seed(seed)  # the initial weights
    model = Ensemble(x_t.shape[1], y_t.shape[1], config)
    for name, values in (("x", x_t[fit_rows]), ("y", y_t[fit_rows])):
        getattr(model, f"{name}_mean").copy_(values.mean(0))
        getattr(model, f"{name}_std").copy_(values.std(0, correction=0).clamp_min(MIN_STD))
    xn, yn = (x_t - model.x_mean[0]) / model.x_std[0], (y_t - model.y_mean[0]) / model.y_std[0]
    m, fit_n = config.members, len(fit_rows)
    resample = fit_rows[torch.randint(fit_n, (m, fit_n), generator=generator)]  # (M, fit_n) bootstrap rows
    x_val, y_val = xn[val_rows].expand(m, -1, -1), yn[val_rows].expand(m, -1, -1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)

    best = torch.full((m,), math.inf)
    anchor = best.clone()  # each member's best when its patience last restarted
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    best_epoch, waited = [0] * m, torch.zeros(m, dtype=torch.long)
    for epoch in range(1, config.epochs + 1):
        model.train()
        shuffled = resample.gather(1, torch.argsort(torch.rand(m, fit_n, generator=generator), dim=1))
        for start in range(0, fit_n, config.batch_size):
            rows = shuffled[:, start:start + config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            model.loss(xn[rows], yn[rows]).sum().backward()
            optimizer.step()
        with torch.no_grad():
            mse = (model(x_val)[0] - y_val).pow(2).mean((1, 2))
        improved = mse < best
        for member in torch.nonzero(improved).flatten().tolist():
            for key, value in model.state_dict().items():
                if value.shape[:1] == (m,) and value.ndim == 3 and key.startswith(("weights", "biases")):
                    best_state[key][member] = value[member]
            best_epoch[member] = epoch
        progressed = mse < anchor * (1 - config.min_improvement)
        best, anchor = torch.where(improved, mse, best), torch.where(progressed, mse, anchor)
        waited = torch.where(progressed, 0, waited + 1)
        if on_epoch is not None:
            on_epoch(epoch, float(best.max()))
        if bool((waited >= config.patience).all()):
            break
    shared = {k: v for k, v in model.state_dict().items() if not k.startswith(("weights", "biases"))}
    model.load_state_dict(best_state | shared)
    model.eval()
    return model, FitReport(best_epoch, best.tolist(), fit_n, n_val)
