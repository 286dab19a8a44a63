"""The entry point: `python -m dreamer.train [+experiment=NAME] [overrides]`.

`pipeline` picks what runs: `dream` (the default, below), or the OPSD experiments `opsd_self_context`
and `opsd_veteran` (`dreamer.opsd.experiments`). Every pipeline writes `config.yaml` and `metrics.json`
(`status: running`) first into a new run dir, runs as named stages (`dreamer.resume.Stages`, so that
rerunning it into an unfinished run dir resumes it), and writes the final `metrics.json` last.

The dream loop: each round records real steps (appended to `trace.jsonl` as each episode ends) or
loads the trace file, has the writer write a sim from the session's training episodes that the sandbox
accepts on the held-out episodes, and trains PPO in vectorized copies of the accepted sim. The final
policy is evaluated in the real env. The run dir holds `trace.jsonl`, the write stage's `env/` (see `dreamer.writers.stage`; earlier rounds under
`env/round_<r>/`), `policy/`, `history.jsonl`, `metrics.json` and the resolved `config.yaml`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import gymnasium
import hydra
import numpy as np
import torch
from gymnasium import spaces
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from dreamer.artifacts import write_json, write_text
from dreamer.config import EvalConfig, build, check_run_config, resolve_device, to_plain, trace_columns
from dreamer.inspect.tables import gap_text, number
from dreamer.loggers import Logger, LoggerConfig, make_logger
from dreamer.opsd import Distillation, OPSDConfig, Teacher
from dreamer.opsd.experiments import self_context, veteran
from dreamer.resume import METRICS, Stages, check_same_config, cut_history, run_status
from dreamer.rl import (MLPPolicy, MLPPolicyConfig, NonFiniteError, NoveltyConfig, PPOConfig, evaluate_in_sim, evaluate_policy,
                        novelty_sim, train_ppo)
from dreamer.sandbox import SandboxConfig, load_sim
from dreamer.sim import FuncSim, SimVectorEnv
from dreamer.sim.fidelity import Fidelity
from dreamer.traces import TableColumns, Trace, TraceRecorder, load_trace, record_steps, save_trace
from dreamer.writers import Writer, make_writer, verdict_line, write_sim
from dreamer.writers.stage import read_split, read_written

console = Console(stderr=True)


class NoTaskSignal(ValueError):
    """The session holds nothing a sim could teach the task from (`missing_task_signal`), and no round is left to
    explore in."""


def missing_task_signal(session: Trace) -> str | None:
    """What the session lacks for a sim to teach the task from it, or None: a session in which no episode
    terminated and whose reward the action alone explains (a constant, or an action cost) never showed the goal."""
    if session.terminated.any():
        return None
    if isinstance(session.action_space, spaces.Discrete):
        features = np.eye(int(session.action_space.n))[session.action]
    else:
        action = session.action.reshape(len(session), -1).astype(np.float64)
        features = np.concatenate([np.ones((len(session), 1)), action, action**2], axis=1)
    reward = session.reward.astype(np.float64)
    residual = reward - features @ np.linalg.lstsq(features, reward, rcond=None)[0]
    if residual.var() > 1e-6 * max(reward.var(), 1e-12):
        return None
    what = f"one reward ({float(reward[0]):g}) at every step" if np.ptp(reward) == 0 else "a reward the action alone explains"
    return f"{what} and no episode that terminated"


@dataclass(frozen=True)
class Pick:
    """The policy the run keeps: of each round's trained policy, the best in the last round's sim."""

    round: int                         # 1-based
    dream_returns: dict[int, float]    # round -> its policy's mean over eval.dream_episodes deterministic episodes
    random_return: float               # uniformly random actions, the same episodes

    @property
    def dream_return(self) -> float:
        return self.dream_returns[self.round]


def pick_policy(policy: MLPPolicy, round_policies: dict[int, dict], sim: FuncSim, eval_config: EvalConfig) -> Pick:
    """Load into `policy` the round's policy (round -> state dict) with the best return in `sim` (the latest of
    equals): the pick looks at the dream only, never at the real env it is then scored in."""
    episodes, seed = eval_config.dream_episodes, eval_config.seed
    returns = {}
    for r, state in round_policies.items():
        policy.load_state_dict(state)
        returns[r] = float(evaluate_in_sim(policy, sim, episodes, seed).mean())
    best = max(returns, key=lambda r: (returns[r], r))
    policy.load_state_dict(round_policies[best])
    random = float(evaluate_in_sim(None, sim, episodes, seed, device=next(policy.parameters()).device).mean())
    return Pick(best, returns, random)


def dream_vs_real(pick: Pick | None, real_returns: np.ndarray | None, max_gap: float) -> dict:
    """The metrics that compare the kept policy's return in the dream with its return in the real env.

    `dream_real_gap_fraction` = (dream - real) / (dream - random): the share of what the policy gained over
    random play in the dream that the real env did not give back (None where the dream shows no gain)."""
    figures = dict.fromkeys(("picked_round", "dream_return_mean", "dream_returns_by_round", "random_return_dream",
                             "dream_real_gap", "dream_real_gap_fraction", "large_gap"))
    if pick is None:
        return figures
    figures.update(picked_round=pick.round, dream_return_mean=pick.dream_return, dream_returns_by_round=pick.dream_returns,
                   random_return_dream=pick.random_return)
    if real_returns is not None:
        gap, gain = pick.dream_return - float(real_returns.mean()), pick.dream_return - pick.random_return
        fraction = gap / gain if gain > 0 else None
        figures.update(dream_real_gap=gap, dream_real_gap_fraction=fraction,
                       large_gap=None if fraction is None else fraction > max_gap)
    return figures


def summary_table(metrics: dict) -> Table:
    table = Table(title="What the dream bought", show_header=False)
    fidelity = None if metrics["fidelity"] is None else Fidelity.from_dict(metrics["fidelity"])
    rows = [
        ("accepted sim", str(metrics["accepted"])),
        ("real env steps", f"{metrics['real_env_steps']:,}"),
        ("dream env steps", f"{metrics['dream_env_steps']:,}"),
        ("dream steps/s (PPO)", f"{metrics['dream_steps_per_second']:,.0f}"),
        ("one-step obs NRMSE (held out)", number(fidelity and fidelity.obs_nrmse_mean)),
        ("termination accuracy (held out)", number(fidelity and fidelity.termination_accuracy)),
        ("real return", "not evaluated" if metrics["real_return_mean"] is None
         else f"{metrics['real_return_mean']:.1f} ± {metrics['real_return_std']:.1f} over {metrics['real_eval_episodes']} episodes"),
    ]
    if metrics["picked_round"] is not None:
        rounds = metrics["dream_returns_by_round"]
        rows += [
            ("policy kept", f"round {metrics['picked_round']} (best in the last sim: "
                            + ", ".join(f"round {r} {ret:.1f}" for r, ret in rounds.items()) + ")"),
            ("dream return (last sim)", f"{metrics['dream_return_mean']:.1f} (random: {metrics['random_return_dream']:.1f})"),
        ]
    if metrics["dream_real_gap"] is not None:
        rows.append(("dream - real return", f"[bold red]{gap_text(metrics)}[/]" if metrics["large_gap"] else gap_text(metrics)))
    for key, value in rows:
        table.add_row(key, value)
    return table


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Check the config, run `cfg.pipeline` (resuming the unfinished run in `run_dir`, if any); returns the
    metrics also written to `run_dir/metrics.json`."""
    start = time.perf_counter()
    status = run_status(run_dir)
    if status == "finished":
        raise FileExistsError(f"{run_dir} already holds a finished run (metrics.json); choose another hydra.run.dir")
    check_run_config(cfg, "train")
    if cfg.pipeline not in PIPELINES:
        raise ValueError(f"pipeline must be one of {sorted(PIPELINES)}, got {cfg.pipeline!r}")
    device = resolve_device(cfg.device)
    pipeline = PIPELINES[cfg.pipeline](cfg, run_dir)  # builds every config section first: bad values fail here
    resuming = (run_dir / "config.yaml").is_file()
    if not resuming and run_dir.is_dir() and any(run_dir.iterdir()):
        raise FileExistsError(f"{run_dir} is not empty and holds no run (no config.yaml): choose another hydra.run.dir")
    stages = Stages(run_dir)
    if resuming:
        check_same_config(run_dir, cfg)
        cut_history(run_dir, stages.history_rows)
        for stale in run_dir.rglob(".*.tmp"):  # an atomic write the interruption cut short
            stale.unlink()
        console.print(f"[bold]resuming[/] {run_dir} {stages.where()}")
    else:
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    # a resumed run's wall_seconds and steps/s cover this process only
    header = {"pipeline": cfg.pipeline, "seed": cfg.seed, "device": str(device), "resumed": stages.where() if resuming else None}
    write_json(run_dir / METRICS, {"status": "running", **header})
    torch.manual_seed(cfg.seed)
    logger = make_logger(build(LoggerConfig, cfg.logger, "logger"), run_dir, to_plain(cfg))
    try:
        metrics, table = pipeline(logger, device, stages)
    except BaseException as error:  # metrics.json says how the run ended (rerunning the command resumes it)
        ended = {"status": "failed" if isinstance(error, Exception) else "interrupted", **header,
                 "error": f"{type(error).__name__}: {error}"}
        if isinstance(error, NonFiniteError):
            write_json(run_dir / "nonfinite.json", {"where": error.where, "message": str(error), "details": error.details})
            ended["nonfinite"] = {"count": 1, "where": error.where, "details": "nonfinite.json"}
        write_json(run_dir / METRICS, ended)
        logger.finish()
        raise
    metrics.update(status="finished", **header, wall_seconds=time.perf_counter() - start)
    write_json(run_dir / METRICS, metrics)
    logger.finish()
    console.print(table)
    console.print(f"wall time {metrics['wall_seconds']:.0f} s; run dir: {run_dir}")
    return metrics


