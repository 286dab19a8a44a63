"""How well each writer's sim predicts held-out real transitions, on the trace sizes of the CWMB benchmark.

    python benchmarks/world_models.py                                   # symbolic writer, four envs, seeds 0-2
    python benchmarks/world_models.py --envs cartpole --seeds 0 1 2 3 4

For each env and seed it records a random-policy trace of the size the Code World Models Benchmark gives its
writers (CartPole-v1 400, MountainCar-v0 1,800, Acrobot-v1 4,500, Pendulum-v1 1,000 transitions), splits it
into train and held-out episodes as `dreamer.train` does (`trace.held_out_fraction`), and has each writer of
`--writers` write a sim of the train episodes with the config `python -m dreamer.train +experiment=ENV
writer=WRITER` would use (`write_sim`: the writer's search and the sandbox). It reports the sandbox's verdict
and its held-out figures: next-state, reward and termination accuracy (tolerances from
conf/sandbox/default.yaml), their mean, CWMB's "accuracy" (1/3 each), and the one-step obs NRMSE. A
rejected sim's figures are reported too where the sandbox measured them: the rejection is the verdict, the
figures say by how much. Prints a table per writer and writes every figure, the seeds, the configs and the
hardware as JSON (never overwriting a file).

The real return of a policy trained in each sim, normalized between random play and PPO on the real env,
is `sample_efficiency.py`'s job (full runs, trace sizes of the experiments).
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import tempfile
import time
from pathlib import Path

import gymnasium
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from dreamer.artifacts import write_json
from dreamer.config import to_plain
from dreamer.pipelines import compose_config
from dreamer.sandbox import SandboxConfig
from dreamer.traces import collect_trace
from dreamer.writers import make_writer, write_sim

# experiment (conf/experiment/NAME.yaml) -> random-policy transitions CWMB gives the writer
TRACE_SIZES = {"cartpole": 400, "mountain_car": 1_800, "acrobot": 4_500, "pendulum": 1_000}
MEASURED = ("state_accuracy", "reward_accuracy", "termination_accuracy", "accuracy", "obs_nrmse_mean")  # Fidelity's
FIGURES = (*MEASURED[:3], "cwmb_accuracy", *MEASURED[3:])  # the table's columns, in order
console = Console()


def measure(experiment: str, writer_kind: str, seed: int) -> dict:
    """One trace, one sim: the sandbox's verdict and held-out figures."""
    cfg = compose_config("train", [f"+experiment={experiment}", f"writer={writer_kind}", f"seed={seed}"])
    env_id = cfg.trace.env_id
    trace = collect_trace(gymnasium.make(env_id), TRACE_SIZES[experiment], seed=seed)
    train, held_out = trace.split(cfg.trace.held_out_fraction, seed)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dreamer-world-models-") as env_dir:
        written = write_sim(make_writer(cfg.writer), train, held_out, SandboxConfig.from_dict(cfg.sandbox),
                            cfg.sim.name, Path(env_dir))
    report, fidelity = written.report, written.report.fidelity
    row = {"experiment": experiment, "env_id": env_id, "writer": writer_kind, "seed": seed,
           "train_transitions": len(train), "held_out_transitions": len(held_out), "accepted": report.accepted,
           "reasons": report.reasons, "seconds": time.perf_counter() - start, "writer_config": to_plain(cfg.writer)}
    if fidelity is not None:
        row |= {key: getattr(fidelity, key) for key in MEASURED}
        row["cwmb_accuracy"] = (fidelity.state_accuracy + fidelity.reward_accuracy + fidelity.termination_accuracy) / 3
        row["state_tolerance"], row["reward_tolerance"] = fidelity.state_tolerance, fidelity.reward_tolerance
    return row


def mean_std(rows: list[dict], key: str) -> str:
    values = [row[key] for row in rows if row.get(key) is not None]
    if not values:
        return "n/a"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def print_table(rows: list[dict], writer_kind: str) -> None:
    seeds = sorted({row["seed"] for row in rows})
    table = Table(title=f"writer={writer_kind}: held-out figures, random-policy traces of CWMB's sizes, seeds {seeds}")
    for column in ("env", "transitions (train / held out)", "accepted", "state acc", "reward acc", "termination acc",
                   "CWMB accuracy", "all three at once", "obs NRMSE"):
        table.add_column(column, justify="right")
    for experiment in TRACE_SIZES:
        mine = [row for row in rows if row["experiment"] == experiment and row["writer"] == writer_kind]
        if not mine:
            continue
        table.add_row(mine[0]["env_id"], " ".join(f"{r['train_transitions']}/{r['held_out_transitions']}" for r in mine),
                      f"{sum(r['accepted'] for r in mine)}/{len(mine)}", *(mean_std(mine, key) for key in FIGURES))
    console.print(table)
    for row in rows:
        if row["writer"] == writer_kind and not row["accepted"]:
            console.print(f"  {row['env_id']} seed {row['seed']} rejected: {'; '.join(row['reasons'])[:300]}")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=list(TRACE_SIZES), choices=list(TRACE_SIZES))
    parser.add_argument("--writers", nargs="+", default=["symbolic", "hybrid", "neural"], help="writer config names (conf/writer/)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default benchmarks/results/world-models-<time>.json); never overwritten")
    args = parser.parse_args(argv)
    out = args.out or Path(__file__).parent / "results" / f"world-models-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    if out.exists():
        raise SystemExit(f"{out} exists; this benchmark never overwrites a result (choose another --out)")
    torch.set_num_threads(1)
    started = dt.datetime.now(dt.timezone.utc)
    rows = []
    for writer_kind in args.writers:
        for experiment in args.envs:
            for seed in args.seeds:
                rows.append(measure(experiment, writer_kind, seed))
                row = rows[-1]
                console.print(f"  {row['env_id']} seed {seed}, writer={writer_kind}: "
                              f"{'accepted' if row['accepted'] else 'rejected'}, CWMB accuracy "
                              f"{row.get('cwmb_accuracy', float('nan')):.3f} ({row['seconds']:.1f} s)")
        print_table(rows, writer_kind)
    write_json(out, {"benchmark": "world_models", "date": started.isoformat(timespec="seconds"),
                     "command": [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])],
                     "trace_sizes": TRACE_SIZES, "seeds": args.seeds, "rows": rows,
                     "hardware": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                                  "torch": torch.__version__, "gymnasium": gymnasium.__version__}})
    console.print(f"results: {out}")
    return rows


if __name__ == "__main__":
    main()
