"""Why round 2's PPO failed in a faithful dream: each suspect, measured on a finished dream run.

Takes a run dir of the dream loop (two or more rounds, e.g. `python -m dreamer.train seed=0`), and
trains PPO again in its last round's sim, once per variant below and training seed (`--seeds`, default the
run's own); each trained policy is evaluated deterministically in that sim (`eval.dream_episodes` episodes, as
the run's pick does) and in the real env, there also over longer episodes (`--long-horizon`, default 4x the
env's: a policy that drifts slowly fails there). Variants:

- `carried, fixed stats`: the policy of the round before, its obs statistics frozen (the old default);
- `carried`: the same, the statistics following the rollouts (`algo.update_obs_stats=true`);
- `carried, ent_coef 0.01`, `carried, fresh critic`, `carried, 128-step rollouts`: one change each;
- `fresh, fixed stats`: a new policy with the last round's trace statistics, frozen;
- `fresh, raw rewards`: a new policy learning from the env's rewards as they are (`algo.normalize_reward=false`);
- `fresh, sim trusted everywhere`: a new policy in the sim as written (`sim.support=null`);
- `fresh, raw rewards, sim trusted everywhere`: both (the pipeline before 2026-12-07);
- `fresh`: a new policy, statistics following the rollouts, rewards divided by the running std of the
  discounted return, in the sim as far as the session vouches for it (what the pipeline does now).

`--variants` picks some of them by name. The table gives each variant's mean over the seeds and how many seeds'
policies fell short of the best dream return the runs reached by more than 5%.

It also compares the sim's horizon and episode-start box with the real env's (`gymnasium.make(...).spec`
and 1,000 seeded resets). Prints a table and writes a JSON under benchmarks/results/.

    python benchmarks/dream_diagnosis.py runs/2026-12-02_15-00-00
    python benchmarks/dream_diagnosis.py runs/seed2 --variants "fresh, raw rewards" fresh --seeds 0 1 2 3 4 5 --jobs 2
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import gymnasium
import numpy as np
import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from dreamer.artifacts import write_json
from dreamer.config import build
from dreamer.pipelines.config import SimConfig
from dreamer.pipelines.dream import session_support, trusted
from dreamer.rl import MLPPolicy, MLPPolicyConfig, PPOConfig, evaluate_in_sim, evaluate_policy, train_ppo
from dreamer.sandbox import load_sim
from dreamer.sim import SimVectorEnv
from dreamer.traces import load_trace


# variant -> (how the policy starts: carried over from the round before, with a fresh critic; PPO config changes)
VARIANTS = {
    "carried, fixed stats": (dict(carried=True), dict(update_obs_stats=False)),
    "carried": (dict(carried=True), {}),
    "carried, ent_coef 0.01": (dict(carried=True), dict(ent_coef=0.01)),
    "carried, fresh critic": (dict(carried=True, fresh_critic=True), {}),
    "carried, 128-step rollouts": (dict(carried=True), dict(num_steps=128)),
    "fresh, fixed stats": (dict(carried=False), dict(update_obs_stats=False)),
    "fresh, raw rewards": (dict(carried=False), dict(normalize_reward=False)),
    "fresh, sim trusted everywhere": (dict(carried=False, everywhere=True), {}),
    "fresh, raw rewards, sim trusted everywhere": (dict(carried=False, everywhere=True), dict(normalize_reward=False)),
    "fresh": (dict(carried=False), {}),
}


def real_returns(model: MLPPolicy, env_id: str, episodes: int, seed: int, horizon: int | None = None) -> np.ndarray:
    env = gymnasium.make(env_id) if horizon is None else gymnasium.make(env_id, max_episode_steps=horizon)
    return evaluate_policy(model, env, episodes, seed)


def train_variant(run_dir: Path, name: str, seed: int, episodes: int, long_horizon: int) -> dict:
    """Round `rounds`' PPO of `run_dir` again under variant `name`, from training seed `seed` (one torch thread)."""
    torch.set_num_threads(1)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    rounds = len(cfg.trace.steps_per_round)
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    previous = checkpoint["done"][f"round {rounds - 1} PPO"]["result"]["policy"]
    session = load_trace(run_dir / "trace.jsonl")
    stats = session.summary()
    policy_args, overrides = VARIANTS[name]
    sim_config = build(SimConfig, cfg.sim, "sim")
    sim = load_sim(run_dir / "env" / f"{cfg.sim.name}.py")
    sim = trusted(sim, None if policy_args.get("everywhere") else session_support(session, sim, sim_config))
    config = dataclasses.replace(build(PPOConfig, cfg.algo, "algo", ignore=("kind", "progress")), **overrides)
    torch.manual_seed(seed)
    model = MLPPolicy(session.observation_space, session.action_space,
                      build(MLPPolicyConfig, cfg.policy, "policy", ignore=("kind",)))
    fresh = copy.deepcopy(model.critic.state_dict())  # (state_dict shares the tensors load_state_dict fills)
    if policy_args["carried"]:
        model.load_state_dict(previous)
        if policy_args.get("fresh_critic"):
            model.critic.load_state_dict(fresh)
    else:
        model.set_obs_stats(np.asarray(stats.obs_mean), np.asarray(stats.obs_std), stats.num_transitions)
    start = time.perf_counter()
    result = train_ppo(model, SimVectorEnv(sim, config.num_envs), config, seed=seed, progress=False)
    last = result.history[-1]
    return {
        "variant": name, "seed": seed,
        "dream_return": float(evaluate_in_sim(model, sim, cfg.eval.dream_episodes, cfg.eval.seed).mean()),
        "real_return": float(real_returns(model, cfg.trace.env_id, episodes, cfg.eval.seed).mean()),
        "real_return_long": float(real_returns(model, cfg.trace.env_id, episodes, cfg.eval.seed, long_horizon).mean()),
        "final_entropy": last["entropy"], "final_clip_fraction": last["clip_fraction"],
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--episodes", type=int, default=20, help="real evaluation episodes per variant")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="training seeds (default: the run's seed)")
    parser.add_argument("--jobs", type=int, default=1, help="trainings at a time, one torch thread each")
    parser.add_argument("--long-horizon", type=int, default=None, help="real episode length of the long evaluation "
                        "(default: 4x the env's time limit)")
    args = parser.parse_args()

    run_dir = args.run_dir
    cfg = OmegaConf.load(run_dir / "config.yaml")
    rounds = len(cfg.trace.steps_per_round)
    seeds = args.seeds or [cfg.seed]
    long_horizon = args.long_horizon or 4 * gymnasium.make(cfg.trace.env_id).spec.max_episode_steps
    jobs = [(name, seed) for name in args.variants for seed in seeds]
    rows = []
    with ProcessPoolExecutor(args.jobs) as pool:
        for row in pool.map(train_variant, *zip(*[(run_dir, name, seed, args.episodes, long_horizon) for name, seed in jobs])):
            rows.append(row)
            print(row, flush=True)

    sim = load_sim(run_dir / "env" / f"{cfg.sim.name}.py")
    real = gymnasium.make(cfg.trace.env_id)
    starts = np.stack([real.reset(seed=i)[0] for i in range(1000)])
    sampler = {
        "sim_max_episode_steps": sim.max_episode_steps, "real_max_episode_steps": real.spec.max_episode_steps,
        "sim_initial_low": sim.initial(torch.Generator().manual_seed(0), 1000).amin(0).tolist(),
        "sim_initial_high": sim.initial(torch.Generator().manual_seed(0), 1000).amax(0).tolist(),
        "real_initial_low": starts.min(0).tolist(), "real_initial_high": starts.max(0).tolist(),
    }

    best = max(row["dream_return"] for row in rows)
    short = best - 0.05 * abs(best)
    table = Table(title=f"Round {rounds} PPO in {run_dir}'s last sim, by variant (run seed {cfg.seed}; "
                        f"training seeds {seeds}; mean over them)")
    for column in ("variant", "dream return", "real return", f"real return, {long_horizon}-step episodes",
                   f"seeds short of {short:.1f} in the dream",
                   "final entropy", "final clip fraction", "s"):
        table.add_column(column, justify="right")
    for name in args.variants:
        mine = [row for row in rows if row["variant"] == name]
        mean = lambda key: float(np.mean([row[key] for row in mine]))  # noqa: E731
        table.add_row(name, f"{mean('dream_return'):.1f}", f"{mean('real_return'):.1f}", f"{mean('real_return_long'):.1f}",
                      f"{sum(row['dream_return'] < short for row in mine)} of {len(mine)}",
                      f"{mean('final_entropy'):.3f}", f"{mean('final_clip_fraction'):.3f}", f"{mean('seconds'):.0f}")
    console = Console(width=160)
    console.print(table)
    console.print(sampler)
    out = Path(__file__).parent / "results" / f"dream-diagnosis-{time.strftime('%Y%m%d-%H%M%S')}-seed{cfg.seed}.json"
    write_json(out, {"run_dir": str(run_dir), "seed": cfg.seed, "training_seeds": seeds, "long_horizon": long_horizon,
                     "config": OmegaConf.to_container(cfg), "variants": rows, "sampler": sampler})
    print(f"written: {out}")


if __name__ == "__main__":
    main()
