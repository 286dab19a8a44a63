"""Sample efficiency of the whole loop: real return reached per real env step, and wall time.

Runs `python -m dreamer.train +experiment=NAME` for each experiment (in a fresh run dir under
benchmarks/results/), reads its metrics.json and compares with the targets. Prints a table and writes
a JSON of the figures, the hardware, the seeds and the run dirs (whose config.yaml hold the configs).

    python benchmarks/sample_efficiency.py                       # cartpole and pendulum, seed 0
    python benchmarks/sample_efficiency.py --experiments cartpole --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dreamer.artifacts import write_json

# experiment -> (min mean real return, max real env steps, max wall seconds)
TARGETS = {"cartpole": (475.0, 5_000, 300.0), "pendulum": (-250.0, 10_000, 600.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = Path(__file__).parent / "results" / f"sample-efficiency-{stamp}"
    rows = []
    for experiment in args.experiments:
        for seed in args.seeds:
            run_dir = root / f"{experiment}-seed{seed}"
            command = [sys.executable, "-m", "dreamer.train", f"+experiment={experiment}", f"seed={seed}",
                       f"device={args.device}", "logger=none", "algo.progress=false", f"hydra.run.dir={run_dir}"]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{experiment} seed {seed} failed (exit {done.returncode})")
            metrics = json.loads((run_dir / "metrics.json").read_text())
            min_return, max_steps, max_seconds = TARGETS[experiment]
            rows.append({
                "experiment": experiment,
                "seed": seed,
                "run_dir": str(run_dir),
                "real_env_steps": metrics["real_env_steps"],
                "dream_env_steps": metrics["dream_env_steps"],
                "real_return_mean": metrics["real_return_mean"],
                "real_return_std": metrics["real_return_std"],
                "obs_nrmse_mean": metrics["fidelity"]["obs_nrmse_mean"],
                "termination_accuracy": metrics["fidelity"]["termination_accuracy"],
                "wall_seconds": metrics["wall_seconds"],
                "target_met": metrics["real_return_mean"] >= min_return
                and metrics["real_env_steps"] <= max_steps
                and metrics["wall_seconds"] <= max_seconds,
            })

    table = Table(title="Sample efficiency (targets: return / real steps / wall time)")
    for column in ("experiment", "seed", "real return", "real steps", "dream steps", "obs NRMSE", "wall s", "target"):
        table.add_column(column, justify="right")
    for row in rows:
        min_return, max_steps, max_seconds = TARGETS[row["experiment"]]
        table.add_row(row["experiment"], str(row["seed"]),
                      f"{row['real_return_mean']:.1f} ± {row['real_return_std']:.1f}", f"{row['real_env_steps']:,}",
                      f"{row['dream_env_steps']:,}", f"{row['obs_nrmse_mean']:.4f}", f"{row['wall_seconds']:.0f}",
                      f"{'met' if row['target_met'] else 'MISSED'} (≥{min_return:g} / ≤{max_steps:,} / ≤{max_seconds:g} s)")
    Console(width=160).print(table)
    hardware = {"platform": platform.platform(), "processor": platform.processor(), "cores": os.cpu_count()}
    out = write_json(root / "summary.json", {"date": stamp, "hardware": hardware, "targets": TARGETS, "runs": rows})
    print(f"written: {out}")


if __name__ == "__main__":
    main()
