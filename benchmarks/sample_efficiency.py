"""Sample efficiency of the whole loop, against random play and against PPO on the real env, in one run.

For each experiment and seed it runs `python -m dreamer.train +experiment=NAME seed=S` (a fresh run dir under
benchmarks/results/, one torch thread each, `--jobs` at a time) and reads its metrics.json: real steps, the
real return of the kept policy, its dream return and the dream-vs-real gap. A run that stops (say, a session
that never showed the goal) is reported with its reason. Then, per experiment, in this process:

- random: the real return of uniformly random actions (`eval.episodes` episodes, seeds from `eval.seed`);
- PPO on the real env: `train_ppo` with the experiment's `algo` config (8 real envs), for `--ppo-steps`
  real steps, recording the first real step at which its training return (the episodes that ended in its
  last 10 updates with any) reached the dream policies' mean real return ("real steps to the same return").

Each run's real return is also given normalized between random play (0) and PPO on the real env (1, its best
training return), as the Code World Models Benchmark reports it. Prints a table with the targets and writes a
JSON of every figure, the hardware, the seeds and the run dirs (whose config.yaml hold the configs).

    python benchmarks/sample_efficiency.py                                  # every experiment, seeds 0-2
    python benchmarks/sample_efficiency.py --experiments cartpole --seeds 0 1 2 3 4 --jobs 2
    python benchmarks/sample_efficiency.py --overrides writer=neural        # any Hydra overrides, every run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gymnasium
import numpy as np
import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from dreamer.artifacts import write_json
from dreamer.config import build
from dreamer.pipelines import compose_config
from dreamer.rl import MLPPolicy, MLPPolicyConfig, PPOConfig, TorchVectorEnv, train_ppo
from dreamer.sim.fidelity import Fidelity

TARGETS = OmegaConf.to_container(OmegaConf.load(Path(__file__).with_name("targets.yaml")))  # experiment -> target or None


def dream_run(experiment: str, seed: int, root: Path, device: str, overrides: list[str]) -> dict:
    run_dir = root / f"{experiment}-seed{seed}"
    command = [sys.executable, "-m", "dreamer.train", f"+experiment={experiment}", f"seed={seed}", f"device={device}",
               "logger=none", "algo.progress=false", f"hydra.run.dir={run_dir}", *overrides]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = json.loads((run_dir / "metrics.json").read_text())
    row = {"experiment": experiment, "seed": seed, "run_dir": str(run_dir), "status": metrics["status"]}
    if done.returncode != 0:  # the run said why it stopped (a session without the goal, a rejected sim) as its last words
        reason = [line for line in done.stderr.splitlines() if line.strip()][-1]
        return {**row, "status": "stopped", "reason": reason.removeprefix("stopped: ")}
    keys = ("real_env_steps", "dream_env_steps", "real_return_mean", "real_return_std", "dream_return_mean",
            "random_return_dream", "dream_real_gap", "dream_real_gap_fraction", "large_gap", "picked_round", "wall_seconds")
    return {**row, **{key: metrics[key] for key in keys},
            "obs_nrmse_mean": Fidelity.from_dict(metrics["fidelity"]).obs_nrmse_mean}


def random_return(env_id: str, episodes: int, seed: int) -> float:
    env = gymnasium.make(env_id)
    env.action_space.seed(seed)
    returns = []
    for i in range(episodes):
        env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def real_ppo(cfg, steps: int, reach: float | None, seed: int) -> dict:
    """PPO on the real env: its training-return curve and the first real step at which it reached `reach`."""
    torch.manual_seed(seed)
    envs = TorchVectorEnv([lambda: gymnasium.make(cfg.trace.env_id)] * 8, device="cpu")
    config = dataclasses.replace(build(PPOConfig, cfg.algo, "algo", ignore=("kind", "progress")), num_envs=8,
                                 total_steps=steps, num_minibatches=min(cfg.algo.num_minibatches, 4))
    policy = MLPPolicy(envs.single_observation_space, envs.single_action_space,
                       build(MLPPolicyConfig, cfg.policy, "policy", ignore=("kind",)))
    start = time.perf_counter()
    result = train_ppo(policy, envs, config, seed=seed, progress=False)
    # the training return of the episodes that ended in the last 10 updates that ended any, weighted by their count
    ended = [(row["env_steps"], row["episode_return_mean"], row["episodes"]) for row in result.history if row["episodes"]]
    curve = [(step, sum(r * n for _, r, n in ended[max(0, i - 9):i + 1]) / sum(n for _, _, n in ended[max(0, i - 9):i + 1]))
             for i, (step, _, _) in enumerate(ended)]
    reached = next((step for step, ret in curve if reach is not None and ret >= reach), None)
    return {"steps": result.env_steps, "final_return": curve[-1][1] if curve else None, "best_return": max((r for _, r in curve), default=None),
            "steps_to_dream_return": reached, "wall_seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="dream runs at a time (one torch thread each)")
    parser.add_argument("--ppo-steps", type=int, default=200_000, help="real steps of the PPO-on-the-real-env baseline")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides for every dream run, e.g. writer=neural")
    args = parser.parse_args()
    torch.set_num_threads(1)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = Path(__file__).parent / "results" / f"sample-efficiency-{stamp}"
    jobs = [(experiment, seed) for experiment in args.experiments for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda job: dream_run(*job, root, args.device, args.overrides), jobs))

    baselines = {}
    for experiment in args.experiments:
        cfg = compose_config("train", [f"+experiment={experiment}", *args.overrides])
        finished = [row["real_return_mean"] for row in rows if row["experiment"] == experiment and row["status"] == "finished"]
        reach = float(np.mean(finished)) if finished else None
        baselines[experiment] = {
            "random_return": random_return(cfg.trace.env_id, cfg.eval.episodes, cfg.eval.seed),
            "ppo_real": real_ppo(cfg, args.ppo_steps, reach, seed=0),
            "dream_mean_real_return": reach,
        }
        print(experiment, baselines[experiment], flush=True)

    table = Table(title="Sample efficiency: dream runs (one row per seed) against random play and PPO on the real env")
    for column in ("experiment", "seed", "real return", "normalized", "dream return", "gap", "real steps", "obs NRMSE", "wall s",
                   "target"):
        table.add_column(column, justify="right")
    for row in rows:
        target = TARGETS[row["experiment"]]
        if row["status"] == "stopped":
            table.add_row(row["experiment"], str(row["seed"]), "stopped", "", "", "", "", "", "", row["reason"][:60] + "…")
            continue
        b = baselines[row["experiment"]]
        span = (b["ppo_real"]["best_return"] or b["random_return"]) - b["random_return"]
        row["normalized_return"] = (row["real_return_mean"] - b["random_return"]) / span if span > 0 else None
        met = None if target is None else (row["real_return_mean"] >= target["min_return"]
                                           and row["real_env_steps"] <= target["max_real_steps"])
        row["target_met"] = met
        fraction = row["dream_real_gap_fraction"]
        table.add_row(row["experiment"], str(row["seed"]), f"{row['real_return_mean']:.1f} ± {row['real_return_std']:.1f}",
                      "-" if row["normalized_return"] is None else f"{row['normalized_return']:.2f}",
                      f"{row['dream_return_mean']:.1f}", f"{row['dream_real_gap']:+.1f}" + ("" if fraction is None else f" ({fraction:.0%})"),
                      f"{row['real_env_steps']:,}", f"{row['obs_nrmse_mean']:.4f}", f"{row['wall_seconds']:.0f}",
                      "-" if target is None else f"{'met' if met else 'MISSED'} (≥{target['min_return']:g} / "
                                                 f"≤{target['max_real_steps']:,})")
    console = Console(width=170)
    console.print(table)
    baseline_table = Table(title=f"Baselines on the real env (PPO: {args.ppo_steps:,} real steps, 8 envs, seed 0)")
    for column in ("experiment", "random", "dream (mean of seeds)", "PPO final", "PPO best", "PPO real steps to the dream's return"):
        baseline_table.add_column(column, justify="right")
    for experiment, b in baselines.items():
        ppo = b["ppo_real"]
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        baseline_table.add_row(experiment, fmt(b["random_return"]), fmt(b["dream_mean_real_return"]), fmt(ppo["final_return"]),
                               fmt(ppo["best_return"]), "-" if b["dream_mean_real_return"] is None
                               else f"{ppo['steps_to_dream_return']:,}" if ppo["steps_to_dream_return"] else f"not within {ppo['steps']:,}")
    console.print(baseline_table)
    hardware = {"platform": platform.platform(), "processor": platform.processor(), "cores": os.cpu_count()}
    out = write_json(root / "summary.json", {"date": stamp, "hardware": hardware, "targets": TARGETS, "jobs": args.jobs,
                                             "overrides": args.overrides,
                                             "runs": rows, "baselines": baselines})
    print(f"written: {out}")


if __name__ == "__main__":
    main()
