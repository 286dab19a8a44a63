"""`python -m dreamer.inspect [RUN_DIR]`: a terminal summary of a run (default: the newest under runs/).

Shows what the run has written so far: what stopped it if bad numbers did, the trace, the writer's
candidates, the sandbox report and held-out fidelity, the training curves, and real vs dream returns (or
an OPSD run's summary).
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from dreamer.inspect.run import Run, latest_run
from dreamer.inspect.tables import (candidates_table, curves_table, fidelity_table, metrics_table, nonfinite_table,
                                    report_table, returns_table, trace_table)

CURVE_KEYS = ("dream/episode_return_mean", "dream/policy_loss", "dream/value_loss", "dream/entropy", "dream/approx_kl",
              "real/return_mean")


def summarise(run: Run, console: Console) -> None:
    """Print every table the run's artifacts allow."""
    config, metrics = run.config, run.metrics
    outcome = run.outcome
    state = outcome if outcome in ("finished", "finished, sim accepted") else f"[yellow]{outcome}[/]"
    # the outcome first, the path below: a long path would push the outcome out of a narrow terminal's rule
    console.rule(f"{state}  —  pipeline {config.get('pipeline', 'write')}, seed {config.get('seed')}")
    console.print(f"run dir: {run.path}")
    if run.nonfinite is not None:
        console.print(nonfinite_table(run.nonfinite))
    if run.trace is not None:
        console.print(trace_table(run.trace))
    if run.selection is not None:
        console.print(candidates_table(run.candidates, run.selection.get("chosen")))
    if run.report is not None:
        console.print(report_table(run.report))
        console.print(fidelity_table(run.report))
        if run.sim_path is not None:
            console.print(f"sim source: {run.sim_path}")
    keys = [key for key in CURVE_KEYS if any(key in row for row in run.history)]
    keys += sorted({key for row in run.history for key in row if key.endswith(("student_return", "opsd/divergence_raw"))})
    if keys:
        console.print(curves_table(run.history, keys))
    if metrics and "dream_env_steps" in metrics:
        console.print(returns_table(metrics, run.history))
    elif metrics and "opsd" in metrics:
        console.print(metrics_table(metrics["opsd"].get("summary", {}), "OPSD summary (metrics.json)"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dreamer.inspect", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", help="a run dir (default: the newest under ./runs)")
    args = parser.parse_args(argv)
    console = Console()
    try:
        run = Run.load(args.run_dir if args.run_dir else latest_run())
    except FileNotFoundError as error:
        console.print(f"[red]{error}[/]")
        sys.exit(2)
    summarise(run, console)


if __name__ == "__main__":
    main()
