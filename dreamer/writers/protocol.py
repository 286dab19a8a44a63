"""The seam between the loop and a writer: what it is asked (`WriteTask`) and what it gives back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from dreamer.artifacts import write_text
from dreamer.progress import progress
from dreamer.sandbox import SandboxConfig, SandboxReport, validate_many
from dreamer.sim.weights import save_weights, weights_path
from dreamer.traces import Trace

Weights = Mapping[str, torch.Tensor]  # a learned sim's tensors, by name (its `WEIGHTS`)

@dataclass(frozen=True)
class WriteTask:
    """Write a sim of `train` that the sandbox accepts on the unseen episodes of `held_out`."""

    train: Trace
    held_out: Trace
    sandbox: SandboxConfig
    sim_name: str  # the sim's name in reports and tracebacks
    audit_dir: Path  # where the writer leaves the trail of its search
    previous: str | None  # the sim accepted in the previous round, if any

    def judge(self, sources: list[str], weights: list[Weights | None] | None = None) -> list[SandboxReport]:
        """Each source's (and its weights') sandbox report on `held_out` (validated in parallel worker processes)."""
        with progress(f"judging {len(sources)} candidate{'s' * (len(sources) != 1)} in the sandbox on "
                      f"{len(self.held_out):,} held-out transitions"):
            return validate_many(sources, self.held_out, self.sandbox, [self.sim_name] * len(sources), weights)


@dataclass(frozen=True)
class Written:
    """A writer's pick: the sim source (and weights, for a learned sim), its sandbox report, and which candidate
    it was."""

    source: str
    report: SandboxReport
    label: str  # e.g. "symbolic", "previous", "iter_2/candidate_1"
    weights: Weights | None = None
    tried: tuple[str, ...] = ()  # writer=auto: "<writer>: <verdict>" of each writer tried before the pick

    def save(self, source_path: Path) -> None:
        """The source at `source_path` and its weights, if any, beside it (`dreamer.sim.weights`; a weights file
        left there by an earlier sim is removed)."""
        if self.weights is None:
            weights_path(source_path).unlink(missing_ok=True)
        else:
            save_weights(weights_path(source_path), self.weights)
        write_text(source_path, self.source)


class Writer(Protocol):
    name: str

    def write(self, task: WriteTask) -> Written: ...


def save_candidate(audit_dir: Path, candidate: Written) -> Path:
    """`audit_dir/<label>/sim.py` (and `sim.safetensors`) and its `report.json`; returns the candidate's folder."""
    folder = audit_dir / candidate.label
    candidate.save(folder / "sim.py")
    candidate.report.save(folder / "report.json")
    return folder


def candidate_summary(label: str, parent: str | None, report: SandboxReport) -> dict:
    """One candidate's line in the trail's `selection.json`: verdict, reasons and headline held-out figures."""
    f = report.fidelity
    return {"label": label, "parent": parent, "accepted": report.accepted, "reasons": report.reasons,
            "accuracy": f and f.accuracy, "obs_nrmse_mean": f and f.obs_nrmse_mean, "reward_nrmse": f and f.reward_nrmse,
            "termination_accuracy": f and f.termination_accuracy, "kstep_nrmse": f and f.kstep_nrmse}


def verdict_line(report: SandboxReport) -> str:
    """"accepted" with the headline held-out figures, or "REJECTED" with the first reason, for the console."""
    if not report.accepted:
        return "REJECTED (" + (report.reasons[0][:80] if report.reasons else "?") + ")"
    f = report.fidelity
    return (f"accepted (accuracy {_figure(f.accuracy)}, one-step NRMSE {_figure(f.obs_nrmse_mean)}, "
            f"termination accuracy {_figure(f.termination_accuracy)})")


def _figure(value: float | None) -> str:
    """A headline figure to 3 significant digits; None (not finite) as nan."""
    return "nan" if value is None else f"{value:.3g}"
