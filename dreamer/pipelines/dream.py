"""The dream loop, `pipeline=dream` (the default run of `python -m dreamer.train`).

Each round records real steps (appended to `trace.jsonl` as each episode ends) or loads the trace file, has
the writer write a sim from the session's training episodes that the sandbox accepts on the held-out
episodes, and trains PPO in vectorized copies of the accepted sim, trusted only where the session went
(`sim.support`; an explorer, which is to go further, is not held to it). Of the rounds' policies, the one with
the best return in the last round's sim, trusted so too, is kept and evaluated in the real env. The run dir
holds `trace.jsonl`, the write stage's `env/` (see `dreamer.writers.stage`; earlier rounds under
`env/round_<r>/`), `policy/`, `history.jsonl`, `metrics.json` and the resolved `config.yaml`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from dreamer.config import build
from dreamer.inspect.tables import gap_text, leaving_text, number
from dreamer.opsd import Distillation, OPSDConfig, Teacher
from dreamer.pipelines.config import EvalConfig, SimConfig, TraceConfig, policy_config, ppo_config, trace_columns, trace_config
from dreamer.pipelines.protocol import Pipeline, Run, Stopped
from dreamer.progress import progress
from dreamer.rl import (MLPPolicy, MLPPolicyConfig, PPOConfig, evaluate_in_sim, evaluate_policy, novelty_sim,
                        rollout_in_sim, train_ppo)
from dreamer.sandbox import SandboxConfig, load_sim
from dreamer.sim import FuncSim, SimVectorEnv
from dreamer.sim.branch import branched
from dreamer.sim.fidelity import Fidelity
from dreamer.sim.support import Support, within_support
from dreamer.traces import TableColumns, Trace, TraceRecorder, load_trace, record_steps, save_trace
from dreamer.traces.coverage import coverage_warnings
from dreamer.writers import Writer, make_writer, verdict_line, write_sim
from dreamer.writers.stage import read_split, read_written

console = Console(stderr=True)


class NoTaskSignal(Stopped):
    """The session holds nothing a sim could teach the task from (`missing_task_signal`), and no round is left to
    explore in."""


def missing_task_signal(session: Trace, min_terminations: int) -> str | None:
    """What the session lacks for a sim to teach the task from it, or None. A session whose reward the action
    alone explains (a constant, or an action cost) at every step that did not end an episode shows the task only
    where its episodes terminate: with none, the goal never happened; with fewer than `min_terminations`, a sim
    has too few to learn where it lies."""
    terminations = int(session.terminated.sum())
    if terminations >= min_terminations:
        return None
    running = ~session.terminated  # a goal's own reward (Acrobot's 0) is the signal, not an action's cost
    if isinstance(session.action_space, spaces.Discrete):
        features = np.eye(int(session.action_space.n))[session.action[running]]
    else:
        action = session.action[running].reshape(int(running.sum()), -1).astype(np.float64)
        features = np.concatenate([np.ones((len(action), 1)), action, action**2], axis=1)
    reward = session.reward[running].astype(np.float64)
    residual = reward - features @ np.linalg.lstsq(features, reward, rcond=None)[0]
    if residual.var() > 1e-6 * max(reward.var(), 1e-12):
        return None
    what = f"one reward ({float(reward[0]):g}) at every step" if np.ptp(reward) == 0 else "a reward the action alone explains"
    if terminations == 0:
        return f"{what} and no episode that terminated"
    return (f"{what} but where an episode terminated, and only {terminations} of {session.num_episodes:,} episodes "
            f"that terminated (fewer than {min_terminations})")


def session_support(session: Trace, sim: FuncSim, config: SimConfig) -> Support | None:
    """Where the session vouches for `sim` (`dreamer.sim.support`); None with `sim.support=null`."""
    if config.support is None:
        return None
    observations = np.concatenate([session.obs, session.next_obs]).reshape(2 * len(session), -1)
    return Support.of_session(observations, session.reward, sim.max_episode_steps, config.support)


def trusted(sim: FuncSim, support: Support | None) -> FuncSim:
    """`sim` as far as `support` goes, or as it is without one."""
    return sim if support is None else within_support(sim, support)


def share_leaving(policy: MLPPolicy, sim: FuncSim, support: Support, eval_config: EvalConfig) -> float:
    """The share of `policy`'s deterministic episodes in `sim` as written (`eval.dream_episodes`, seeded as the
    pick's) that leave `support` before they end: where the trusted dream ended them."""
    left = torch.zeros(eval_config.dream_episodes, dtype=torch.bool, device=next(policy.parameters()).device)
    for obs, _, running in rollout_in_sim(policy, sim, eval_config.dream_episodes, eval_config.seed):
        left |= running & support.outside(obs)
    return float(left.float().mean())


