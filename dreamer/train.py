"""The entry point: `python -m dreamer.train [+experiment=NAME] [overrides]`.

`pipeline` picks what runs: `dream` (the default, below), or the OPSD experiments `opsd_self_context`
and `opsd_veteran` (`dreamer.opsd.experiments`). Every pipeline writes `config.yaml` first and
`metrics.json` last into a new run dir.

The dream loop: each round records real steps (appended to `trace.jsonl` as each episode ends) or
loads the trace file, has the writer write a sim from the session's training episodes that the sandbox
accepts on the held-out episodes, and trains PPO in vectorized copies of the accepted sim. The final
policy is evaluated in the real env. The run dir holds `trace.jsonl`, the write stage's `env/` (see `dreamer.writers.stage`; earlier rounds under
`env/round_<r>/`), `policy/`, `history.jsonl`, `metrics.json` and the resolved `config.yaml`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import gymnasium
import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from dreamer.artifacts import refuse_finished, write_json, write_text
from dreamer.config import build, require_set, resolve_device, to_plain, trace_columns
from dreamer.loggers import Logger, make_logger
from dreamer.opsd import Distillation, OPSDConfig, Teacher
from dreamer.opsd.experiments import self_context, veteran
from dreamer.rl import MLPPolicy, MLPPolicyConfig, PPOConfig, evaluate_policy, train_ppo
from dreamer.sandbox import SandboxConfig, load_sim
from dreamer.sim import SimVectorEnv
from dreamer.traces import TableColumns, TraceRecorder, load_trace, record_steps, save_trace
from dreamer.writers import Writer, make_writer, verdict_line, write_sim

console = Console(stderr=True)


def summary_table(metrics: dict) -> Table:
    table = Table(title="What the dream bought", show_header=False)
    fidelity = metrics["fidelity"] or {}
    rows = [
        ("accepted sim", str(metrics["accepted"])),
        ("real env steps", f"{metrics['real_env_steps']:,}"),
        ("dream env steps", f"{metrics['dream_env_steps']:,}"),
        ("dream steps/s (PPO)", f"{metrics['dream_steps_per_second']:,.0f}"),
        ("one-step obs NRMSE (held out)", f"{fidelity.get('obs_nrmse_mean', float('nan')):.4g}"),
        ("termination accuracy (held out)", f"{fidelity.get('termination_accuracy', float('nan')):.4g}"),
        ("real return", "not evaluated" if metrics["real_return_mean"] is None
         else f"{metrics['real_return_mean']:.1f} ± {metrics['real_return_std']:.1f} over {metrics['real_eval_episodes']} episodes"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Check the config, run `cfg.pipeline`; returns the metrics also written to `run_dir/metrics.json`."""
    start = time.perf_counter()
    refuse_finished(run_dir)
    require_set(cfg, "dreamer.train")
    if cfg.pipeline not in PIPELINES:
        raise ValueError(f"pipeline must be one of {sorted(PIPELINES)}, got {cfg.pipeline!r}")
    device = resolve_device(cfg.device)
    pipeline = PIPELINES[cfg.pipeline](cfg, run_dir)  # builds every config section first: bad values fail here
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    torch.manual_seed(cfg.seed)
    logger = make_logger(cfg.logger.kind, run_dir, to_plain(cfg), cfg.logger.project, cfg.logger.mode, cfg.logger.init_timeout_s)
    metrics, table = pipeline(logger, device)
    metrics.update(pipeline=cfg.pipeline, seed=cfg.seed, device=str(device), wall_seconds=time.perf_counter() - start)
    write_json(run_dir / "metrics.json", metrics)
    logger.finish()
    console.print(table)
    console.print(f"wall time {metrics['wall_seconds']:.0f} s; run dir: {run_dir}")
    return metrics


def dream(cfg: DictConfig, run_dir: Path) -> Callable[[Logger, torch.device], tuple[dict, Table]]:
    """The dream loop (module docstring); with `opsd.enabled`, a checkpoint teacher distils into every round's PPO."""
    writer = make_writer(cfg.writer)
    sandbox_config = build(SandboxConfig, cfg.sandbox, "sandbox")
    ppo_config = build(PPOConfig, cfg.algo, "algo", ignore=("name", "progress"))
    policy_config = build(MLPPolicyConfig, cfg.policy, "policy", ignore=("kind",))
    opsd = build(OPSDConfig, cfg.opsd, "opsd")
    if opsd.enabled and (opsd.teacher.kind != "checkpoint" or not opsd.teacher.path):
        raise ValueError("the dream loop distils from a saved veteran: set opsd.teacher.kind=checkpoint and "
                         f"opsd.teacher.path=RUN_DIR (got kind={opsd.teacher.kind!r}, path={opsd.teacher.path!r}); "
                         "self_context teachers run in +experiment=opsd_self_context")
    columns = trace_columns(cfg.trace) if cfg.trace.source == "file" else None
    return partial(run_dream, cfg, run_dir, writer, sandbox_config, ppo_config, policy_config, opsd, columns)


