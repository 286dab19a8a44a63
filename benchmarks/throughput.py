"""Throughput of the dream: raw sim steps/s and PPO training steps/s, dream vs the real env.

    python benchmarks/throughput.py [--device cpu|cuda|auto] [--envs 1024 16384] [--seconds 3] [--out results.json]

In one run it
1. writes the dream CartPole sim the way `dreamer.train` does: a 5,000-step CartPole-v1 trace
   (random policy, seed 0) split into train / held-out episodes, the SymbolicWriter with
   conf/writer/symbolic.yaml, the sandbox's `validate` with conf/sandbox/default.yaml, then
   `load_sim` from a temp file beside the sandbox report (the sim must be accepted). The
   hand-written exact-physics sim (tests/fixtures/cartpole_sim.py) is measured for reference;
2. times raw env steps/s (random actions, autoreset included) of both sims in `SimVectorEnv` on
   the device, the fused step compiled (the dream sim also eager), and of Gymnasium's own vectorized
   CartPole (`vector_entry_point`, numpy, CPU) at each `--envs` size, each over a wall budget of
   `--seconds` after a warm-up; the compile time is reported apart;
3. times PPO (`train_ppo`, conf/algo/ppo.yaml, conf/policy/mlp.yaml) in the dream (num_envs as in
   the config, on the device, step compiled) vs in the real env (`TorchVectorEnv` of 8 Gymnasium CartPoles, CPU,
   num_envs overridden to 8, everything else the same), each after a one-update warm-up;
4. prints a table with the goals beside the figures (not asserted) and writes every figure, the
   hardware, the date and the seed as JSON to `--out` (never overwriting a file).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import gymnasium
import numpy as np
import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_limits

import dreamer
from dreamer.artifacts import write_json
from dreamer.config import build, resolve_device
from dreamer.rl import MLPPolicy, MLPPolicyConfig, PPOConfig, train_ppo
from dreamer.rl.ppo import TorchVectorEnv
from dreamer.sandbox import SandboxConfig, load_sim, validate
from dreamer.sim import SimVectorEnv
from dreamer.sim.contract import FuncSim
from dreamer.sim.fidelity import Fidelity
from dreamer.traces import collect_trace
from dreamer.writers import SymbolicWriter, SymbolicWriterConfig

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
EXACT_SIM = ROOT / "tests" / "fixtures" / "cartpole_sim.py"
ENV_ID = "CartPole-v1"
TRACE_STEPS = 5_000
REAL_PPO_ENVS = 8
ACTION_POOL = 64  # distinct pre-drawn action batches, cycled through while timing

GOAL_RAW_RATIOS_CPU = {1_024: 1.0, 16_384: 2.0}  # envs -> dream / Gymnasium vectorized CartPole, on CPU
GOAL_PPO_RATIO = 20.0           # PPO steps/s in the dream / in the real env
GOAL_GPU_RAW = 50e6             # raw dream steps/s on an H100-class GPU

console = Console()


# ---------------------------------------------------------------------------------------------
# Setup


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_conf(name: str, seed: int):
    """A config group file from conf/, with the root keys it interpolates (seed, device) filled in."""
    cfg = OmegaConf.load(CONF / name)
    if "seed" in cfg:
        cfg.seed = seed
    return cfg


def default_out(device: torch.device) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return ROOT / "benchmarks" / "results" / f"throughput-{device.type}-{stamp}.json"


def hardware(device: torch.device) -> dict:
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu_model": cpu_model or platform.processor() or platform.machine(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "gymnasium": gymnasium.__version__,
        "dreamer": getattr(dreamer, "__version__", None),
        "device": str(device),
        "device_name": None,
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def write_dream_sim(seed: int) -> tuple[FuncSim, dict]:
    """Trace -> SymbolicWriter -> sandbox -> load_sim, as `dreamer.train` does for one round."""
    trace_cfg = load_conf("trace/gym.yaml", seed)
    t0 = time.perf_counter()
    trace = collect_trace(gymnasium.make(ENV_ID), TRACE_STEPS, seed=seed)
    train_trace, held_out = trace.split(trace_cfg.held_out_fraction, seed)
    t1 = time.perf_counter()
    writer = SymbolicWriter(build(SymbolicWriterConfig, load_conf("writer/symbolic.yaml", seed), "writer", ignore=("kind",)))
    source = writer.draft(train_trace)
    t2 = time.perf_counter()
    report = validate(source, held_out, SandboxConfig.from_dict(load_conf("sandbox/default.yaml", seed)), name="dream")
    t3 = time.perf_counter()
    if not report.accepted:
        raise SystemExit("the sandbox rejected the written dream sim:\n  " + "\n  ".join(report.reasons))
    with tempfile.TemporaryDirectory(prefix="dreamer-bench-") as tmp:
        path = Path(tmp) / "dream.py"
        path.write_text(source)
        report.save(Path(tmp) / "report.json")  # load_sim reads the verdict beside the file
        sim = load_sim(path)
    stats = train_trace.summary()
    meta = {
        "trace_steps": len(trace),
        "trace_episodes": trace.num_episodes,
        "train_transitions": len(train_trace),
        "held_out_transitions": len(held_out),
        "obs_mean": list(map(float, stats.obs_mean)),
        "obs_std": list(map(float, stats.obs_std)),
        "seconds_trace": t1 - t0,
        "seconds_write": t2 - t1,
        "seconds_validate": t3 - t2,
        "accepted": report.accepted,
        "fidelity": report.fidelity.to_dict(),  # measured: the sim was accepted
        "source": source,
    }
    return sim, meta


# ---------------------------------------------------------------------------------------------
# Raw env steps/s


def time_loop(step, device: torch.device, num_envs: int, seconds: float, warmup_steps: int, chunk: int) -> dict:
    """Call `step(i)` for `warmup_steps`, then in chunks until `seconds` of wall clock have passed."""
    for i in range(warmup_steps):
        step(i)
    sync(device)
    steps, start = 0, time.perf_counter()
    while True:
        for _ in range(chunk):
            step(steps)
            steps += 1
        sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    return {"num_envs": num_envs, "vector_steps": steps, "seconds": elapsed, "steps_per_second": steps * num_envs / elapsed}


def raw_sim(sim: FuncSim, num_envs: int, device: torch.device, seconds: float, seed: int, compile: bool) -> dict:
    envs = SimVectorEnv(sim, num_envs, device=device, compile=compile)
    envs.reset(seed=seed)  # compiles the fused step when asked
    gen = torch.Generator(device=device).manual_seed(seed)
    actions = torch.randint(0, int(sim.action_space.n), (ACTION_POOL, num_envs), generator=gen, device=device)
    result = time_loop(lambda i: envs.step(actions[i % ACTION_POOL]), device, num_envs, seconds, warmup_steps=20, chunk=10)
    envs.close()
    return {**result, "compiled": envs.compiled, "compile_seconds": envs.compile_seconds}


def raw_gymnasium(num_envs: int, seconds: float, seed: int) -> dict:
    envs = gymnasium.make_vec(ENV_ID, num_envs=num_envs, vectorization_mode="vector_entry_point")
    envs.reset(seed=seed)
    actions = np.random.default_rng(seed).integers(0, 2, size=(ACTION_POOL, num_envs), dtype=np.int64)
    result = time_loop(lambda i: envs.step(actions[i % ACTION_POOL]), torch.device("cpu"), num_envs, seconds,
                       warmup_steps=20, chunk=10)
    envs.close()
    return result


# ---------------------------------------------------------------------------------------------
# PPO steps/s


def make_policy(observation_space, action_space, policy_config: MLPPolicyConfig, obs_mean, obs_std, device, seed: int):
    torch.manual_seed(seed)
    policy = MLPPolicy(observation_space, action_space, policy_config)
    policy.set_obs_stats(np.asarray(obs_mean), np.asarray(obs_std))
    return policy.to(device)


def ppo_run(make_envs, config: PPOConfig, updates: int, policy_args: tuple, device, seed: int) -> dict:
    """One warm-up update (discarded), then `updates` updates; figures from PPOResult."""
    batch = config.num_envs * config.num_steps
    warm = dataclasses.replace(config, total_steps=batch)
    train_ppo(make_policy(*policy_args, device, seed), make_envs(), warm, seed=seed, progress=False)
    timed = dataclasses.replace(config, total_steps=updates * batch)
    start = time.perf_counter()
    result = train_ppo(make_policy(*policy_args, device, seed), make_envs(), timed, seed=seed, progress=False)
    sync(device)
    return {
        "num_envs": config.num_envs,
        "num_steps": config.num_steps,
        "updates": result.updates,
        "env_steps": result.env_steps,
        "seconds": time.perf_counter() - start,
        "steps_per_second": result.steps_per_second,
        "episode_return_mean": result.episode_return_mean,
    }


def benchmark_ppo(sim: FuncSim, meta: dict, device: torch.device, updates: int, seed: int) -> dict:
    ppo_config = build(PPOConfig, load_conf("algo/ppo.yaml", seed), "algo", ignore=("kind", "progress"))
    policy_config = build(MLPPolicyConfig, load_conf("policy/mlp.yaml", seed), "policy", ignore=("kind",))
    stats = (meta["obs_mean"], meta["obs_std"])
    dream = ppo_run(lambda: SimVectorEnv(sim, ppo_config.num_envs, device=device, compile=True), ppo_config, updates,
                    (sim.observation_space, sim.action_space, policy_config, *stats), device, seed)
    real_config = dataclasses.replace(ppo_config, num_envs=REAL_PPO_ENVS)
    probe = gymnasium.make(ENV_ID)
    cpu = torch.device("cpu")
    real = ppo_run(lambda: TorchVectorEnv([lambda: gymnasium.make(ENV_ID)] * REAL_PPO_ENVS, device="cpu"), real_config, updates,
                   (probe.observation_space, probe.action_space, policy_config, *stats), cpu, seed)
    return {
        "config": dataclasses.asdict(ppo_config),
        "dream": {**dream, "device": str(device)},
        "real": {**real, "device": "cpu"},
        "ratio": dream["steps_per_second"] / real["steps_per_second"],
    }


# ---------------------------------------------------------------------------------------------
# Report


def fmt_rate(value: float) -> str:
    return f"{value / 1e6:,.2f} M/s" if value >= 1e6 else f"{value:,.0f} /s"


def goals(figures: dict, device: torch.device) -> dict:
    raw = {row["num_envs"]: row for row in figures["raw"]}
    out = {}
    for envs, goal in GOAL_RAW_RATIOS_CPU.items():
        row = raw.get(envs)
        value = None if row is None or device.type != "cpu" else row["ratio_dream_over_gymnasium"]
        out[f"raw_ratio_cpu_{envs}"] = {"goal": f"dream >= {goal:g}x Gymnasium's vectorized CartPole at {envs:,} envs on CPU",
                                        "value": value, "met": None if value is None else value >= goal}
    ppo_ratio = figures["ppo"]["ratio"]
    out["ppo_ratio"] = {"goal": f"PPO in the dream >= {GOAL_PPO_RATIO:g}x PPO on the real env", "value": ppo_ratio,
                        "met": ppo_ratio >= GOAL_PPO_RATIO}
    best = max(r["dream"]["steps_per_second"] for r in figures["raw"])
    out["gpu_raw"] = {"goal": f"raw dream steps/s >= {GOAL_GPU_RAW / 1e6:g}M on an H100-class GPU",
                      "value": best if device.type == "cuda" else None,
                      "met": (best >= GOAL_GPU_RAW) if device.type == "cuda" else None}
    return out


def verdict(goal: dict) -> str:
    if goal["met"] is None:
        return "[dim]n/a on this device[/]"
    return "[green]met[/]" if goal["met"] else "[red]not met[/]"


def print_tables(figures: dict, device: torch.device) -> None:
    hw = figures["hardware"]
    where = hw["device_name"] or f"{hw['cpu_model']}, {hw['cpu_cores']} cores"
    raw = Table(title=f"Raw env steps/s (random actions, autoreset) — sims on {device} ({where})")
    for column in ("envs", "dream sim, compiled", "dream sim, eager", "exact sim, compiled", "gymnasium vector (CPU)",
                   "dream / gymnasium", "goal"):
        raw.add_column(column, justify="right")
    for row in figures["raw"]:
        goal = figures["goals"].get(f"raw_ratio_cpu_{row['num_envs']}")
        raw.add_row(f"{row['num_envs']:,}", fmt_rate(row["dream"]["steps_per_second"]),
                    fmt_rate(row["dream_eager"]["steps_per_second"]), fmt_rate(row["exact"]["steps_per_second"]),
                    fmt_rate(row["gymnasium"]["steps_per_second"]), f"{row['ratio_dream_over_gymnasium']:.2f}x",
                    "" if goal is None else f">= {GOAL_RAW_RATIOS_CPU[row['num_envs']]:g}x on CPU: {verdict(goal)}")
    console.print(raw)
    compile_seconds = [row["dream"]["compile_seconds"] for row in figures["raw"] if row["dream"]["compiled"]]
    if compile_seconds:
        console.print(f"Compiling the dream sim's fused step took {', '.join(f'{s:.1f}' for s in compile_seconds)} s "
                      f"(once per env; not in the rates).")

    ppo = figures["ppo"]
    table = Table(title="PPO training steps/s (train_ppo, conf/algo/ppo.yaml)")
    for column in ("env", "device", "num_envs x num_steps", "updates", "steps/s"):
        table.add_column(column, justify="right")
    table.add_row("dream sim (SimVectorEnv)", ppo["dream"]["device"], f"{ppo['dream']['num_envs']} x {ppo['dream']['num_steps']}",
                  str(ppo["dream"]["updates"]), fmt_rate(ppo["dream"]["steps_per_second"]))
    table.add_row("real CartPole-v1 (TorchVectorEnv)", "cpu", f"{ppo['real']['num_envs']} x {ppo['real']['num_steps']}",
                  str(ppo["real"]["updates"]), fmt_rate(ppo["real"]["steps_per_second"]))
    table.add_row("ratio dream / real", "", "", "", f"{ppo['ratio']:.1f}x  (goal >= {GOAL_PPO_RATIO:g}x: {verdict(figures['goals']['ppo_ratio'])})")
    console.print(table)

    gpu = figures["goals"]["gpu_raw"]
    best = max(r["dream"]["steps_per_second"] for r in figures["raw"])
    console.print(f"Best raw dream steps/s: {fmt_rate(best)}  (goal on an H100-class GPU >= {GOAL_GPU_RAW / 1e6:g}M/s: {verdict(gpu)})")


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available); default auto")
    parser.add_argument("--envs", type=int, nargs="+", default=[1024, 16384], help="vector sizes for the raw step figures")
    parser.add_argument("--seconds", type=float, default=3.0, help="wall budget of each raw step measurement (s)")
    parser.add_argument("--ppo-updates", type=int, default=3, help="timed PPO updates on each env (after one warm-up update)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (and BLAS threads) for the whole run; default: torch's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default benchmarks/results/throughput-<device>-<timestamp>.json); never overwritten")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    out = args.out or default_out(device)
    if out.exists():
        raise SystemExit(f"{out} exists; this benchmark never overwrites a result (choose another --out)")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    started = dt.datetime.now(dt.timezone.utc)
    torch.manual_seed(args.seed)

    console.print(f"[bold]1/3[/] writing the dream sim: {TRACE_STEPS:,} random steps of {ENV_ID}, SymbolicWriter, sandbox ...")
    dream_sim, meta = write_dream_sim(args.seed)
    exact_sim = load_sim(EXACT_SIM)
    console.print(f"  trace {meta['seconds_trace']:.1f} s, write {meta['seconds_write']:.1f} s, "
                  f"validate {meta['seconds_validate']:.1f} s: accepted "
                  f"(one-step obs NRMSE {Fidelity.from_dict(meta['fidelity']).obs_nrmse_mean:.3g})")

    console.print(f"[bold]2/3[/] raw env steps/s at {args.envs} envs, {args.seconds:g} s each ...")
    raw = []
    for n in args.envs:
        row = {
            "num_envs": n,
            "dream": raw_sim(dream_sim, n, device, args.seconds, args.seed, compile=True),
            "dream_eager": raw_sim(dream_sim, n, device, args.seconds, args.seed, compile=False),
            "exact": raw_sim(exact_sim, n, device, args.seconds, args.seed, compile=True),
            "gymnasium": raw_gymnasium(n, args.seconds, args.seed),
        }
        row["ratio_dream_over_gymnasium"] = row["dream"]["steps_per_second"] / row["gymnasium"]["steps_per_second"]
        row["ratio_exact_over_gymnasium"] = row["exact"]["steps_per_second"] / row["gymnasium"]["steps_per_second"]
        row["ratio_compiled_over_eager"] = row["dream"]["steps_per_second"] / row["dream_eager"]["steps_per_second"]
        raw.append(row)
        compiled = (f"compiled in {row['dream']['compile_seconds']:.1f} s" if row["dream"]["compiled"]
                    else "compile failed: eager")
        console.print(f"  {n:>9,} envs: dream {fmt_rate(row['dream']['steps_per_second'])} ({compiled}), "
                      f"eager {fmt_rate(row['dream_eager']['steps_per_second'])}, "
                      f"exact {fmt_rate(row['exact']['steps_per_second'])}, "
                      f"gymnasium {fmt_rate(row['gymnasium']['steps_per_second'])}")

    console.print(f"[bold]3/3[/] PPO steps/s: dream vs real env, {args.ppo_updates} timed updates each ...")
    ppo = benchmark_ppo(dream_sim, meta, device, args.ppo_updates, args.seed)

    figures = {
        "benchmark": "throughput",
        "date": started.isoformat(timespec="seconds"),
        "seed": args.seed,
        "command": [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])],
        "settings": {"device": str(device), "threads": torch.get_num_threads(), "envs": args.envs, "seconds": args.seconds, "ppo_updates": args.ppo_updates,
                     "trace_steps": TRACE_STEPS, "real_ppo_envs": REAL_PPO_ENVS},
        "hardware": hardware(device),
        "dream_sim": meta,
        "raw": raw,
        "ppo": ppo,
    }
    figures["goals"] = goals(figures, device)
    figures["wall_seconds"] = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
    print_tables(figures, device)
    if out.exists():
        raise SystemExit(f"{out} appeared while the benchmark ran; not overwriting it")
    write_json(out, figures)
    console.print(f"results: {out}")
    return figures


if __name__ == "__main__":
    main()