@dataclass(frozen=True)
class Pick:
    """The policy the run keeps: of each round's trained policy, the best in the last round's sim (trusted as in
    training)."""

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


def termination_figure(fidelity: Fidelity | None) -> str:
    """The held-out termination accuracy and what it can vouch for: how many of the real terminations the sim
    caught and how many it called where none happened, or that the held-out episodes never terminate (an accuracy
    of 1 then says nothing of `terminal`)."""
    if fidelity is None:
        return number(None)
    f = fidelity
    if f.termination_recall is None:
        called = "" if not f.predicted_terminations else f"; the sim calls {f.predicted_terminations:,} of their steps terminal"
        return f"{number(f.termination_accuracy)} (untested: the held-out episodes never terminate{called})"
    if f.terminations is None:  # a report written before the counts
        return f"{number(f.termination_accuracy)} (recall of the real terminations {number(f.termination_recall)})"
    caught = round(f.termination_recall * f.terminations)
    false = f.predicted_terminations - caught
    return (f"{number(f.termination_accuracy)} (caught {caught:,} of {f.terminations:,} real terminations, "
            f"recall {number(f.termination_recall)}; {false:,} predicted where none happened)")


def summary_table(metrics: dict) -> Table:
    table = Table(title="What the dream bought", show_header=False)
    fidelity = None if metrics["fidelity"] is None else Fidelity.from_dict(metrics["fidelity"])
    rows = [
        ("accepted sim", str(metrics["accepted"])),
        ("sim written by", f"writer={metrics['writer']} ({metrics['sim_candidate']})"
                           + "".join(f"; tried first: {line}" for line in metrics["writers_tried"])),
        ("real env steps", f"{metrics['real_env_steps']:,}"),
        ("dream env steps", f"{metrics['dream_env_steps']:,}"),
        ("dream steps/s (PPO)", f"{metrics['dream_steps_per_second']:,.0f}" + (
            "" if metrics["sim_compile_seconds"] is None else f" (step compiled in {metrics['sim_compile_seconds']:.1f} s)")),
        *([("dream model uncertainty", f"{metrics['dream_uncertainty']['mean']:.3g} per step (mean); "
                                       f"{metrics['dream_uncertainty']['truncated_share']:.1%} of steps truncated for it")]
          if metrics["dream_uncertainty"] is not None else []),
        ("one-step obs NRMSE (held out)", number(fidelity and fidelity.obs_nrmse_mean)),
        ("termination accuracy (held out)", termination_figure(fidelity)),
        *(("[yellow]session coverage[/]", f"[yellow]{warning}[/]") for warning in metrics["coverage_warnings"]),
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
    if metrics["support_leaving_share"] is not None:
        rows.append(("leaves the session's support", leaving_text(metrics)))
    if metrics["dream_real_gap"] is not None:
        rows.append(("dream - real return", f"[bold red]{gap_text(metrics)}[/]" if metrics["large_gap"] else gap_text(metrics)))
    for key, value in rows:
        table.add_row(key, value)
    return table


@dataclass(frozen=True)
class DreamConfig:
    """Every section the dream loop reads, built and checked."""

    seed: int
    trace: TraceConfig
    columns: TableColumns | None  # of a CSV/Parquet trace file
    writer: Writer
    sandbox: SandboxConfig
    sim: SimConfig
    policy: MLPPolicyConfig
    ppo: PPOConfig
    progress: bool               # a progress bar while PPO trains
    opsd: OPSDConfig             # enabled: a checkpoint teacher distils into every round's PPO
    eval: EvalConfig

    @classmethod
    def from_config(cls, cfg: DictConfig) -> DreamConfig:
        opsd = build(OPSDConfig, cfg.opsd, "opsd")
        if opsd.enabled and (opsd.teacher.kind != "checkpoint" or not opsd.teacher.path):
            raise ValueError("the dream loop distils from a saved veteran: set opsd.teacher.kind=checkpoint and "
                             f"opsd.teacher.path=RUN_DIR (got kind={opsd.teacher.kind!r}, path={opsd.teacher.path!r}); "
                             "self_context teachers run in +experiment=opsd_self_context")
        trace = trace_config(cfg.trace)
        return cls(seed=cfg.seed, trace=trace, columns=trace_columns(cfg.trace) if trace.kind == "file" else None,
                   writer=make_writer(cfg.writer), sandbox=SandboxConfig.from_dict(cfg.sandbox), sim=build(SimConfig, cfg.sim, "sim"),
                   policy=policy_config(cfg.policy, "dream", ("mlp",)), ppo=ppo_config(cfg.algo), progress=cfg.algo.progress,
                   opsd=opsd, eval=build(EvalConfig, cfg.eval, "eval"))


def dream(cfg: DreamConfig, run: Run) -> tuple[dict, Table]:
    """The dream loop (module docstring)."""
    run_dir, device, stages, logger = run.dir, run.device, run.stages, run.logger
    opsd, trace, sim_name, eval_config = cfg.opsd, cfg.trace, cfg.sim.name, cfg.eval
    teacher = Teacher.checkpoint(opsd.teacher.path, device) if opsd.enabled else None
    if trace.kind == "gym":
        rounds = list(trace.steps_per_round)
        recorder = TraceRecorder(gymnasium.make(trace.env_id), path=run_dir / "trace.jsonl")  # appends as it goes
        session = recorder.trace() if (run_dir / "trace.jsonl").is_file() else None
    else:  # a file (TraceConfig allows no other kind)
        session = load_trace(trace.path, cfg.columns)
        save_trace(session, run_dir / "trace.jsonl")
        rounds = [None]

    policy: MLPPolicy | None = None
    round_policies: dict[int, dict] = {}  # round -> its trained task policy (state dict), for the pick at the end
    explorer = False  # the policy of the round before is an explorer
    dream_steps, sps, compile_seconds, written, last_update, uncertainty = 0, 0.0, None, None, None, None
    env_dir = run_dir / "env"
    for r, num_steps in enumerate(rounds):
        round_dir = env_dir if r == len(rounds) - 1 else env_dir / f"round_{r}"
        previous = written.source if written is not None else None
        write_stage, ppo_stage = f"round {r + 1} write", f"round {r + 1} PPO"
        if ppo_stage in stages:  # the round ended before an interruption
            (train_trace, held_out), written = read_split(round_dir, session), read_written(round_dir, sim_name)
            policy = MLPPolicy(session.observation_space, session.action_space, cfg.policy).to(device)
            trained = stages.result(ppo_stage)
            policy.load_state_dict(trained["policy"])
            explorer = trained["explorer"]
            if not explorer:
                round_policies[r + 1] = trained["policy"]
            dream_steps += trained["env_steps"]
            sps, compile_seconds, last_update = trained["steps_per_second"], trained["sim_compile_seconds"], trained["last_update"]
            uncertainty = trained.get("dream_uncertainty")  # absent from stages saved before it was measured
            continue
        if num_steps is not None:
            missing = sum(rounds[:r + 1]) - (0 if session is None else len(session))
            if missing > 0:
                console.print(f"[bold]round {r + 1}/{len(rounds)}[/]: {missing:,} real steps in {trace.env_id}"
                              f" acting {'at random' if policy is None else 'with the explorer' if explorer else 'with the dream policy'}")
                behaviour = None if policy is None else partial(policy.act, deterministic=False)
                with progress(f"recording {missing:,} real steps in {trace.env_id}"):
                    session = record_steps(recorder, missing, cfg.seed + r, behaviour)
                recorder.reset()  # the episode the round cut short goes to the file now
        can_explore = trace.explore is not None and r < len(rounds) - 1
        lacking = missing_task_signal(session, trace.explore.min_terminations if can_explore else 1)
        explore = lacking is not None and can_explore
        if lacking is not None and not explore:
            raise NoTaskSignal(
                f"the session of {trace.env_id or trace.path} ({len(session):,} steps, {session.num_episodes} "
                f"episodes) shows {lacking}: the goal never happened in it, so no sim written from it can teach the task, "
                "and none was trained on. Record a longer session (trace.steps_per_round), or bring one that reaches "
                "the goal (+experiment=from_trace trace.path=...)")
        if write_stage in stages:
            stages.result(write_stage)
            (train_trace, held_out), written = read_split(round_dir, session), read_written(round_dir, sim_name)
        else:
            train_trace, held_out = session.split(trace.held_out_fraction, cfg.seed)
            written = write_sim(cfg.writer, train_trace, held_out, cfg.sandbox, sim_name, round_dir, previous)
            console.print(f"  writer={cfg.writer.name} ({written.label}): {verdict_line(written.report)}")
            if written.report.fidelity is not None:
                logger.log({f"fidelity/{k}": v for k, v in written.report.fidelity.to_dict().items()
                            if isinstance(v, int | float)}, dream_steps)
            stages.finish(write_stage)
        if not written.report.accepted:  # never train in a sim the held-out session refutes
            if r == len(rounds) - 1:
                break
            console.print(f"  no PPO in round {r + 1}: its sim was rejected; round {r + 2} records more of the session "
                          f"for the writer, acting as round {r + 1} did")
            continue
        sim = load_sim(round_dir / f"{sim_name}.py", device)  # a learned sim's weights on the dream's device
        # A fresh policy in every round: one carried over keeps what the earlier, poorer dream taught it and
        # PPO does not unlearn it (benchmarks/dream_diagnosis.py); the earlier policy only gathered this round's data.
        policy = MLPPolicy(session.observation_space, session.action_space, cfg.policy).to(device)
        stats = train_trace.summary()
        policy.set_obs_stats(np.asarray(stats.obs_mean), np.asarray(stats.obs_std), stats.num_transitions)
        if explore:  # this round's policy is the next round's explorer: it is to leave the session's support
            console.print(f"  the session shows {lacking}: training an explorer in the dream, rewarded for novelty")
            sim = novelty_sim(sim, train_trace.next_obs, trace.explore, cfg.seed + r)
        else:
            sim = trusted(sim, session_support(session, sim, cfg.sim))
        sim = branched(sim, cfg.sim.branch, torch.as_tensor(train_trace.obs))
        envs = SimVectorEnv(sim, cfg.ppo.num_envs, device=device, compile=cfg.sim.compile, uncertainty=cfg.sim.uncertainty)
        distill = None if teacher is None else Distillation(policy, policy, teacher, opsd, seed=cfg.seed + r)
        before, saved = dream_steps, stages.progress(ppo_stage)
        result = train_ppo(policy, envs, cfg.ppo, seed=cfg.seed + r,
                           log=lambda row, step: logger.log({f"dream/{k}": v for k, v in row.items()}, before + step),
                           progress=cfg.progress, auxiliary=distill,
                           checkpoint=partial(stages.save_progress, ppo_stage),
                           resume=None if saved is None else saved[0])
        dream_steps += result.env_steps
        sps, last_update, uncertainty = result.steps_per_second, result.history[-1], envs.uncertainty_stats()
        compile_seconds = envs.compile_seconds if envs.compiled else None
        stages.finish(ppo_stage, {"policy": policy.state_dict(), "env_steps": result.env_steps, "steps_per_second": sps,
                                  "sim_compile_seconds": compile_seconds, "last_update": last_update, "explorer": explore,
                                  "dream_uncertainty": uncertainty})
        explorer = explore
        if not explore:
            round_policies[r + 1] = copy.deepcopy(policy.state_dict())  # the pick loads others into this module
        dream_return = "n/a" if result.episode_return_mean is None else f"{result.episode_return_mean:.1f}"
        compiled = "" if compile_seconds is None else f" (sim step compiled in {compile_seconds:.1f} s)"
        console.print(f"  PPO in the dream: {result.env_steps:,} steps at {sps:,.0f} steps/s{compiled}, "
                      f"{'novelty' if explore else 'dream'} return {dream_return}")

    if trace.kind == "gym":
        recorder.close()
        session = load_trace(run_dir / "trace.jsonl")
    returns, teacher_returns, report, pick, leaving = None, None, written.report, None, None
    if report.accepted:
        scored = f"{len(round_policies)} round polic{'y' if len(round_policies) == 1 else 'ies'}"
        with progress(f"scoring {scored} in the last sim ({eval_config.dream_episodes} episodes each)"):
            last_sim = load_sim(round_dir / f"{sim_name}.py", device)
            support = session_support(session, last_sim, cfg.sim)
            pick = pick_policy(policy, round_policies, trusted(last_sim, support), eval_config)
            leaving = None if support is None else share_leaving(policy, last_sim, support, eval_config)
        policy.cpu().save(run_dir / "policy")
        if eval_config.env_id:
            with progress(f"evaluating the policy in {eval_config.env_id} ({eval_config.episodes} episodes)"):
                returns = evaluate_policy(policy, gymnasium.make(eval_config.env_id), eval_config.episodes,
                                          eval_config.seed)
            logger.log({"real/return_mean": float(returns.mean())}, dream_steps)
            if teacher is not None:
                teacher_returns = evaluate_policy(teacher.model.cpu(), gymnasium.make(eval_config.env_id),
                                                  eval_config.episodes, eval_config.seed)
    metrics = {
        "accepted": report.accepted,
        "reasons": report.reasons,
        "writer": cfg.writer.name,
        "sim_candidate": written.label,
        "writers_tried": list(written.tried),  # writer=auto: the writers whose sims came before the pick, with verdicts
        "seed": cfg.seed,
        "real_env_steps": len(session),
        "dream_env_steps": dream_steps,
        "dream_steps_per_second": sps,
        "sim_compile_seconds": compile_seconds,  # the last PPO round's; None: stepped eagerly (sim.compile)
        "dream_uncertainty": uncertainty,  # the last PPO round's {"mean", "truncated_share"}; None: not measured
        "real_return_mean": None if returns is None else float(returns.mean()),
        "real_return_std": None if returns is None else float(returns.std()),
        "real_eval_episodes": 0 if returns is None else len(returns),
        "real_eval_env": eval_config.env_id,
        "fidelity": None if report.fidelity is None else report.fidelity.to_dict(),
        "coverage_warnings": coverage_warnings(train_trace, held_out),  # of the last round's split
        "support_leaving_share": leaving,  # of the kept policy's dream episodes in the last sim as written; None: no support
        **dream_vs_real(pick, returns, eval_config.max_gap),
    }
    if teacher is not None:
        metrics["opsd"] = {
            "setting": "checkpoint", "teacher": str(opsd.teacher.path), "last_update": last_update,
            "teacher_return_real": None if teacher_returns is None else float(teacher_returns.mean()),
            "teacher_student_gap_real": None if teacher_returns is None else float(teacher_returns.mean() - returns.mean()),
        }
    return metrics, summary_table(metrics)


DREAM = Pipeline(DreamConfig.from_config, dream)
