"""The learned writer: bootstrap ensembles of small MLPs fitted to the trace, emitted as sim source plus weights.

For dynamics that no equation fits. What it fits on the trace's transitions (PETS/MBPO style, see
`dreamer.writers.ensemble`), assuming nothing about the environment:

- dynamics: an ensemble whose members map the normalized (observation, action) to a Gaussian over the
  normalized one-step change of the observation; the sim then steps by `sampling` (below), puts (cos, sin)
  pairs back on the unit circle and clips to the observation space;
- reward: an ensemble mapping (observation, action, next observation, terminated) to the reward; the sim
  pays the members' mean;
- termination: the symbolic writer's decision tree on the next state (threshold rules are learned from a
  handful of terminations far better than by a net);
- uncertainty: how far the members disagree about the change, the largest distance of one member's mean from
  the ensemble's, in units of the change's std (the dream can penalize or truncate on it: `sim.uncertainty`);
- initial states: uniform over the box the episode starts span, per coordinate (as the symbolic writer's).

`sampling`: "mean" steps by the members' mean; "member" (MBPO, TS1) lets each row follow a member drawn at
random every step; "sample" adds that member's Gaussian noise.

The source is plain torch over `WEIGHTS`, the tensors of the weights file beside it, so the sandbox judges it
like any other sim. Its trail in the task's `audit_dir`: `neural/{sim.py, sim.safetensors, report.json}`,
`neural/fit.json` (each member's stopping epoch and validation error) and `selection.json`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
from gymnasium import spaces
from rich.console import Console

from dreamer.artifacts import write_json
from dreamer.traces import Trace
from dreamer.writers.ensemble import Ensemble, EnsembleConfig, FitReport, fit_ensemble
from dreamer.writers.protocol import Weights, Written, WriteTask, candidate_summary, save_candidate
from dreamer.writers.symbolic import (
    OBSERVATION_LINES,
    Coordinates,
    fit_termination,
    space_lines,
    start_lines,
    terminal_lines,
)

console = Console(stderr=True)

SAMPLING = {
    "mean": "each step follows the members' mean",
    "member": "each step, each row follows a member drawn at random (MBPO's TS1)",
    "sample": "each step, each row draws from the Gaussian of a member drawn at random",
}


@dataclass(frozen=True)
class NeuralWriterConfig:
    ensemble: EnsembleConfig          # the dynamics ensemble; the reward's is the same with a mean head (MSE)
    sampling: Literal["mean", "member", "sample"]
    termination_max_depth: int        # depth of the termination tree
    angle_tolerance: float            # max |cos² + sin² - 1| for two obs dims to count as an angle
    default_max_episode_steps: int    # horizon when the trace does not tell
    seed: int

    def __post_init__(self):
        if self.sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {sorted(SAMPLING)}, got {self.sampling!r}")
        if self.sampling == "sample" and not self.ensemble.probabilistic:
            raise ValueError("sampling='sample' draws from Gaussian heads: it needs ensemble.probabilistic=true")
        for key in ("termination_max_depth", "default_max_episode_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be an int >= 1, got {getattr(self, key)}")


@dataclass(frozen=True)
class Draft:
    """A fitted, not yet validated, learned sim."""

    source: str
    weights: Weights
    fits: dict[str, FitReport]  # "dynamics", "reward"


def encode_action(action: np.ndarray, space: spaces.Space) -> np.ndarray:
    """(N,) or (N, A) actions -> (N, K) float inputs: one-hot for a Discrete space, clipped for a Box."""
    if isinstance(space, spaces.Discrete):
        return np.eye(int(space.n), dtype=np.float32)[action.astype(np.int64)]
    return np.clip(action, space.low, space.high).reshape(len(action), -1).astype(np.float32)


def reward_inputs(trace: Trace) -> np.ndarray:
    """(N, 2O + K + 1): observation, action, next observation, terminated."""
    return np.concatenate([trace.obs, encode_action(trace.action, trace.action_space), trace.next_obs,
                           trace.terminated[:, None].astype(np.float32)], axis=1)


class NeuralWriter:
    """Trace -> learned sim (source and weights) by ensemble regression (see module docstring)."""

    name = "neural"

    def __init__(self, config: NeuralWriterConfig):
        self.config = config

    def write(self, task: WriteTask) -> Written:
        """One fit of the training episodes, judged by the sandbox (refitting on all the data each round)."""
        draft = self.draft(task.train)
        [report] = task.judge([draft.source], [draft.weights])
        written = Written(draft.source, report, self.name, draft.weights)
        folder = save_candidate(task.audit_dir, written)
        write_json(folder / "fit.json", {part: asdict(fit) for part, fit in draft.fits.items()})
        write_json(task.audit_dir / "selection.json", {
            "config": asdict(self.config), "chosen": self.name, "accepted": report.accepted,
            "candidates": [candidate_summary(self.name, None, report)]})
        return written

    def draft(self, trace: Trace) -> Draft:
        """The learned sim of `trace`, not yet validated."""
        cfg = self.config
        coords = Coordinates.detect(trace.obs, cfg.angle_tolerance)
        terminal = fit_termination(coords, trace.next_obs, trace.terminated, cfg.termination_max_depth, cfg.seed)
        weights, fits = fit_networks(trace, cfg, trace.obs, np.zeros(len(trace)))
        header = f'''"""Dream sim of {trace.name}, written by the neural writer from {len(trace):,} transitions ({trace.num_episodes} episodes).