def run_dream(cfg: DictConfig, run_dir: Path, writer: Writer, sandbox_config: SandboxConfig, ppo_config: PPOConfig,
              policy_config: MLPPolicyConfig, opsd: OPSDConfig, columns: TableColumns | None, logger: Logger,
              device: torch.device) -> tuple[dict, Table]:
    teacher = Teacher.checkpoint(opsd.teacher.path, device) if opsd.enabled else None

    if cfg.trace.source == "env":
        rounds = list(cfg.trace.steps_per_round or [])
        if not rounds or any(not isinstance(steps, int) or steps < 1 for steps in rounds):
            raise ValueError(f"trace.steps_per_round must be a non-empty list of positive ints, got {rounds}")
        recorder = TraceRecorder(gymnasium.make(cfg.trace.env_id), path=run_dir / "trace.jsonl")  # appends as it goes
    elif cfg.trace.source == "file":
        session = load_trace(cfg.trace.path, columns)
        save_trace(session, run_dir / "trace.jsonl")
        rounds = [None]
    else:
        raise ValueError(f"trace.source must be 'env' or 'file', got {cfg.trace.source!r}")

    policy: MLPPolicy | None = None
    dream_steps, sps, written = 0, 0.0, None
    env_dir = run_dir / "env"
    for r, num_steps in enumerate(rounds):
        last = r == len(rounds) - 1
        if num_steps is not None:
            console.print(f"[bold]round {r + 1}/{len(rounds)}[/]: {num_steps:,} real steps in {cfg.trace.env_id}"
                          f" acting {'at random' if policy is None else 'with the dream policy'}")
            behaviour = None if policy is None else partial(policy.act, deterministic=False)
            session = record_steps(recorder, num_steps, cfg.seed + r, behaviour)
        train_trace, held_out = session.split(cfg.trace.held_out_fraction, cfg.seed)
        round_dir = env_dir if last else env_dir / f"round_{r}"
        previous = written.source if written is not None else None
        written = write_sim(writer, train_trace, held_out, sandbox_config, cfg.sim.name, round_dir, previous)
        report = written.report
        console.print(f"  writer={writer.name} ({written.label}): {verdict_line(report)}")
        logger.log({f"fidelity/{k}": v for k, v in (report.fidelity or {}).items() if isinstance(v, int | float)}, dream_steps)
        if not report.accepted:
            break
        sim = load_sim(round_dir / f"{cfg.sim.name}.py")
        if policy is None:
            policy = MLPPolicy(sim.observation_space, sim.action_space, policy_config).to(device)
            stats = train_trace.summary()
            policy.set_obs_stats(np.asarray(stats.obs_mean), np.asarray(stats.obs_std))
        envs = SimVectorEnv(sim, ppo_config.num_envs, device=device)
        distill = None if teacher is None else Distillation(policy, policy, teacher, opsd, seed=cfg.seed + r)
        result = train_ppo(policy, envs, ppo_config, seed=cfg.seed + r,
                           log=lambda row, step: logger.log({f"dream/{k}": v for k, v in row.items()}, dream_steps + step),
                           progress=cfg.algo.progress, auxiliary=distill)
        dream_steps += result.env_steps
        sps = result.steps_per_second
        dream_return = "n/a" if result.episode_return_mean is None else f"{result.episode_return_mean:.1f}"
        console.print(f"  PPO in the dream: {result.env_steps:,} steps at {sps:,.0f} steps/s, dream return {dream_return}")

    if cfg.trace.source == "env":
        recorder.close()  # writes the episode the last round cut short
    returns, teacher_returns, report = None, None, written.report
    if report.accepted:
        policy.cpu().save(run_dir / "policy")
        if cfg.eval.env_id:
            returns = evaluate_policy(policy, gymnasium.make(cfg.eval.env_id), cfg.eval.episodes, cfg.eval.seed)
            logger.log({"real/return_mean": float(returns.mean())}, dream_steps)
            if teacher is not None:
                teacher_returns = evaluate_policy(teacher.model.cpu(), gymnasium.make(cfg.eval.env_id), cfg.eval.episodes, cfg.eval.seed)
    metrics = {
        "accepted": report.accepted,
        "reasons": report.reasons,
        "writer": writer.name,
        "sim_candidate": written.label,
        "seed": cfg.seed,
        "real_env_steps": len(session),
        "dream_env_steps": dream_steps,
        "dream_steps_per_second": sps,
        "real_return_mean": None if returns is None else float(returns.mean()),
        "real_return_std": None if returns is None else float(returns.std()),
        "real_eval_episodes": 0 if returns is None else len(returns),
        "real_eval_env": cfg.eval.env_id,
        "fidelity": report.fidelity,
    }
    if teacher is not None:
        metrics["opsd"] = {
            "setting": "checkpoint", "teacher": str(opsd.teacher.path), "last_update": result.history[-1] if report.accepted else None,
            "teacher_return_real": None if teacher_returns is None else float(teacher_returns.mean()),
            "teacher_student_gap_real": None if teacher_returns is None else float(teacher_returns.mean() - returns.mean()),
        }
    return metrics, summary_table(metrics)


PIPELINES = {
    "dream": dream,
    "opsd_self_context": self_context,
    "opsd_veteran": veteran,
}


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    metrics = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    if not metrics.get("accepted", True):
        raise SystemExit("the sandbox rejected the written sim: " + "; ".join(metrics["reasons"]))


if __name__ == "__main__":
    main()
