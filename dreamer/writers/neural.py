"""The learned writer: bootstrap ensembles of small MLPs fitted to the trace, emitted as sim source plus weights.

For dynamics that no equation fits. What it fits on the trace's transitions (PETS/MBPO style, see
`dreamer.writers.ensemble`), assuming nothing about the environment:

- dynamics: an ensemble whose members map the normalized (observation, action) to a Gaussian over the
  normalized one-step change of each coordinate (`dreamer.writers.coordinates`: an observed (cos, sin) pair is
  one angle, whose change is nearly linear in its velocity where its cosine's is not); the sim steps by
  `sampling` (below) and maps the coordinates back to an observation clipped to the observation space;
- reward: a least-squares line on (1, action, terminated), which gets a goal's bonus at termination right from
  a handful of terminal steps (a net would average it away), plus an ensemble mapping (observation, action, next
  observation, terminated) to what the line leaves; the sim pays the line plus the members' mean;
- termination: the symbolic writer's rule on the next state, a decision tree or a sparse linear threshold (rules
  are learned from a handful of terminations far better than by a net; `dreamer.writers.termination`);
- uncertainty: how far the members disagree about the change, the largest distance of one member's mean from
  the ensemble's, in units of the change's std (the dream can penalize or truncate on it: `sim.uncertainty`);
- walls: steps whose next observation the env clipped to a bound are left out of the dynamics fit; the sim clips
  to the same bounds, and where a coordinate met a bound and another took one value in every such step (a
  velocity stopped at a wall), sets that value, as the symbolic writer's;
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
import torch
from gymnasium import spaces
from rich.console import Console

from dreamer.artifacts import write_json
from dreamer.progress import progress
from dreamer.traces import Trace
from dreamer.writers.coordinates import Coordinates
from dreamer.writers.ensemble import Ensemble, EnsembleConfig, FitReport, fit_ensemble
from dreamer.writers.protocol import Weights, Written, WriteTask, candidate_summary, save_candidate
from dreamer.writers.symbolic import (OBSERVATION_LINES, Wall, space_lines, start_lines, terminal_lines, unsaturated,
                                      wall_rules)
from dreamer.writers.termination import TerminationConfig, fit_termination

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
    termination: TerminationConfig    # when an episode ends (`dreamer.writers.termination`)
    wall_min_rows: int                # steps at a bound that make a wall rule (as the symbolic writer's)
    angle_tolerance: float            # max |cos² + sin² - 1| for two obs dims to count as an angle
    default_max_episode_steps: int    # horizon when the trace does not tell
    seed: int

    def __post_init__(self):
        if self.sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {sorted(SAMPLING)}, got {self.sampling!r}")
        if self.sampling == "sample" and not self.ensemble.probabilistic:
            raise ValueError("sampling='sample' draws from Gaussian heads: it needs ensemble.probabilistic=true")
        for key in ("wall_min_rows", "default_max_episode_steps"):
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


def linear_reward_inputs(trace: Trace) -> np.ndarray:
    """(N, K + 2): 1, the encoded action, terminated (the reward line's inputs)."""
    return np.concatenate([np.ones((len(trace), 1), np.float32), encode_action(trace.action, trace.action_space),
                           trace.terminated[:, None].astype(np.float32)], axis=1)


LINEAR_REWARD = 'torch.cat([torch.ones_like(done), encode(action), done], dim=-1) @ weight("reward.linear", done)'


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
        terminal = fit_termination(coords, trace.next_obs, trace.terminated, cfg.termination, cfg.seed)
        line = linear_reward_inputs(trace)
        linear = np.linalg.lstsq(line.astype(np.float64), trace.reward.astype(np.float64), rcond=None)[0]
        weights, fits = fit_networks(trace, coords, cfg, trace.obs, line @ linear)
        weights = {**weights, "reward.linear": torch.as_tensor(linear, dtype=torch.float32)}
        header = f'''"""Dream sim of {trace.name}, written by the neural writer from {len(trace):,} transitions ({trace.num_episodes} episodes).

{network_docs(coords, cfg, "the one-step change of each coordinate",
              "the reward less a least-squares line on (1, action, terminated) (WEIGHTS['reward.linear'])")}
Termination: a rule on the next state (a decision tree on its coordinates, or a linear threshold on its monomials).
"""
'''
        walls = wall_rules(coords, trace.next_obs, trace.observation_space, cfg.wall_min_rows)
        lines = [header, "import torch", "", *space_lines(trace, cfg.default_max_episode_steps), "",
                 *start_lines(trace, coords), "", "", *network_lines(trace, coords, cfg, "state", LINEAR_REWARD, walls),
                 "", "", "def terminal(state, rng):", *terminal_lines(coords, terminal), ""]
        return Draft("\n".join(lines), weights, fits)


def fit_networks(trace: Trace, coords: Coordinates, cfg: NeuralWriterConfig, base_next_obs: np.ndarray,
                 base_reward: np.ndarray) -> tuple[Weights, dict[str, FitReport]]:
    """The dynamics and reward ensembles, fitted to what a base model leaves: the real next state's coordinates
    minus those of `base_next_obs` (N, O) (an angle's difference wrapped; on the steps no bound clipped), the
    real reward minus `base_reward` (N,). -> their weights (`dynamics.*`, `reward.*`) and how each fit went."""
    inputs = np.concatenate([trace.obs, encode_action(trace.action, trace.action_space)], axis=1)
    change = coords.change(base_next_obs, trace.next_obs).astype(np.float32)
    # As the symbolic writer's fit: steps whose next observation the env clipped to a bound are left out (the sim
    # clips to the same bounds and applies the wall rules); at a wall they jump by tens of stds and ruin the fit.
    inside = unsaturated(trace.next_obs, trace.observation_space)
    if inside.sum() < 2:  # (nearly) every step at a bound: there is nothing else to fit on
        console.print(f"  {len(trace) - int(inside.sum()):,} of {len(trace):,} next observations lie at a bound of the "
                      "observation space: the dynamics are fitted on all of them")
        inside = np.ones(len(trace), bool)
    start, ens = time.perf_counter(), cfg.ensemble
    console.print(f"  fitting the dynamics and reward ensembles ({ens.members} MLPs each) on {len(trace):,} transitions, "
                  f"at most {ens.epochs} epochs")
    with progress(f"dynamics ensemble, {len(trace):,} transitions", total=ens.epochs) as advance:
        dynamics, dynamics_fit = fit_ensemble(inputs[inside], change[inside], ens, cfg.seed,
                                              lambda epoch, mse: advance(epoch, f"validation MSE {mse:.2g}"))
    with progress(f"reward ensemble, {len(trace):,} transitions", total=ens.epochs) as advance:
        reward, reward_fit = fit_ensemble(reward_inputs(trace), (trace.reward - base_reward)[:, None].astype(np.float32),
                                          replace(ens, probabilistic=False), cfg.seed + 1,
                                          lambda epoch, mse: advance(epoch, f"validation MSE {mse:.2g}"))
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
    angles = (f"Obs dims {list(coords.angle_starts)} and the next are (cos, sin) of an angle: the networks predict the "
              "angle's change, not its cosine's and sine's.\n") if coords.angle_starts else ""
    return f"""Dynamics: an ensemble of {ens.members} MLPs ({ens.layers} hidden layers of {ens.hidden}, SiLU), each fitted on a bootstrap
resample, from the normalized observation and action to {"a Gaussian over " if ens.probabilistic else ""}{dynamics_target}
(normalized); {SAMPLING[cfg.sampling]}.
{angles}Reward: an ensemble of {ens.members} MLPs from (obs, action, next obs, terminated) to {reward_target}; the sim adds their mean.
Uncertainty: the largest distance of one member's predicted change from the members' mean (in stds of the change).
WEIGHTS, the safetensors file beside this one, holds each ensemble's layers ("dynamics.w0": (M, in, out),
"dynamics.b0": (M, 1, out), ...) and the normalizers of its inputs and targets ("dynamics.x_mean", ...)."""


def network_lines(trace: Trace, coords: Coordinates, cfg: NeuralWriterConfig, base_next: str,
                  base_reward: str, walls: list[Wall]) -> list[str]:
    """The networks and the contract's `transition`, `observation`, `reward` and `uncertainty` over them: the
    next state is the coordinates of the expression `base_next` (an (n, O) observation) plus the dynamics
    ensemble's output, by `to_observation` (`start_lines`), the reward the expression
    `base_reward` (over `state`, `action`, `next_state` and `done`, (n, 1)) plus the reward ensemble's mean; `walls` hold
    coordinates at a bound as the session did (`dreamer.writers.symbolic.wall_rules`)."""
    ens, dims = cfg.ensemble, len(coords.layout)  # the dynamics predict (n, D) coordinate changes
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
        '    """Each member\'s predicted change, normalized: (M, n, D) for the D coordinates' + (' mean and log-variance."""' if gaussian else '."""'),
        '    out = ensemble("dynamics", DYNAMICS_LAYERS, torch.cat([state, encode(action)], dim=-1))',
        *(['    upper, lower = weight("dynamics.max_logvar", out), weight("dynamics.min_logvar", out)',
           f"    logvar = upper - torch.nn.functional.softplus(upper - out[..., {dims}:])",
           f"    return out[..., :{dims}], lower + torch.nn.functional.softplus(logvar - lower)"]
          if gaussian else [f"    return out[..., :{dims}]"]),
        "",
        "",
        "def transition(state, action, rng):",
        "    mean, logvar = change_mean(state, action)" if gaussian else "    mean = change_mean(state, action)",
        *step,
        '    change = change * weight("dynamics.y_std", state)[0] + weight("dynamics.y_mean", state)[0]',
        f"    base = {base_next}",
        "    x = to_observation(",
        *[f"        {coordinate} + change[:, {d}]," for d, coordinate in enumerate(coords.codes("base"))],
        "    )",
        *(wall.line(lambda i: f"x[:, {i}]") for wall in walls),
        "    return x",
        "",
        "",
        *OBSERVATION_LINES,
        "",
        "",
        "def reward(state, action, next_state, rng):",
        "    done = terminal(next_state, rng).float()[:, None]",
        '    out = ensemble("reward", REWARD_LAYERS, torch.cat([state, encode(action), next_state, done], dim=-1))',
        f"    return {base_reward} + {learned_reward}",
        "",
        "",
        "def uncertainty(state, action, rng):",
        '    """(n,) the largest distance of one member\'s predicted change from the members\' mean (stds of the change)."""',
        "    mean, _ = change_mean(state, action)" if gaussian else "    mean = change_mean(state, action)",
        "    return (mean - mean.mean(0)).norm(dim=-1).amax(0)",
    ]
