"""The seam between the loop and a writer: what it is asked (`WriteTask`) and what it gives back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dreamer.sandbox import SandboxConfig, SandboxReport, validate_many
from dreamer.traces import Trace


@dataclass(frozen=True)
class WriteTask:
    """Write a sim of `train` that the sandbox accepts on the unseen episodes of `held_out`."""

    train: Trace
    held_out: Trace
    sandbox: SandboxConfig
    sim_name: str  # the sim's name in reports and tracebacks
    audit_dir: Path  # where the writer leaves the trail of its search
    previous: str | None  # the sim accepted in the previous round, if any

    def judge(self, sources: list[str]) -> list[SandboxReport]:
        """Each source's sandbox report on `held_out` (validated in parallel worker processes)."""
        return validate_many(sources, self.held_out, self.sandbox, [self.sim_name] * len(sources))


@dataclass(frozen=True)
class Written:
    """A writer's pick: the sim source, its sandbox report, and which candidate it was."""

    source: str
    report: SandboxReport
    label: str  # e.g. "symbolic", "previous", "iter_2/candidate_1"


class Writer(Protocol):
    name: str

    def write(self, task: WriteTask) -> Written: ...