def dream(cfg: DictConfig, run_dir: Path) -> Callable[[Logger, torch.device, Stages], tuple[dict, Table]]:
    """The dream loop (module docstring); with `opsd.enabled`, a checkpoint teacher distils into every round's PPO."""
    writer = make_writer(cfg.writer)
    sandbox_config = SandboxConfig.from_dict(cfg.sandbox)
    ppo_config = build(PPOConfig, cfg.algo, "algo", ignore=("name", "progress"))
    policy_config = build(MLPPolicyConfig, cfg.policy, "policy", ignore=("kind",))
    opsd = build(OPSDConfig, cfg.opsd, "opsd")
    if opsd.enabled and (opsd.teacher.kind != "checkpoint" or not opsd.teacher.path):
        raise ValueError("the dream loop distils from a saved veteran: set opsd.teacher.kind=checkpoint and "
                         f"opsd.teacher.path=RUN_DIR (got kind={opsd.teacher.kind!r}, path={opsd.teacher.path!r}); "
                         "self_context teachers run in +experiment=opsd_self_context")
    columns = trace_columns(cfg.trace) if cfg.trace.source == "file" else None
    eval_config = build(EvalConfig, cfg.eval, "eval")
    novelty = None if cfg.trace.get("explore") is None else build(NoveltyConfig, cfg.trace.explore, "trace.explore")
    return partial(run_dream, cfg, run_dir, writer, sandbox_config, ppo_config, policy_config, opsd, columns, eval_config,
                   novelty)


