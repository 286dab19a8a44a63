"""Why round 2's PPO failed in a faithful dream: each suspect, measured on a finished dream run.

Takes a run dir of the dream loop (two or more rounds, e.g. `python -m dreamer.train seed=0`), and
trains PPO again in its last round's sim, once per variant below, from the same seed; each trained
policy is evaluated deterministically in that sim and in the real env. Variants:

- `carried, fixed stats`: the policy of the round before, its obs statistics frozen (the old default);
- `carried`: the same, the statistics following the rollouts (`algo.update_obs_stats=true`);
- `carried, ent_coef 0.01`, `carried, fresh critic`, `carried, 128-step rollouts`: one change each;
- `fresh, fixed stats`: a new policy with the last round's trace statistics, frozen;
- `fresh`: a new policy, statistics following the rollouts (what the pipeline does now).

It also compares the sim's horizon and episode-start box with the real env's (`gymnasium.make(...).spec`
and 1,000 seeded resets). Prints a table and writes a JSON under benchmarks/results/.

    python benchmarks/dream_diagnosis.py runs/2026-12-02_15-00-00
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from pathlib import Path

import gymnasium
import numpy as np
import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from dreamer.artifacts import write_json
from dreamer.config import build
from dreamer.rl import MLPPolicy, MLPPolicyConfig, PPOConfig, evaluate_in_sim, evaluate_policy, train_ppo
from dreamer.sandbox import load_sim
from dreamer.sim import SimVectorEnv
from dreamer.traces import load_trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--episodes", type=int, default=20, help="real evaluation episodes per variant")
    args = parser.parse_args()
    torch.set_num_threads(1)

    run_dir = args.run_dir
    cfg = OmegaConf.load(run_dir / "config.yaml")
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    rounds = len(cfg.trace.steps_per_round)
    previous = checkpoint["done"][f"round {rounds - 1} PPO"]["result"]["policy"]
    sim = load_sim(run_dir / "env" / f"{cfg.sim.name}.py")
    session = load_trace(run_dir / "trace.jsonl")
    stats = session.summary()
    base = build(PPOConfig, cfg.algo, "algo", ignore=("kind", "progress"))
    policy_config = build(MLPPolicyConfig, cfg.policy, "policy", ignore=("kind",))

    def policy(carried: bool, fresh_critic: bool = False) -> MLPPolicy:
        model = MLPPolicy(session.observation_space, session.action_space, policy_config)
        fresh = copy.deepcopy(model.critic.state_dict())  # (state_dict shares the tensors load_state_dict fills)
        if carried:
            model.load_state_dict(previous)
            if fresh_critic:
                model.critic.load_state_dict(fresh)
        else:
            model.set_obs_stats(np.asarray(stats.obs_mean), np.asarray(stats.obs_std), stats.num_transitions)
        return model

    variants = {
        "carried, fixed stats": (dict(carried=True), dict(update_obs_stats=False)),
        "carried": (dict(carried=True), {}),
        "carried, ent_coef 0.01": (dict(carried=True), dict(ent_coef=0.01)),
        "carried, fresh critic": (dict(carried=True, fresh_critic=True), {}),
        "carried, 128-step rollouts": (dict(carried=True), dict(num_steps=128)),
        "fresh, fixed stats": (dict(carried=False), dict(update_obs_stats=False)),
        "fresh": (dict(carried=False), {}),
    }
    rows = []
    for name, (policy_args, overrides) in variants.items():
        torch.manual_seed(cfg.seed)
        model = policy(**policy_args)
        config = dataclasses.replace(base, **overrides)
        start = time.perf_counter()
        result = train_ppo(model, SimVectorEnv(sim, config.num_envs), config, seed=cfg.seed, progress=False)
        last = result.history[-1]
        rows.append({
            "variant": name,
            "dream_return": float(evaluate_in_sim(model, sim, 256, cfg.eval.seed).mean()),
            "real_return": float(evaluate_policy(model, gymnasium.make(cfg.trace.env_id), args.episodes, cfg.eval.seed).mean()),
            "final_entropy": last["entropy"], "final_clip_fraction": last["clip_fraction"],
            "seconds": time.perf_counter() - start,
        })
        print(rows[-1], flush=True)

    real = gymnasium.make(cfg.trace.env_id)
    starts = np.stack([real.reset(seed=i)[0] for i in range(1000)])
    sampler = {
        "sim_max_episode_steps": sim.max_episode_steps, "real_max_episode_steps": real.spec.max_episode_steps,
        "sim_initial_low": sim.initial(torch.Generator().manual_seed(0), 1000).amin(0).tolist(),
        "sim_initial_high": sim.initial(torch.Generator().manual_seed(0), 1000).amax(0).tolist(),
        "real_initial_low": starts.min(0).tolist(), "real_initial_high": starts.max(0).tolist(),
    }

    table = Table(title=f"Round {rounds} PPO in {run_dir}'s last sim, by variant (seed {cfg.seed})")
    for column in ("variant", "dream return", "real return", "final entropy", "final clip fraction", "s"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(row["variant"], f"{row['dream_return']:.1f}", f"{row['real_return']:.1f}",
                      f"{row['final_entropy']:.3f}", f"{row['final_clip_fraction']:.3f}", f"{row['seconds']:.0f}")
    console = Console(width=140)
    console.print(table)
    console.print(sampler)
    out = Path(__file__).parent / "results" / f"dream-diagnosis-{time.strftime('%Y%m%d-%H%M%S')}-seed{cfg.seed}.json"
    write_json(out, {"run_dir": str(run_dir), "seed": cfg.seed, "config": OmegaConf.to_container(cfg),
                     "variants": rows, "sampler": sampler})
    print(f"written: {out}")


if __name__ == "__main__":
    main()