{network_docs(coords, cfg, "the one-step change of the observation", "the reward")}
Termination: a decision tree on the next state's coordinates and their magnitudes.
"""
'''
        lines = [header, "import torch", "", *space_lines(trace, cfg.default_max_episode_steps), "",
                 *start_lines(trace, coords), "", "", *network_lines(trace, coords, cfg, "state", None),
                 "", "", "def terminal(state, rng):", *terminal_lines(coords, terminal), ""]
        return Draft("\n".join(lines), weights, fits)


def fit_networks(trace: Trace, cfg: NeuralWriterConfig, base_next_obs: np.ndarray,
                 base_reward: np.ndarray) -> tuple[Weights, dict[str, FitReport]]:
    """The dynamics and reward ensembles, fitted to what a base model leaves: the real next observation minus
    `base_next_obs` (N, O), the real reward minus `base_reward` (N,). -> their weights (`dynamics.*`, `reward.*`)
    and how each fit went."""
    inputs = np.concatenate([trace.obs, encode_action(trace.action, trace.action_space)], axis=1)
    start = time.perf_counter()
    console.print(f"  fitting the dynamics and reward ensembles ({cfg.ensemble.members} MLPs each) on "
                  f"{len(trace):,} transitions, at most {cfg.ensemble.epochs} epochs")
    dynamics, dynamics_fit = fit_ensemble(inputs, trace.next_obs - base_next_obs, cfg.ensemble, cfg.seed)
    reward, reward_fit = fit_ensemble(reward_inputs(trace), (trace.reward - base_reward)[:, None].astype(np.float32),
                                      replace(cfg.ensemble, probabilistic=False), cfg.seed + 1)
    console.print(f"  fitted in {time.perf_counter() - start:.0f} s: dynamics members stopped at epochs "
                  f"{dynamics_fit.epochs}, validation MSE {max(dynamics_fit.validation_mse):.2g} at worst (normalized)")
    return prefixed("dynamics", dynamics) | prefixed("reward", reward), {"dynamics": dynamics_fit, "reward": reward_fit}


def prefixed(prefix: str, ensemble: Ensemble) -> Weights:
    return {f"{prefix}.{name}": tensor for name, tensor in ensemble.state_tensors().items()}


def layer_names(prefix: str, ensemble: EnsembleConfig) -> list[tuple[str, str]]:
    """(weight, bias) names of each layer of an ensemble's MLPs, input first."""
    return [(f"{prefix}.w{layer}", f"{prefix}.b{layer}") for layer in range(ensemble.layers + 1)]


def network_docs(coords: Coordinates, cfg: NeuralWriterConfig, dynamics_target: str, reward_target: str) -> str:
    """The sim docstring's paragraph on its networks."""
    ens = cfg.ensemble
    angles = (f"Obs dims {list(coords.angle_starts)} and the next are (cos, sin) of an angle: the sim puts each pair "
              "back on the unit circle.\n") if coords.angle_starts else ""
    return f"""Dynamics: an ensemble of {ens.members} MLPs ({ens.layers} hidden layers of {ens.hidden}, SiLU), each fitted on a bootstrap
resample, from the normalized observation and action to {"a Gaussian over " if ens.probabilistic else ""}{dynamics_target}
(normalized); {SAMPLING[cfg.sampling]}.
{angles}Reward: an ensemble of {ens.members} MLPs from (obs, action, next obs, terminated) to {reward_target}; the sim takes their mean.
Uncertainty: the largest distance of one member's predicted change from the members' mean (in stds of the change).
WEIGHTS, the safetensors file beside this one, holds each ensemble's layers ("dynamics.w0": (M, in, out),
"dynamics.b0": (M, 1, out), ...) and the normalizers of its inputs and targets ("dynamics.x_mean", ...)."""