def run_dream(cfg: DictConfig, run_dir: Path, writer: Writer, sandbox_config: SandboxConfig, ppo_config: PPOConfig,
              policy_config: MLPPolicyConfig, opsd: OPSDConfig, columns: TableColumns | None, eval_config: EvalConfig,
              novelty: NoveltyConfig | None, logger: Logger, device: torch.device, stages: Stages) -> tuple[dict, Table]:
    teacher = Teacher.checkpoint(opsd.teacher.path, device) if opsd.enabled else None
    if cfg.trace.source == "env":
        rounds = list(cfg.trace.steps_per_round)
        recorder = TraceRecorder(gymnasium.make(cfg.trace.env_id), path=run_dir / "trace.jsonl")  # appends as it goes
        session = recorder.trace() if (run_dir / "trace.jsonl").is_file() else None
    else:  # a file (check_run_config allows no other source)
        session = load_trace(cfg.trace.path, columns)
        save_trace(session, run_dir / "trace.jsonl")
        rounds = [None]

    policy: MLPPolicy | None = None
    round_policies: dict[int, dict] = {}  # round -> its trained task policy (state dict), for the pick at the end
    explorer = False  # the policy of the round before is an explorer
    dream_steps, sps, written, last_update = 0, 0.0, None, None
    env_dir = run_dir / "env"
    for r, num_steps in enumerate(rounds):
        round_dir = env_dir if r == len(rounds) - 1 else env_dir / f"round_{r}"
        previous = written.source if written is not None else None
        write_stage, ppo_stage = f"round {r + 1} write", f"round {r + 1} PPO"
        if ppo_stage in stages:  # the round ended before an interruption
            written = read_written(round_dir, cfg.sim.name)
            policy = MLPPolicy(session.observation_space, session.action_space, policy_config).to(device)
            trained = stages.result(ppo_stage)
            policy.load_state_dict(trained["policy"])
            explorer = trained["explorer"]
            if not explorer:
                round_policies[r + 1] = trained["policy"]
            dream_steps += trained["env_steps"]
            sps, last_update = trained["steps_per_second"], trained["last_update"]
            continue
        if num_steps is not None:
            missing = sum(rounds[:r + 1]) - (0 if session is None else len(session))
            if missing > 0:
                console.print(f"[bold]round {r + 1}/{len(rounds)}[/]: {missing:,} real steps in {cfg.trace.env_id}"
                              f" acting {'at random' if policy is None else 'with the explorer' if explorer else 'with the dream policy'}")
                behaviour = None if policy is None else partial(policy.act, deterministic=False)
                session = record_steps(recorder, missing, cfg.seed + r, behaviour)
                recorder.reset()  # the episode the round cut short goes to the file now
        lacking = missing_task_signal(session)
        explore = lacking is not None and r < len(rounds) - 1 and novelty is not None
        if lacking is not None and not explore:
            raise NoTaskSignal(
                f"the session of {cfg.trace.env_id or cfg.trace.path} ({len(session):,} steps, {session.num_episodes} "
                f"episodes) shows {lacking}: the goal never happened in it, so no sim written from it can teach the task, "
                "and none was trained on. Record a longer session (trace.steps_per_round), or bring one that reaches "
                "the goal (+experiment=from_trace trace.path=...)")
        if write_stage in stages:
            stages.result(write_stage)
            (train_trace, held_out), written = read_split(round_dir, session), read_written(round_dir, cfg.sim.name)
        else:
            train_trace, held_out = session.split(cfg.trace.held_out_fraction, cfg.seed)
            written = write_sim(writer, train_trace, held_out, sandbox_config, cfg.sim.name, round_dir, previous)
            console.print(f"  writer={writer.name} ({written.label}): {verdict_line(written.report)}")
            logger.log({f"fidelity/{k}": v for k, v in (written.report.fidelity.to_dict() if written.report.fidelity
                                                         else {}).items() if isinstance(v, int | float)}, dream_steps)
            stages.finish(write_stage)
        if not written.report.accepted:  # never train in a sim the held-out session refutes
            if r == len(rounds) - 1:
                break
            console.print(f"  no PPO in round {r + 1}: its sim was rejected; round {r + 2} records more of the session "
                          f"for the writer, acting as round {r + 1} did")
            continue
        sim = load_sim(round_dir / f"{cfg.sim.name}.py")
        # A fresh policy in every round: one carried over keeps what the earlier, poorer dream taught it and
        # PPO does not unlearn it (benchmarks/dream_diagnosis.py); the earlier policy only gathered this round's data.
        policy = MLPPolicy(session.observation_space, session.action_space, policy_config).to(device)
        stats = train_trace.summary()
        policy.set_obs_stats(np.asarray(stats.obs_mean), np.asarray(stats.obs_std), stats.num_transitions)
        if explore:  # this round's policy is the next round's explorer
            console.print(f"  the session shows {lacking}: training an explorer in the dream, rewarded for novelty")
            sim = novelty_sim(sim, train_trace.next_obs, novelty, cfg.seed + r)
        envs = SimVectorEnv(sim, ppo_config.num_envs, device=device)
        distill = None if teacher is None else Distillation(policy, policy, teacher, opsd, seed=cfg.seed + r)
        before, progress = dream_steps, stages.progress(ppo_stage)
        result = train_ppo(policy, envs, ppo_config, seed=cfg.seed + r,
                           log=lambda row, step: logger.log({f"dream/{k}": v for k, v in row.items()}, before + step),
                           progress=cfg.algo.progress, auxiliary=distill,
                           checkpoint=partial(stages.save_progress, ppo_stage),
                           resume=None if progress is None else progress[0])
        dream_steps += result.env_steps
        sps, last_update = result.steps_per_second, result.history[-1]
        stages.finish(ppo_stage, {"policy": policy.state_dict(), "env_steps": result.env_steps,
                                  "steps_per_second": sps, "last_update": last_update, "explorer": explore})
        explorer = explore
        if not explore:
            round_policies[r + 1] = copy.deepcopy(policy.state_dict())  # the pick loads others into this module
        dream_return = "n/a" if result.episode_return_mean is None else f"{result.episode_return_mean:.1f}"
        console.print(f"  PPO in the dream: {result.env_steps:,} steps at {sps:,.0f} steps/s, "
                      f"{'novelty' if explore else 'dream'} return {dream_return}")

    if cfg.trace.source == "env":
        recorder.close()
        session = load_trace(run_dir / "trace.jsonl")
    returns, teacher_returns, report, pick = None, None, written.report, None
    if report.accepted:
        pick = pick_policy(policy, round_policies, load_sim(round_dir / f"{cfg.sim.name}.py"), eval_config)
        policy.cpu().save(run_dir / "policy")
        if eval_config.env_id:
            returns = evaluate_policy(policy, gymnasium.make(eval_config.env_id), eval_config.episodes, eval_config.seed)
            logger.log({"real/return_mean": float(returns.mean())}, dream_steps)
            if teacher is not None:
                teacher_returns = evaluate_policy(teacher.model.cpu(), gymnasium.make(eval_config.env_id),
                                                  eval_config.episodes, eval_config.seed)
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
        "real_eval_env": eval_config.env_id,
        "fidelity": None if report.fidelity is None else report.fidelity.to_dict(),
        **dream_vs_real(pick, returns, eval_config.max_gap),
    }
    if teacher is not None:
        metrics["opsd"] = {
            "setting": "checkpoint", "teacher": str(opsd.teacher.path), "last_update": last_update,
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
    try:
        metrics = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except NoTaskSignal as error:
        raise SystemExit(f"stopped: {error}") from None
    if not metrics.get("accepted", True):  # no policy was trained in a sim that the held-out session refutes
        nrmse = Fidelity.from_dict(metrics["fidelity"]).obs_nrmse if metrics["fidelity"] else ()
        worst = "" if not nrmse else f" (held-out one-step NRMSE per obs dim: {', '.join(f'{v:.3g}' for v in nrmse)})"
        raise SystemExit(f"the sandbox rejected the written sim{worst}: " + "; ".join(metrics["reasons"])
                         + f". No policy was trained. What can help: a longer session (trace.steps_per_round), a richer "
                         f"library (writer.degree), or another writer (writer=llm); python -m dreamer.inspect "
                         f"{Path(HydraConfig.get().runtime.output_dir)} shows the fit")


if __name__ == "__main__":
    main()
