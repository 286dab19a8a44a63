"""`python -m dreamer.write trace.path=FILE [writer=llm ...]`: a recorded session to a validated sim, no training.

The run dir gets `config.yaml`, `trace.jsonl` (the session as read), the write stage's artifacts under
`env/` (see `dreamer.writers.stage`) and `metrics.json`. `python -m dreamer.inspect RUN_DIR` and
`notebooks/inspect_generated_env.ipynb` show them. Exits with status 1 when the sandbox rejected
every candidate (the report says why).
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from dreamer.artifacts import write_json, write_text
from dreamer.config import check_run_config, trace_columns
from dreamer.inspect.tables import fidelity_table, report_table
from dreamer.resume import run_status
from dreamer.sandbox import SandboxConfig
from dreamer.traces import load_trace, save_trace
from dreamer.writers import make_writer, verdict_line, write_sim

console = Console(stderr=True)


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Write a sim from `cfg.trace` into `run_dir`; returns the metrics also written to `run_dir/metrics.json`."""
    start = time.perf_counter()
    if run_status(run_dir) is not None:
        raise FileExistsError(f"{run_dir} already holds a run (metrics.json); choose another hydra.run.dir")
    check_run_config(cfg, "write")
    writer = make_writer(cfg.writer)
    sandbox = SandboxConfig.from_dict(cfg.sandbox)
    if cfg.trace.source != "file":
        raise ValueError(f"dreamer.write reads a recorded session: trace.source must be 'file', got {cfg.trace.source!r}")
    session = load_trace(cfg.trace.path, trace_columns(cfg.trace))
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    save_trace(session, run_dir / "trace.jsonl")
    train, held_out = session.split(cfg.trace.held_out_fraction, cfg.seed)
    written = write_sim(writer, train, held_out, sandbox, cfg.sim.name, run_dir / "env")
    report = written.report
    metrics = {"status": "finished", "pipeline": "write", "accepted": report.accepted, "reasons": report.reasons, "writer": writer.name,
               "sim_candidate": written.label, "seed": cfg.seed, "real_env_steps": len(session),
               "train_episodes": train.num_episodes, "held_out_episodes": held_out.num_episodes,
               "fidelity": None if report.fidelity is None else report.fidelity.to_dict(), "wall_seconds": time.perf_counter() - start}
    write_json(run_dir / "metrics.json", metrics)
    console.print(report_table(report))
    console.print(fidelity_table(report))
    console.print(f"writer={writer.name} ({written.label}): {verdict_line(report)}")
    console.print(f"sim written to {run_dir / 'env' / (cfg.sim.name + '.py')}; "
                  f"inspect it with: python -m dreamer.inspect {run_dir}")
    return metrics


@hydra.main(config_path="../conf", config_name="write", version_base="1.3")
def main(cfg: DictConfig) -> None:
    metrics = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    if not metrics["accepted"]:
        raise SystemExit("the sandbox rejected the written sim: " + "; ".join(metrics["reasons"]))


if __name__ == "__main__":
    main()
