"""`pipeline=write`, what `python -m dreamer.write trace.path=FILE [writer=llm ...]` runs: a recorded session to a
validated sim, no training.

The run dir gets `config.yaml`, `trace.jsonl` (the session as read), the write stage's artifacts under `env/`
(see `dreamer.writers.stage`) and `metrics.json`. `python -m dreamer.inspect RUN_DIR` and
`notebooks/inspect_generated_env.ipynb` show them.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig
from rich.console import Group, RenderableType

from dreamer.config import build
from dreamer.inspect.tables import fidelity_table, report_table
from dreamer.pipelines.config import SimConfig, TraceConfig, trace_columns, trace_config
from dreamer.pipelines.protocol import Pipeline, Run
from dreamer.sandbox import SandboxConfig
from dreamer.traces import TableColumns, load_trace, save_trace
from dreamer.traces.coverage import coverage_warnings
from dreamer.writers import Writer, make_writer, verdict_line, write_sim


@dataclass(frozen=True)
class WriteConfig:
    """Every section the write pipeline reads, built and checked."""

    seed: int                     # the train/held-out split
    trace: TraceConfig
    columns: TableColumns | None  # of a CSV/Parquet trace file
    writer: Writer
    sandbox: SandboxConfig
    sim: SimConfig

    @classmethod
    def from_config(cls, cfg: DictConfig) -> WriteConfig:
        trace = trace_config(cfg.trace)
        if trace.kind != "file":
            raise ValueError(f"dreamer.write reads a recorded session: trace.kind must be 'file', got {trace.kind!r}")
        return cls(seed=cfg.seed, trace=trace, columns=trace_columns(cfg.trace), writer=make_writer(cfg.writer),
                   sandbox=SandboxConfig.from_dict(cfg.sandbox), sim=build(SimConfig, cfg.sim, "sim"))


def write(cfg: WriteConfig, run: Run) -> tuple[dict, RenderableType]:
    """Write a sim from the session's training episodes that the sandbox judges on the held-out ones."""
    session = load_trace(cfg.trace.path, cfg.columns)
    save_trace(session, run.dir / "trace.jsonl")
    train, held_out = session.split(cfg.trace.held_out_fraction, cfg.seed)
    written = write_sim(cfg.writer, train, held_out, cfg.sandbox, cfg.sim.name, run.dir / "env")
    report = written.report
    metrics = {"accepted": report.accepted, "reasons": report.reasons, "writer": cfg.writer.name,
               "sim_candidate": written.label, "writers_tried": list(written.tried), "real_env_steps": len(session), "train_episodes": train.num_episodes,
               "held_out_episodes": held_out.num_episodes,
               "fidelity": None if report.fidelity is None else report.fidelity.to_dict(),
               "coverage_warnings": coverage_warnings(train, held_out)}
    summary = Group(report_table(report), fidelity_table(report),
                    *[f"tried first: {line}" for line in written.tried],
                    f"writer={cfg.writer.name} ({written.label}): {verdict_line(report)}",
                    *[f"[yellow]session coverage: {warning}[/]" for warning in metrics["coverage_warnings"]],
                    f"sim written to {run.dir / 'env' / (cfg.sim.name + '.py')}; inspect it with: "
                    f"python -m dreamer.inspect {run.dir}")
    return metrics, summary


WRITE = Pipeline(WriteConfig.from_config, write)