def network_lines(trace: Trace, coords: Coordinates, cfg: NeuralWriterConfig, base_next: str,
                  base_reward: str | None) -> list[str]:
    """The networks and the contract's `transition`, `observation`, `reward` and `uncertainty` over them: the
    next state is the expression `base_next` plus the dynamics ensemble's output, the reward `base_reward` (if
    any) plus the reward ensemble's mean."""
    ens, obs_dim = cfg.ensemble, trace.obs.shape[1]
    gaussian = cfg.sampling == "sample"  # the only use of the log-variance heads
    noise = ("    change = change + torch.exp(0.5 * logvar[member, rows]) * torch.randn(change.shape, generator=rng, "
             "device=rng.device)")
    pick = ["    n = state.shape[0]",
            "    member = torch.randint(MEMBERS, (n,), generator=rng, device=rng.device)",
            "    rows = torch.arange(n, device=state.device)",
            "    change = mean[member, rows]"]
    step = {"mean": ["    change = mean.mean(0)"], "member": pick, "sample": [*pick, noise]}[cfg.sampling]
    learned_reward = '(out.mean(0) * weight("reward.y_std", out)[0] + weight("reward.y_mean", out)[0])[:, 0]'
    return [
        f"MEMBERS = {ens.members}",
        f"DYNAMICS_LAYERS = {layer_names('dynamics', ens)}",
        f"REWARD_LAYERS = {layer_names('reward', ens)}",
        "",
        "",
        "def weight(name, like):",
        '    """WEIGHTS[name] on the device of the tensor `like`."""',
        "    return WEIGHTS[name].to(like.device)",
        "",
        "",
        "def ensemble(prefix, layers, inputs):",
        '    """(n, in) inputs -> each member\'s (M, n, out) outputs, normalized as its targets."""',
        '    x = (inputs - weight(prefix + ".x_mean", inputs)) / weight(prefix + ".x_std", inputs)',
        "    x = x.expand(MEMBERS, -1, -1)",
        "    for layer, (w, b) in enumerate(layers):",
        "        x = torch.baddbmm(weight(b, x), x, weight(w, x))",
        "        if layer < len(layers) - 1:",
        "            x = torch.nn.functional.silu(x)",
        "    return x",
        "",
        "",
        "def encode(action):",
        '    """Actions -> (n, K) float inputs, as the writer fitted them."""',
        (f"    return torch.nn.functional.one_hot(action, {int(trace.action_space.n)}).float()"
         if isinstance(trace.action_space, spaces.Discrete) else "    return action.float()"),
        "",
        "",
        "def change_mean(state, action):",
        '    """Each member\'s predicted change, normalized: (M, n, O)' + (' mean and log-variance."""' if gaussian else '."""'),
        '    out = ensemble("dynamics", DYNAMICS_LAYERS, torch.cat([state, encode(action)], dim=-1))',
        *(['    upper, lower = weight("dynamics.max_logvar", out), weight("dynamics.min_logvar", out)',
           f"    logvar = upper - torch.nn.functional.softplus(upper - out[..., {obs_dim}:])",
           f"    return out[..., :{obs_dim}], lower + torch.nn.functional.softplus(logvar - lower)"]
          if gaussian else [f"    return out[..., :{obs_dim}]"]),
        "",
        "",
        "def on_circle(x, i):",
        '    """x with its dims i, i + 1 (cos, sin) scaled back onto the unit circle."""',
        "    radius = torch.sqrt(x[:, i] ** 2 + x[:, i + 1] ** 2).clamp_min(1e-6)",
        "    return torch.cat([x[:, :i], x[:, i:i + 2] / radius[:, None], x[:, i + 2:]], dim=-1)",
        "",
        "",
        "def transition(state, action, rng):",
        "    mean, logvar = change_mean(state, action)" if gaussian else "    mean = change_mean(state, action)",
        *step,
        f'    x = {base_next} + change * weight("dynamics.y_std", state)[0] + weight("dynamics.y_mean", state)[0]',
        *[f"    x = on_circle(x, {i})" for i in coords.angle_starts],
        "    low = torch.tensor(OBSERVATION_LOW, device=state.device)",
        "    high = torch.tensor(OBSERVATION_HIGH, device=state.device)",
        "    return torch.clamp(x, low, high)",
        "",
        "",
        *OBSERVATION_LINES,
        "",
        "",
        "def reward(state, action, next_state, rng):",
        "    done = terminal(next_state, rng).float()[:, None]",
        '    out = ensemble("reward", REWARD_LAYERS, torch.cat([state, encode(action), next_state, done], dim=-1))',
        f"    return {base_reward} + {learned_reward}" if base_reward else f"    return {learned_reward}",
        "",
        "",
        "def uncertainty(state, action, rng):",
        '    """(n,) the largest distance of one member\'s predicted change from the members\' mean (stds of the change)."""',
        "    mean, _ = change_mean(state, action)" if gaussian else "    mean = change_mean(state, action)",
        "    return (mean - mean.mean(0)).norm(dim=-1).amax(0)",
    ]
