"""`writer=auto`: writers tried in order until the sandbox accepts a sim (by default: equations, then equations
with a learned residual, then a learned model).

Each writer leaves its trail in `audit_dir/<writer>/`; `selection.json` here says which one's sim was picked and
why the ones before it were not, and lists every writer's candidates as `<writer>/<label>` (their folders). When none is accepted, the pick is the most accurate on the held-out episodes.
"""

from __future__ import annotations

import dataclasses
import json

from rich.console import Console

from dreamer.artifacts import write_json
from dreamer.writers.neural import NeuralWriterConfig
from dreamer.writers.protocol import Writer, Written, WriteTask, verdict_line
from dreamer.writers.symbolic import SymbolicWriterConfig

console = Console(stderr=True)
ORDERABLE = ("symbolic", "hybrid", "neural")


@dataclasses.dataclass(frozen=True)
class AutoWriterConfig:
    order: list[str]             # writers tried, of ORDERABLE
    symbolic: SymbolicWriterConfig  # writer=symbolic's settings, also the hybrid's equations
    neural: NeuralWriterConfig   # writer=neural's settings, also the hybrid's residual
    max_equation_nrmse: float    # the hybrid's (`HybridWriterConfig`)

    def __post_init__(self):
        if not (self.order and all(kind in ORDERABLE for kind in self.order)):
            raise ValueError(f"writer.order must be a non-empty list of {list(ORDERABLE)}, got {self.order!r}")


class FallbackWriter:
    name = "auto"

    def __init__(self, writers: list[Writer]):
        if not writers:
            raise ValueError("writer=auto needs at least one writer in writer.order")
        self.writers = writers

    def write(self, task: WriteTask) -> Written:
        results: list[tuple[Writer, Written]] = []
        for writer in self.writers:
            written = writer.write(dataclasses.replace(task, audit_dir=task.audit_dir / writer.name))
            results.append((writer, written))
            if written.report.accepted:
                break
            if writer is not self.writers[-1]:
                console.print(f"  writer={writer.name}: {verdict_line(written.report)}; trying the next writer")
        writer, pick = results[-1] if results[-1][1].report.accepted else max(
            results, key=lambda result: (result[1].report.fidelity and result[1].report.fidelity.accuracy) or 0.0)
        tried = tuple(f"{w.name}: {verdict_line(written.report)}" for w, written in results if w is not writer)
        label = f"{writer.name}/{pick.label}"
        candidates = [{**candidate, "label": f"{w.name}/{candidate['label']}",
                       "parent": candidate["parent"] and f"{w.name}/{candidate['parent']}"}
                      for w, _ in results
                      for candidate in json.loads((task.audit_dir / w.name / "selection.json").read_text())["candidates"]]
        write_json(task.audit_dir / "selection.json", {
            "chosen": label, "accepted": pick.report.accepted, "tried": list(tried),
            "writers": [{"writer": w.name, "label": written.label, "accepted": written.report.accepted,
                         "reasons": written.report.reasons} for w, written in results],
            "candidates": candidates})
        return dataclasses.replace(pick, label=label, tried=tried)
