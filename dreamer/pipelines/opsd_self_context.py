"""`pipeline=opsd_self_context` (`+experiment=opsd_self_context`), the seeds' setting, on the hidden-goal family
(`envs.hidden_goal`).

A sequence policy learns to reach goals it is told in its context, across the family's variants, in their
dream. Per seed, a new variant is deployed: a session of random actions in the real env reveals the goal (its
context), and the model's empty-context self (the student) is consolidated in the variant's dream, once by
PPO + OPSD with the model-with-context as teacher, once by PPO alone from the same start. Reported: how many
student env samples each needs to reach `level` x the teacher's return, their ratio, real-env returns, and
retention (the model's return on the other variants with their contexts). Each step is a named stage
(`dreamer.resume.Stages`), each PPO stage checkpointed every `algo.checkpoint_every` updates.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from gymnasium import spaces
from omegaconf import DictConfig
from rich.table import Table

from dreamer.config import build
from dreamer.opsd import Anchors, Distillation, OPSDConfig, Teacher, build_context, collect_states
from dreamer.pipelines.family import Monitor, first_reaching, load_weights, mean_std, opsd_sections, ppo_stage, standardise_from
from dreamer.pipelines.protocol import Pipeline, Run
from dreamer.rl import PPOConfig, evaluate_in_sim, evaluate_policy
from dreamer.rl.sequence import SequencePolicy, SequencePolicyConfig
from dreamer.sim import FuncSim, SimVectorEnv
from dreamer.traces import TraceRecorder, record_steps, save_trace
from envs.hidden_goal import HiddenGoalEnv, family_source, goal_at


@dataclass(frozen=True)
class SelfContextFamily:
    """The `family` section of `+experiment=opsd_self_context` (conf/family/self_context.yaml)."""

    radius: float            # goals lie on this circle around the start
    seeds: list[int]         # one deployed variant each, its goal angle drawn from the seed ...
    student_below: float     # ... among goals where the empty-context student returns <= this x the teacher
    max_goal_draws: int      # goals drawn per seed before the run stops (the model may not use its context)
    pretrain_steps: int      # PPO steps across the family, contexts shown
    session_steps: int       # real steps of the deployed variant's session (random actions)
    eval_episodes: int       # per evaluation, in the dream and in the real env
    stats_envs: int          # envs x one episode of random actions give the fixed obs statistics
    level: float             # the student must reach level x the teacher's return ...
    min_sample_ratio: float  # ... with this many times fewer samples than PPO alone
    max_retention_drop: float


@dataclass(frozen=True)
class SelfContextConfig:
    """Every section `opsd_self_context` reads, built and checked."""

    seed: int
    family: SelfContextFamily
    opsd: OPSDConfig
    ppo: PPOConfig
    progress: bool
    policy: SequencePolicyConfig
    eval_seed: int           # real-env episode i is reset with eval_seed + i
    sim_compile: bool        # torch.compile the training envs' step (sim.compile)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> SelfContextConfig:
        return cls(family=build(SelfContextFamily, cfg.family, "family"),
                   **opsd_sections(cfg, teacher_kind="self_context", policy_kind="sequence"))


def self_context(cfg: SelfContextConfig, run: Run) -> tuple[dict, Table]:
    """The experiment of the module docstring."""
    run_dir, device, stages, logger = run.dir, run.device, run.stages, run.logger
    family, progress, opsd, ppo, policy_config = cfg.family, cfg.progress, cfg.opsd, cfg.ppo, cfg.policy
    radius, episodes = family.radius, family.eval_episodes
    family_sim = FuncSim.from_source(family_source(None, reveal_goal=True, radius=radius), "family")

    # 1. The model learns to use its context: PPO across the family's variants, each episode's goal in its context.
    torch.manual_seed(cfg.seed)
    model = SequencePolicy(spaces.Box(-1.0, 1.0, (2,), np.float32), spaces.Discrete(5), policy_config, context_dims=2)
    if policy_config.codec == "numeric":  # a text codec writes the raw numbers into its prompt
        standardise_from(model.set_context_stats, family_sim, family.stats_envs, cfg.seed, slice(0, 2))
        standardise_from(model.set_obs_stats, family_sim, family.stats_envs, cfg.seed, slice(2, None))
    model.to(device)
    if "pretrain" in stages:
        load_weights(model, run_dir / "pretrained")
        stages.result("pretrain")
    else:
        ppo_stage(stages, "pretrain", partial(Monitor, logger, "pretrain", dict, 1, 0), model.bind_from_obs(),
                  SimVectorEnv(family_sim, ppo.num_envs, device, cfg.sim_compile), dataclasses.replace(ppo, total_steps=family.pretrain_steps),
                  cfg.seed, progress)
        model.save(run_dir / "pretrained")
        stages.finish("pretrain")
    step = family.pretrain_steps

    runs = []
    for seed in family.seeds:
        # 2. A new variant that the empty-context student cannot do yet; a session of random actions in its
        # real env reveals the goal.
        if f"seed {seed} variant" in stages:
            variant = stages.result(f"seed {seed} variant")
        else:
            angle, draws = new_variant(model.to(device), family, seed)
            session = record_steps(TraceRecorder(HiddenGoalEnv(goal_at(angle, radius))), family.session_steps, seed, None)
            save_trace(session, run_dir / f"seed_{seed}" / "trace.jsonl")
            variant = {"angle": angle, "draws": draws, "session_steps": len(session),
                       "context": build_context(session, opsd.context)}
            stages.finish(f"seed {seed} variant", variant)
        context, real_env = variant["context"], HiddenGoalEnv(goal_at(variant["angle"], radius))
        variant_sim = FuncSim.from_source(family_source([tuple(context.tolist())], radius=radius), "variant")

        def in_variant(view) -> float:
            return float(evaluate_in_sim(view, variant_sim, episodes, seed).mean())

        def on_family(model_) -> float:
            return float(evaluate_in_sim(model_.bind_from_obs(), family_sim, episodes, seed).mean())

        teacher_return = in_variant(model.to(device).bind(context.to(device)))  # the model with the session's context
        retention_before = on_family(model)

        # 3. Consolidation by PPO + OPSD, and by PPO alone, from the same start and with the same budget.
        curves, finals = {}, {}
        for method in ("opsd", "ppo"):
            stage = f"seed {seed} {method}"
            if stage in stages:
                done = stages.result(stage)
                curves[method], finals[method] = done["curve"], done["final"]
                step += ppo.total_steps
                continue
            torch.manual_seed(seed)
            student_model = copy.deepcopy(model)
            student = student_model.bind(None)
            distill = None
            if method == "opsd":
                base = copy.deepcopy(model).requires_grad_(False)
                anchor_obs = collect_states(base.bind_from_obs(), family_sim, opsd.anchors.states, seed, opsd.anchors.envs)
                anchors = Anchors(student_model.bind_from_obs(), base.bind_from_obs(), anchor_obs, opsd.anchors.coef, opsd.anchors.batch)
                distill = Distillation(student, student_model, Teacher.self_context(student_model, context.to(device), opsd.teacher),
                                       opsd, anchors, seed)

            def evaluate() -> dict[str, float]:
                student_return = in_variant(student)
                teacher_now = teacher_return if distill is None or opsd.teacher.mode == "frozen" else in_variant(distill.teacher.view)
                return {"student_return": student_return, "teacher_return": teacher_now,
                        "teacher_student_gap": teacher_now - student_return, "retention_return": on_family(student_model)}

            monitor = ppo_stage(stages, stage, partial(Monitor, logger, f"seed_{seed}/{method}", evaluate, opsd.eval_every, step),
                                student, SimVectorEnv(variant_sim, ppo.num_envs, device, cfg.sim_compile), ppo, seed, progress, distill)
            step += ppo.total_steps
            student_model.cpu().save(run_dir / f"seed_{seed}" / method)
            curves[method] = monitor.curve
            finals[method] = {"real_return": float(evaluate_policy(student_model.bind(None), real_env, episodes, cfg.eval_seed).mean()),
                              "retention_return": on_family(student_model.to(device)),
                              "last_update": monitor.last_row}
            stages.finish(stage, {"curve": curves[method], "final": finals[method]})
        level = family.level * teacher_return
        reached = {method: first_reaching(curves[method], "student_return", level) for method in curves}
        runs.append({
            "seed": seed, "goal_angle_deg": variant["angle"], "goal_draws": variant["draws"], "context": context.tolist(),
            "session_steps": variant["session_steps"],
            "teacher_return_dream": teacher_return,
            "teacher_return_real": float(evaluate_policy(model.cpu().bind(context), real_env, episodes, cfg.eval_seed).mean()),
            "student_return_real_before": float(evaluate_policy(model.bind(None), real_env, episodes, cfg.eval_seed).mean()),
            "student_return_real_after": {m: finals[m]["real_return"] for m in finals},
            "level": level,
            "samples_to_level": reached,
            "sample_ratio_ppo_over_opsd": None if reached["opsd"] in (None, 0) or reached["ppo"] is None
            else reached["ppo"] / reached["opsd"],
            "retention_return_before": retention_before,
            "retention_return_after": {m: finals[m]["retention_return"] for m in finals},
            "last_update": {m: finals[m]["last_update"] for m in finals},
            "curves": curves,
        })
        model.to(device)

    summary = summarise_self_context(runs, family.level, family.max_retention_drop, family.min_sample_ratio, ppo.total_steps)
    return {"opsd": {"setting": "self_context", "seeds": list(family.seeds), "summary": summary, "runs": runs}}, self_context_table(summary)


def new_variant(model: SequencePolicy, family: SelfContextFamily, seed: int) -> tuple[float, int]:
    """A goal angle (degrees) drawn from `seed` where the empty-context student, in the dream of that goal,
    returns at most `family.student_below` x the model with the goal as its context; and the draws it took."""
    rng = np.random.default_rng(seed)
    for draw in range(1, family.max_goal_draws + 1):
        angle = float(rng.uniform(0.0, 360.0))
        goal = goal_at(angle, family.radius)
        truth = FuncSim.from_source(family_source([goal], radius=family.radius), "truth")
        student = evaluate_in_sim(model.bind(None), truth, family.eval_episodes, seed).mean()
        teacher = evaluate_in_sim(model.bind(torch.tensor(goal)), truth, family.eval_episodes, seed).mean()
        if student <= family.student_below * teacher:
            return angle, draw
    raise RuntimeError(f"in family.max_goal_draws={family.max_goal_draws} draws no goal had the empty-context student below family.student_below="
                       f"{family.student_below} x the model with the goal as context: the pretrained model may not use "
                       "its context (raise family.pretrain_steps)")


def summarise_self_context(runs: list[dict], level: float, max_drop: float, min_ratio: float, budget: int) -> dict:
    """Aggregate over seeds, and whether each claim of the experiment held (on the real env)."""
    teacher = [r["teacher_return_real"] for r in runs]
    after = [r["student_return_real_after"]["opsd"] for r in runs]
    opsd_steps = [r["samples_to_level"]["opsd"] for r in runs]
    ppo_steps = [r["samples_to_level"]["ppo"] for r in runs]
    drops = {m: [1 - r["retention_return_after"][m] / max(r["retention_return_before"], 1e-9) for r in runs] for m in ("opsd", "ppo")}
    opsd_reached = all(s is not None for s in opsd_steps)
    # PPO that never reached the level within the budget counts as the budget: the ratio is then a lower bound.
    ppo_or_budget = [budget if s is None else s for s in ppo_steps]
    ratio = float(np.mean(ppo_or_budget) / max(np.mean(opsd_steps), 1.0)) if opsd_reached else None
    return {
        "teacher_return_real": mean_std(teacher),
        "student_return_real_before": mean_std([r["student_return_real_before"] for r in runs]),
        "student_return_real_after_opsd": mean_std(after),
        "student_return_real_after_ppo": mean_std([r["student_return_real_after"]["ppo"] for r in runs]),
        "student_over_teacher": float(np.mean(after) / max(np.mean(teacher), 1e-9)),
        "samples_to_level_opsd": opsd_steps,
        "samples_to_level_ppo": ppo_steps,
        "sample_ratio_ppo_over_opsd": ratio,
        "sample_ratio_is_lower_bound": any(s is None for s in ppo_steps),
        "retention_drop_opsd": mean_std(drops["opsd"]),
        "retention_drop_ppo": mean_std(drops["ppo"]),
        "claims": {
            f"student >= {level:g} x teacher (real env)": bool(np.mean(after) >= level * np.mean(teacher)),
            f"OPSD needs >= {min_ratio:g}x fewer samples than PPO": ratio is not None and ratio >= min_ratio,
            f"retention drop <= {max_drop:.0%}": bool(max(drops["opsd"]) <= max_drop),
        },
    }


def self_context_table(summary: dict) -> Table:
    table = Table(title="OPSD, self-context (real env; mean ± std over seeds)", show_header=False)
    fmt = lambda s: f"{s['mean']:.2f} ± {s['std']:.2f}"  # noqa: E731
    steps = lambda values: ", ".join("never" if v is None else f"{v:,.0f}" for v in values)  # noqa: E731
    ratio = summary["sample_ratio_ppo_over_opsd"]
    rows = [
        ("teacher (model + session context)", fmt(summary["teacher_return_real"])),
        ("student (empty context), before", fmt(summary["student_return_real_before"])),
        ("student after PPO + OPSD", fmt(summary["student_return_real_after_opsd"])),
        ("student after PPO alone", fmt(summary["student_return_real_after_ppo"])),
        ("student env steps to the level: OPSD", steps(summary["samples_to_level_opsd"])),
        ("student env steps to the level: PPO", steps(summary["samples_to_level_ppo"])),
        ("PPO / OPSD samples", "n/a" if ratio is None else f"{'≥ ' if summary['sample_ratio_is_lower_bound'] else ''}{ratio:.1f}x"),
        ("retention drop, OPSD with anchors (other variants, with context)", f"{summary['retention_drop_opsd']['mean']:.1%}"),
        ("retention drop, PPO alone", f"{summary['retention_drop_ppo']['mean']:.1%}"),
    ] + [(claim, "met" if ok else "MISSED") for claim, ok in summary["claims"].items()]
    for key, value in rows:
        table.add_row(key, value)
    return table


SELF_CONTEXT = Pipeline(SelfContextConfig.from_config, self_context)
