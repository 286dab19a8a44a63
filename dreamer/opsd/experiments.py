"""The OPSD experiments on the hidden-goal family (`envs.hidden_goal`), run by `dreamer.train`.

`opsd_self_context` (the seeds' setting): a sequence policy learns to reach goals it is told in its
context, across the family's variants, in their dream. Per seed, a new variant is deployed: a session
of random actions in the real env reveals the goal (its context), and the model's empty-context self
(the student) is consolidated in the variant's dream, once by PPO + OPSD with the model-with-context
as teacher, once by PPO alone from the same start. Reported: how many student env samples each needs
to reach `level` x the teacher's return, their ratio, real-env returns, and retention (the model's
return on the other variants with their contexts).

`opsd_veteran`: an MLP base trained on variants A and B; a veteran = the base fine-tuned in the dream
of variant C by PPO (naive fine-tuning); then OPSD of the veteran (a checkpoint teacher) into the
base, with anchor states of A and B. Reported: real-env returns of base, veteran and consolidated
policy on A, B and C.

Both run as named stages (`dreamer.resume.Stages`), each PPO stage checkpointed every
`algo.checkpoint_every` updates, so that an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from gymnasium import spaces
from omegaconf import DictConfig
from rich.table import Table
from torch import nn

from dreamer.config import build
from envs.hidden_goal import HiddenGoalEnv, family_source, goal_at
from dreamer.loggers import Logger
from dreamer.opsd.context import build_context
from dreamer.opsd.distill import Anchors, Distillation, OPSDConfig, collect_states
from dreamer.opsd.teachers import Teacher
from dreamer.resume import Stages
from dreamer.rl import MLPPolicy, MLPPolicyConfig, PPOConfig, evaluate_in_sim, evaluate_policy, load_policy, train_ppo
from dreamer.rl.sequence import SequencePolicy, SequencePolicyConfig
from dreamer.sim import FuncSim, SimVectorEnv
from dreamer.traces import TraceRecorder, record_steps, save_trace


class Monitor:
    """PPO's `log` callback: logs every update's row and, every `every` updates (and before the first),
    runs `evaluate` (-> figures such as mean returns) and appends its figures, with the env steps so
    far, to `curve`. From `saved` (a `state()`), it goes on where that one stood."""

    def __init__(self, logger: Logger, prefix: str, evaluate: Callable[[], dict[str, float]], every: int, step: int,
                 saved: dict | None = None):
        self.logger, self.prefix, self.run_evaluation, self.every, self.step = logger, prefix, evaluate, every, step
        self.updates = 0
        self.curve: list[dict[str, float]] = []
        self.last_row: dict = {}
        if saved is None:
            self.evaluate(0)
        else:
            self.updates, self.curve, self.last_row = saved["updates"], saved["curve"], saved["last_row"]

    def state(self) -> dict:
        return {"updates": self.updates, "curve": list(self.curve), "last_row": self.last_row}

    def evaluate(self, env_steps: int) -> None:
        figures = {"env_steps": env_steps, **self.run_evaluation()}
        self.curve.append(figures)
        self.logger.log({f"{self.prefix}/{k}": v for k, v in figures.items() if k != "env_steps"}, self.step + env_steps)

    def __call__(self, row: dict, env_steps: int) -> None:
        self.last_row = row
        self.logger.log({f"{self.prefix}/{k}": v for k, v in row.items()}, self.step + env_steps)
        self.updates += 1
        if self.updates % self.every == 0:
            self.evaluate(env_steps)


def ppo_stage(stages: Stages, name: str, monitor: Callable[[dict | None], Monitor], policy: nn.Module,
              envs: SimVectorEnv, config: PPOConfig, seed: int, progress: bool, auxiliary: Distillation | None = None
              ) -> Monitor:
    """Stage `name`: `train_ppo` logged by `monitor(saved state)`, from the stage's last checkpoint if it has
    one, checkpointing every `config.checkpoint_every` updates. Returns the monitor (the caller finishes the stage)."""
    saved = stages.progress(name)
    log = monitor(None if saved is None else saved[1])
    train_ppo(policy, envs, config, seed, log=log, progress=progress, auxiliary=auxiliary,
              checkpoint=lambda ppo: stages.save_progress(name, ppo, log.state()), resume=None if saved is None else saved[0])
    return log


def load_weights(model: nn.Module, folder: Path) -> None:
    """Load the weights of the policy saved in `folder` into `model` (same architecture), in place."""
    model.load_state_dict(load_policy(folder).state_dict())


def first_reaching(curve: list[dict[str, float]], key: str, level: float) -> float | None:
    """The first `env_steps` in `curve` at which `key` >= `level` (None: never)."""
    return next((row["env_steps"] for row in curve if row[key] >= level), None)


def mean_std(values) -> dict[str, float]:
    values = np.asarray(values, dtype=float)
    return {"mean": float(values.mean()), "std": float(values.std())}


def standardise_from(policy_stats: Callable[[np.ndarray, np.ndarray], None], sim: FuncSim, seed: int,
                     columns: slice = slice(None)) -> None:
    """Set a policy's fixed obs statistics from `sim`'s observations under random actions (seeded by `seed`)."""
    envs = SimVectorEnv(sim, 256)
    obs, _ = envs.reset(seed=seed)
    envs.action_space.seed(seed)
    rows = [obs]
    for _ in range(sim.max_episode_steps):
        obs, *_ = envs.step(envs.action_space.sample())
        rows.append(obs)
    rows = torch.cat(rows)[:, columns].numpy()
    policy_stats(rows.mean(0), rows.std(0))


def build_sections(cfg: DictConfig, policy_config: type, teacher_kind: str) -> tuple[OPSDConfig, PPOConfig, object]:
    """The `opsd`, `algo` and `policy` sections of an OPSD pipeline, checked (the teacher must be `teacher_kind`)."""
    opsd = build(OPSDConfig, cfg.opsd, "opsd")
    if opsd.teacher.kind != teacher_kind:
        raise ValueError(f"pipeline={cfg.pipeline} needs opsd.teacher.kind={teacher_kind}, got {opsd.teacher.kind!r}")
    return opsd, build(PPOConfig, cfg.algo, "algo", ignore=("name", "progress")), build(policy_config, cfg.policy, "policy", ignore=("kind",))


def self_context(cfg: DictConfig, run_dir: Path) -> Callable[[Logger, torch.device, Stages], tuple[dict, Table]]:
    """Check the config of `opsd_self_context`; returns the run."""
    return partial(run_self_context, cfg, run_dir, *build_sections(cfg, SequencePolicyConfig, "self_context"))


def run_self_context(cfg: DictConfig, run_dir: Path, opsd: OPSDConfig, ppo: PPOConfig, policy_config: SequencePolicyConfig,
                     logger: Logger, device: torch.device, stages: Stages) -> tuple[dict, Table]:
    family, progress = cfg.family, cfg.algo.progress
    radius, episodes = family.radius, family.eval_episodes
    family_sim = FuncSim.from_source(family_source(None, reveal_goal=True, radius=radius), "family")

    # 1. The model learns to use its context: PPO across the family's variants, each episode's goal in its context.
    torch.manual_seed(cfg.seed)
    model = SequencePolicy(spaces.Box(-1.0, 1.0, (2,), np.float32), spaces.Discrete(5), policy_config, context_dims=2)
    if policy_config.codec == "numeric":  # a text codec writes the raw numbers into its prompt
        standardise_from(model.set_context_stats, family_sim, cfg.seed, slice(0, 2))
        standardise_from(model.set_obs_stats, family_sim, cfg.seed, slice(2, None))
    model.to(device)
    if "pretrain" in stages:
        load_weights(model, run_dir / "pretrained")
        stages.result("pretrain")
    else:
        ppo_stage(stages, "pretrain", partial(Monitor, logger, "pretrain", dict, 1, 0), model.bind_from_obs(),
                  SimVectorEnv(family_sim, ppo.num_envs, device), dataclasses.replace(ppo, total_steps=family.pretrain_steps),
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
                anchor_obs = collect_states(base.bind_from_obs(), family_sim, opsd.anchors.states, seed)
                anchors = Anchors(student_model.bind_from_obs(), base.bind_from_obs(), anchor_obs, opsd.anchors.coef, opsd.anchors.batch)
                distill = Distillation(student, student_model, Teacher.self_context(student_model, context.to(device), opsd.teacher),
                                       opsd, anchors, seed)

            def evaluate() -> dict[str, float]:
                student_return = in_variant(student)
                teacher_now = teacher_return if distill is None or opsd.teacher.mode == "frozen" else in_variant(distill.teacher.view)
                return {"student_return": student_return, "teacher_return": teacher_now,
                        "teacher_student_gap": teacher_now - student_return, "retention_return": on_family(student_model)}

            monitor = ppo_stage(stages, stage, partial(Monitor, logger, f"seed_{seed}/{method}", evaluate, opsd.eval_every, step),
                                student, SimVectorEnv(variant_sim, ppo.num_envs, device), ppo, seed, progress, distill)
            step += ppo.total_steps
            student_model.cpu().save(run_dir / f"seed_{seed}" / method)
            curves[method] = monitor.curve
            finals[method] = {"real_return": float(evaluate_policy(student_model.bind(None), real_env, episodes, cfg.eval.seed).mean()),
                              "retention_return": on_family(student_model.to(device)),
                              "last_update": monitor.last_row}
            stages.finish(stage, {"curve": curves[method], "final": finals[method]})
        level = family.level * teacher_return
        reached = {method: first_reaching(curves[method], "student_return", level) for method in curves}
        runs.append({
            "seed": seed, "goal_angle_deg": variant["angle"], "goal_draws": variant["draws"], "context": context.tolist(),
            "session_steps": variant["session_steps"],
            "teacher_return_dream": teacher_return,
            "teacher_return_real": float(evaluate_policy(model.cpu().bind(context), real_env, episodes, cfg.eval.seed).mean()),
            "student_return_real_before": float(evaluate_policy(model.bind(None), real_env, episodes, cfg.eval.seed).mean()),
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


def new_variant(model: SequencePolicy, family: DictConfig, seed: int, max_draws: int = 100) -> tuple[float, int]:
    """A goal angle (degrees) drawn from `seed` where the empty-context student, in the dream of that goal,
    returns at most `family.student_below` x the model with the goal as its context; and the draws it took."""
    rng = np.random.default_rng(seed)
    for draw in range(1, max_draws + 1):
        angle = float(rng.uniform(0.0, 360.0))
        goal = goal_at(angle, family.radius)
        truth = FuncSim.from_source(family_source([goal], radius=family.radius), "truth")
        student = evaluate_in_sim(model.bind(None), truth, family.eval_episodes, seed).mean()
        teacher = evaluate_in_sim(model.bind(torch.tensor(goal)), truth, family.eval_episodes, seed).mean()
        if student <= family.student_below * teacher:
            return angle, draw
    raise RuntimeError(f"in {max_draws} draws no goal had the empty-context student below family.student_below="
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


def veteran(cfg: DictConfig, run_dir: Path) -> Callable[[Logger, torch.device, Stages], tuple[dict, Table]]:
    """Check the config of `opsd_veteran`; returns the run."""
    sections = build_sections(cfg, MLPPolicyConfig, "checkpoint")
    if cfg.family.new_variant not in cfg.family.variants or not set(cfg.family.old_variants) <= set(cfg.family.variants):
        raise ValueError(f"family.new_variant and family.old_variants must name variants in {list(cfg.family.variants)}")
    return partial(run_veteran, cfg, run_dir, *sections)


def run_veteran(cfg: DictConfig, run_dir: Path, opsd: OPSDConfig, ppo: PPOConfig, policy_config: MLPPolicyConfig,
                logger: Logger, device: torch.device, stages: Stages) -> tuple[dict, Table]:
    family, progress = cfg.family, cfg.algo.progress
    variants = {name: (goal_at(spec.angle, family.radius), float(spec.cue)) for name, spec in family.variants.items()}
    old, new = list(family.old_variants), family.new_variant

    def sim_of(names: list[str]) -> FuncSim:
        return FuncSim.from_source(family_source([variants[n][0] for n in names], [variants[n][1] for n in names],
                                                 radius=family.radius, shaping=family.shaping), "+".join(names))

    def real_returns(policy) -> dict[str, float]:
        """Success rate per variant in its real env (whose reward is the sparse one: 1 at the goal)."""
        return {name: float(evaluate_policy(policy, HiddenGoalEnv(goal, cue), family.eval_episodes, cfg.eval.seed).mean())
                for name, (goal, cue) in variants.items()}

    # 1. The base: PPO on the old variants. 2. The veteran: the base fine-tuned by PPO on the new one.
    torch.manual_seed(cfg.seed)
    single = {name: sim_of([name]) for name in variants}  # each variant's dream alone
    old_sim, new_sim = sim_of(old), single[new]
    base = MLPPolicy(old_sim.observation_space, old_sim.action_space, policy_config)
    standardise_from(base.set_obs_stats, sim_of(list(variants)), cfg.seed)
    base.to(device)
    if "base" in stages:
        load_weights(base, run_dir / "base")
        stages.result("base")
    else:
        ppo_stage(stages, "base", partial(Monitor, logger, "base", dict, 1, 0), base, SimVectorEnv(old_sim, ppo.num_envs, device),
                  dataclasses.replace(ppo, total_steps=family.pretrain_steps), cfg.seed, progress)
        base.save(run_dir / "base")
        stages.finish("base")
    base.cpu()
    veteran_path = Path(opsd.teacher.path) if opsd.teacher.path else run_dir / "veteran"
    if "veteran" in stages:
        stages.result("veteran")
    elif not opsd.teacher.path:
        veteran = copy.deepcopy(base).to(device)
        ppo_stage(stages, "veteran", partial(Monitor, logger, "veteran", dict, 1, family.pretrain_steps), veteran,
                  SimVectorEnv(new_sim, ppo.num_envs, device), dataclasses.replace(ppo, total_steps=family.veteran_steps),
                  cfg.seed, progress)
        veteran.cpu().save(veteran_path)
        stages.finish("veteran")

    # 3. OPSD of the veteran into the base, in the new variant's dream, with anchors on the old variants.
    teacher = Teacher.checkpoint(veteran_path, device)
    student = copy.deepcopy(base).to(device)
    if "consolidation" in stages:
        load_weights(student, run_dir / "policy")
        monitor_state = stages.result("consolidation")
    else:
        frozen_base = copy.deepcopy(base).to(device).requires_grad_(False)
        anchor_obs = torch.cat([collect_states(frozen_base, single[n], opsd.anchors.states, cfg.seed) for n in old])
        distill = Distillation(student, student, teacher, opsd, Anchors(student, frozen_base, anchor_obs, opsd.anchors.coef, opsd.anchors.batch), cfg.seed)

        def evaluate() -> dict[str, float]:
            return {f"return_{n}": float(evaluate_in_sim(student, sim, family.eval_episodes, cfg.seed).mean()) for n, sim in single.items()}

        monitor = ppo_stage(stages, "consolidation",
                            partial(Monitor, logger, "consolidation", evaluate, opsd.eval_every, family.pretrain_steps + family.veteran_steps),
                            student, SimVectorEnv(new_sim, ppo.num_envs, device), ppo, cfg.seed, progress, distill)
        student.save(run_dir / "policy")
        monitor_state = monitor.state()
        stages.finish("consolidation", monitor_state)
    student.cpu()

    returns = {"base": real_returns(base), "veteran": real_returns(teacher.model.cpu()), "consolidated": real_returns(student)}
    vet, ours, before = returns["veteran"], returns["consolidated"], returns["base"]
    kept = {n: ours[n] / max(before[n], 1e-9) for n in old}
    claims = {f"consolidated >= {family.level:g} x veteran on {new}": ours[new] >= family.level * vet[new],
              **{f"consolidated keeps >= {family.min_kept:.0%} of the base on {n}": kept[n] >= family.min_kept for n in old}}
    result = {"setting": "veteran", "variants": {n: {"goal": list(g), "cue": c} for n, (g, c) in variants.items()},
              "old_variants": old, "new_variant": new, "real_returns": returns, "kept_of_base": kept,
              "veteran_kept_of_base": {n: vet[n] / max(before[n], 1e-9) for n in old},
              "claims": claims, "curve": monitor_state["curve"], "last_update": monitor_state["last_row"]}
    table = Table(title=f"OPSD, veteran -> base: real-env return per variant ({family.eval_episodes} episodes each)")
    table.add_column("policy")
    for name in variants:
        table.add_column(f"{name}{' (new)' if name == new else ''}", justify="right")
    labels = {"base": "base", "veteran": "veteran (naive fine-tuning)",
              "consolidated": f"base + OPSD, anchors x {opsd.anchors.coef:g}"}
    for key, per_variant in returns.items():
        table.add_row(labels[key], *(f"{per_variant[n]:.2f}" for n in variants))
    for claim, ok in claims.items():
        table.add_row(claim, "met" if ok else "MISSED")
    return {"opsd": result}, table
