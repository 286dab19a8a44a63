"""Actor-critic MLP policies for Discrete and Box action spaces, and their save/load format.

A saved policy is a folder: `policy.pt` (a state dict, loaded with `weights_only=True`) and
`policy.json` (the spaces and the architecture), so loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from gymnasium import spaces
from torch import nn
from torch.distributions import Categorical, Distribution, Normal

from dreamer.artifacts import atomic_path, write_text
from dreamer.rl.moments import merge_moments
from dreamer.rl.policy_folder import read_policy_meta
from dreamer.rl.sequence import load_sequence_policy
from dreamer.sim.contract import space_from_dict, space_to_dict


@dataclass(frozen=True)
class MLPPolicyConfig:
    hidden_sizes: list[int]
    activation: str          # a torch.nn activation class name, e.g. "Tanh"
    initial_log_std: float   # Box actions: starting log std of the Gaussian

    def __post_init__(self):
        if any(size < 1 for size in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive ints, got {self.hidden_sizes}")
        if self.activation not in nn.modules.activation.__all__:
            raise ValueError(f"activation must be one of {nn.modules.activation.__all__}, got {self.activation!r}")
        if not math.isfinite(self.initial_log_std):
            raise ValueError(f"initial_log_std must be a finite number, got {self.initial_log_std}")


def mlp(sizes: list[int], activation: str, out_gain: float) -> nn.Sequential:
    """Orthogonally initialised MLP (CleanRL's scheme): hidden gain √2, output gain `out_gain`."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        linear = nn.Linear(fan_in, fan_out)
        nn.init.orthogonal_(linear.weight, out_gain if last else np.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(getattr(nn, activation)())
    return nn.Sequential(*layers)


class MLPPolicy(nn.Module):
    """Separate actor and critic MLPs over standardised observations.

    `obs_mean`/`obs_std` (O,) start from `set_obs_stats` (the session trace) and, when PPO runs with
    `update_obs_stats`, follow every rollout's observations (`update_obs_stats`); `obs_count` is how many
    observations they summarise. All three are saved with the weights.
    """

    def __init__(self, observation_space: spaces.Box, action_space: spaces.Space, config: MLPPolicyConfig):
        super().__init__()
        self.observation_space, self.action_space, self.config = observation_space, action_space, config
        obs_dim = int(np.prod(observation_space.shape))
        self.discrete = isinstance(action_space, spaces.Discrete)
        act_dim = int(action_space.n) if self.discrete else int(np.prod(action_space.shape))
        self.actor = mlp([obs_dim, *config.hidden_sizes, act_dim], config.activation, out_gain=0.01)
        self.critic = mlp([obs_dim, *config.hidden_sizes, 1], config.activation, out_gain=1.0)
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.register_buffer("obs_count", torch.zeros((), dtype=torch.float64))
        if not self.discrete:
            self.log_std = nn.Parameter(torch.full((act_dim,), config.initial_log_std))
            self.register_buffer("action_low", torch.as_tensor(action_space.low, dtype=torch.float32))
            self.register_buffer("action_high", torch.as_tensor(action_space.high, dtype=torch.float32))

    def set_obs_stats(self, mean: np.ndarray, std: np.ndarray, count: int = 1) -> None:
        """(O,) mean and std of `count` observations."""
        self.obs_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.obs_std.copy_(torch.as_tensor(np.maximum(std, 1e-6), dtype=torch.float32))
        self.obs_count.fill_(count)

    @torch.no_grad()
    def update_obs_stats(self, obs: torch.Tensor) -> None:
        """Merge a (B, O) batch of observations into the statistics (the parallel mean/variance update of
        Chan et al., as in Gymnasium's `NormalizeObservation`), so they cover the states the policy now visits."""
        count, mean, var = merge_moments(self.obs_count, self.obs_mean.double(), self.obs_std.double() ** 2,
                                         obs.reshape(-1, self.obs_mean.numel()))
        self.obs_mean.copy_(mean)
        self.obs_std.copy_(var.sqrt().clamp_min(1e-6))
        self.obs_count.copy_(count)

    def normalise(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.clamp((obs - self.obs_mean) / self.obs_std, -10.0, 10.0)

    def distribution(self, obs: torch.Tensor) -> Distribution:
        out = self.actor(self.normalise(obs))
        if self.discrete:
            return Categorical(logits=out, validate_args=False)
        return Normal(out, self.log_std.exp().expand_as(out), validate_args=False)

    def forward(self, obs: torch.Tensor) -> tuple[Distribution, torch.Tensor]:
        """(B, O) -> (action distribution with batch shape (B,), (B,) state values)."""
        return self.distribution(obs), self.value(obs)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, O) -> (B,) state values."""
        return self.critic(self.normalise(obs)).squeeze(-1)

    def log_prob(self, dist: Distribution, action: torch.Tensor) -> torch.Tensor:
        """(B,) log-probability of the (unclipped) actions; Box dims are summed."""
        logp = dist.log_prob(action)
        return logp if self.discrete else logp.sum(-1)

    def entropy(self, dist: Distribution) -> torch.Tensor:
        ent = dist.entropy()
        return ent if self.discrete else ent.sum(-1)

    def env_action(self, action: torch.Tensor) -> torch.Tensor:
        """Sampled action -> an action valid in the env's space (Box actions clipped)."""
        return action if self.discrete else torch.clamp(action, self.action_low, self.action_high)

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray | int:
        """One observation (O,) or a batch (B, O) -> action(s) valid for the action space."""
        obs_t = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.obs_mean.device)
        single = obs_t.ndim == 1
        dist = self.distribution(obs_t.reshape(-1, self.obs_mean.numel()))
        if deterministic:
            action = dist.probs.argmax(-1) if self.discrete else dist.mean
        else:
            action = dist.sample()
        action = self.env_action(action).cpu().numpy()
        if self.discrete:
            action = action.astype(np.int64)
            return int(action[0]) if single else action
        return action[0].astype(np.float32) if single else action.astype(np.float32)

    def save(self, folder: str | Path) -> Path:
        """Write `policy.pt` and `policy.json` into `folder` (each atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "kind": "mlp",
            "observation_space": space_to_dict(self.observation_space),
            "action_space": space_to_dict(self.action_space),
            "config": asdict(self.config),
        }
        with atomic_path(folder / "policy.pt") as tmp:
            torch.save({key: value.detach().cpu() for key, value in self.state_dict().items()}, tmp)
        write_text(folder / "policy.json", json.dumps(meta, indent=2))  # keeps infinite bounds (Infinity)
        return folder


def load_policy(path: str | Path, device: str = "cpu") -> nn.Module:
    """Load a saved policy folder (or a run dir holding `policy/`) for acting: `.act(obs)`.

    An MLP policy, or a sequence policy (`dreamer.rl.sequence`): the one saved, bound to the context it was
    saved with (an unbound one acts with an empty context)."""
    folder, meta = read_policy_meta(path)
    if meta["kind"] == "sequence":
        return load_sequence_policy(folder, device)
    policy = MLPPolicy(
        space_from_dict(meta["observation_space"]),
        space_from_dict(meta["action_space"]),
        MLPPolicyConfig(**meta["config"]),
    )
    policy.load_state_dict(torch.load(folder / "policy.pt", map_location=device, weights_only=True))
    return policy.to(device).eval()
