"""The hybrid writer: the symbolic writer's equations plus a learned residual where they leave error.

It fits the equations (`dreamer.writers.symbolic`), then the neural writer's ensembles
(`dreamer.writers.neural`) on what the equations get wrong: the real next observation minus the equations'
(wall rules left out), and the real reward minus the reward equation's. The sim steps by the equations, then
adds the dynamics ensemble's residual (by the neural writer's `sampling`), clips to the observation space and
applies the wall rules; it pays the reward equation plus the reward ensemble's mean; termination is the
equations' rule. An equation whose
validation NRMSE (on the episodes the symbolic writer held back) is above `max_equation_nrmse` is dropped, so
that a coordinate the equations cannot describe, and would extrapolate wildly, is the residual's alone.

Both sims are judged on the held-out episodes, the equations alone and with the residual, so the trail says
how much of the held-out error each part removes (`attribution`): one-step NRMSE is 1.0 for a model that
predicts the mean change, and each part's share is the drop it makes from there. The pick is the better of the
two (accepted first, then held-out accuracy). Trail in `audit_dir`: `equations/` and `hybrid/` as the
candidates (sim.py, report.json; hybrid's sim.safetensors and fit.json) and `selection.json`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from rich.console import Console

from dreamer.artifacts import write_json
from dreamer.sandbox import SandboxReport
from dreamer.traces import Trace
from dreamer.writers.neural import Draft, NeuralWriterConfig, fit_networks, network_docs, network_lines
from dreamer.writers.protocol import Written, WriteTask, candidate_summary, save_candidate, verdict_line
from dreamer.writers.symbolic import (
    Equations,
    SparseFit,
    SymbolicWriter,
    SymbolicWriterConfig,
    render_source,
    reward_lines,
    space_lines,
    start_lines,
    terminal_lines,
    transition_lines,
)

console = Console(stderr=True)


@dataclass(frozen=True)
class HybridWriterConfig:
    symbolic: SymbolicWriterConfig  # the equations
    neural: NeuralWriterConfig      # the residual's ensembles and how the sim samples them
    max_equation_nrmse: float       # an equation whose validation NRMSE is above this is dropped: the residual learns it all

    def __post_init__(self):
        if not self.max_equation_nrmse > 0:
            raise ValueError(f"max_equation_nrmse must be > 0, got {self.max_equation_nrmse!r}")


def trusted(equations: Equations, max_nrmse: float) -> tuple[Equations, list[str]]:
    """`equations` with every equation (dynamics or reward) whose validation NRMSE is above `max_nrmse` set to
    zero (no change, no reward: the residual then learns that part whole), and the names of the ones dropped."""
    def keep(fit: SparseFit) -> SparseFit:
        return fit if fit.validation_nrmse <= max_nrmse else replace(fit, coef=np.zeros_like(fit.coef))

    names = [name for name, _ in equations.coords.layout] + ["reward"]
    fits = [*equations.dynamics, equations.reward]
    dropped = [name for name, fit in zip(names, fits) if not fit.validation_nrmse <= max_nrmse]
    return replace(equations, dynamics=[keep(fit) for fit in equations.dynamics], reward=keep(equations.reward)), dropped


def attribution(equations: SandboxReport, hybrid: SandboxReport) -> dict | None:
    """How much of the held-out one-step error each part removes, from the NRMSE of predicting the mean change
    (1.0): {"equations_nrmse", "hybrid_nrmse", "removed_by_equations", "removed_by_residual"} (shares of
    that 1.0); None when either sim's fidelity was not measured."""
    if equations.fidelity is None or hybrid.fidelity is None:
        return None
    first, second = equations.fidelity.obs_nrmse_mean, hybrid.fidelity.obs_nrmse_mean
    if first is None or second is None:
        return None
    return {"equations_nrmse": first, "hybrid_nrmse": second,
            "removed_by_equations": 1.0 - min(first, 1.0), "removed_by_residual": min(first, 1.0) - min(second, 1.0)}


class HybridWriter:
    """Trace -> equations + learned residual (see module docstring)."""

    name = "hybrid"

    def __init__(self, config: HybridWriterConfig):
        self.config = config

    def write(self, task: WriteTask) -> Written:
        equations_source, hybrid = self.draft(task.train)
        reports = task.judge([equations_source, hybrid.source], [None, hybrid.weights])
        candidates = [Written(equations_source, reports[0], "equations"),
                      Written(hybrid.source, reports[1], "hybrid", hybrid.weights)]
        for candidate in candidates:
            save_candidate(task.audit_dir, candidate)
        write_json(task.audit_dir / "hybrid" / "fit.json", {part: asdict(fit) for part, fit in hybrid.fits.items()})
        shares = attribution(*reports)
        best = max(candidates, key=lambda c: (c.report.accepted, (c.report.fidelity and c.report.fidelity.accuracy) or 0.0))
        if shares is not None:
            console.print(f"  hybrid: one-step NRMSE {shares['equations_nrmse']:.3g} by the equations alone "
                          f"({verdict_line(reports[0]).split(' (')[0]}), {shares['hybrid_nrmse']:.3g} with the "
                          f"residual: the equations remove {shares['removed_by_equations']:.0%} of the error, the "
                          f"residual {shares['removed_by_residual']:.0%}")
        write_json(task.audit_dir / "selection.json", {
            "config": asdict(self.config), "chosen": best.label, "accepted": best.report.accepted,
            "attribution": shares, "candidates": [candidate_summary(c.label, None, c.report) for c in candidates]})
        return best

    def draft(self, trace: Trace) -> tuple[str, Draft]:
        """(the equations' source, the hybrid sim), not yet validated."""
        cfg = self.config
        fitted = SymbolicWriter(cfg.symbolic).fit(trace)
        equations, dropped = trusted(fitted, cfg.max_equation_nrmse)
        weights, fits = fit_networks(trace, equations.coords, cfg.neural, equations.predicted_next_obs(trace),
                                     equations.predicted_reward())
        coords = equations.coords
        left = (f"Left to the residual whole (validation NRMSE of their equations above {cfg.max_equation_nrmse:g}): "
                f"{', '.join(dropped)}.\n" if dropped else "")
        header = f'''"""Dream sim of {trace.name}, written by the hybrid writer from {len(trace):,} transitions ({trace.num_episodes} episodes).

The symbolic writer's equations (`equations`, `reward_equation`: sparse regression over candidate terms) plus a
learned residual. {left}
{network_docs(coords, cfg.neural, "what the equations get wrong of the next state's coordinates", "what the reward equation gets wrong")}
Termination: the equations' rule on the next state (a decision tree on its coordinates, or a linear threshold on its monomials).
"""
'''
        lines = [header, "import torch", "", *space_lines(trace, cfg.symbolic.default_max_episode_steps), "",
                 *start_lines(trace, coords), "", "",
                 *transition_lines("equations", equations, walls=False), "", "",
                 *reward_lines("reward_equation", equations), "", "",
                 *network_lines(trace, coords, cfg.neural, "equations(state, action, rng)",
                                "reward_equation(state, action, next_state, rng)", equations.walls), "", "",
                 "def terminal(state, rng):", *terminal_lines(coords, equations.terminal), ""]
        return render_source(trace, fitted, cfg.symbolic), Draft("\n".join(lines), weights, fits)
