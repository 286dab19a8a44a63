"""`pipeline=opsd_veteran` (`+experiment=opsd_veteran`), on the hidden-goal family (`envs.hidden_goal`).

An MLP base trained on variants A and B; a veteran = the base fine-tuned in the dream of variant C by PPO
(naive fine-tuning); then OPSD of the veteran (a checkpoint teacher) into the base, with anchor states of A
and B. Reported: real-env returns of base, veteran and consolidated policy on A, B and C. Each step is a
named stage (`dreamer.resume.Stages`), each PPO stage checkpointed every `algo.checkpoint_every` updates.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from omegaconf import DictConfig
from rich.table import Table

from dreamer.config import build
from dreamer.opsd import Anchors, Distillation, OPSDConfig, Teacher, collect_states
from dreamer.pipelines.family import Monitor, load_weights, opsd_sections, ppo_stage, standardise_from
from dreamer.pipelines.protocol import Pipeline, Run
from dreamer.rl import MLPPolicy, MLPPolicyConfig, PPOConfig, evaluate_in_sim, evaluate_policy
from dreamer.sim import FuncSim, SimVectorEnv
from envs.hidden_goal import HiddenGoalEnv, family_source, goal_at


@dataclass(frozen=True)
class Variant:
    angle: float  # goal angle on the family's circle (degrees)
    cue: float    # what the observation's cue shows in this variant


@dataclass(frozen=True)
class VeteranFamily:
    """The `family` section of `+experiment=opsd_veteran` (conf/family/veteran.yaml)."""

    radius: float
    shaping: float               # dense reward for progress in the dreams
    variants: dict[str, Variant]
    old_variants: list[str]      # the base is trained on these ...
    new_variant: str             # ... the veteran fine-tuned on this one
    pretrain_steps: int          # PPO steps of the base on the old variants
    veteran_steps: int           # PPO steps of naive fine-tuning on the new one
    eval_episodes: int
    stats_envs: int              # envs x one episode of random actions give the fixed obs statistics
    level: float                 # consolidated >= level x veteran on the new variant
    min_kept: float              # consolidated keeps >= min_kept of the base's return on the old ones

    def __post_init__(self):
        if self.new_variant not in self.variants or not set(self.old_variants) <= set(self.variants):
            raise ValueError(f"new_variant and old_variants must name variants in {list(self.variants)}, got "
                             f"new_variant={self.new_variant!r}, old_variants={self.old_variants}")


@dataclass(frozen=True)
class VeteranConfig:
    """Every section `opsd_veteran` reads, built and checked."""

    seed: int
    family: VeteranFamily
    opsd: OPSDConfig
    ppo: PPOConfig
    progress: bool
    policy: MLPPolicyConfig
    eval_seed: int
    sim_compile: bool  # torch.compile the training envs' step (sim.compile)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> VeteranConfig:
        return cls(family=build(VeteranFamily, cfg.family, "family"),
                   **opsd_sections(cfg, teacher_kind="checkpoint", policy_kind="mlp"))


def veteran(cfg: VeteranConfig, run: Run) -> tuple[dict, Table]:
    """The experiment of the module docstring."""
    run_dir, device, stages, logger = run.dir, run.device, run.stages, run.logger
    family, progress, opsd, ppo, policy_config = cfg.family, cfg.progress, cfg.opsd, cfg.ppo, cfg.policy
    variants = {name: (goal_at(spec.angle, family.radius), spec.cue) for name, spec in family.variants.items()}
    old, new = list(family.old_variants), family.new_variant

    def sim_of(names: list[str]) -> FuncSim:
        return FuncSim.from_source(family_source([variants[n][0] for n in names], [variants[n][1] for n in names],
                                                 radius=family.radius, shaping=family.shaping), "+".join(names))

    def real_returns(policy) -> dict[str, float]:
        """Success rate per variant in its real env (whose reward is the sparse one: 1 at the goal)."""
        return {name: float(evaluate_policy(policy, HiddenGoalEnv(goal, cue), family.eval_episodes, cfg.eval_seed).mean())
                for name, (goal, cue) in variants.items()}

    # 1. The base: PPO on the old variants. 2. The veteran: the base fine-tuned by PPO on the new one.
    torch.manual_seed(cfg.seed)
    single = {name: sim_of([name]) for name in variants}  # each variant's dream alone
    old_sim, new_sim = sim_of(old), single[new]
    base = MLPPolicy(old_sim.observation_space, old_sim.action_space, policy_config)
    standardise_from(base.set_obs_stats, sim_of(list(variants)), family.stats_envs, cfg.seed)
    base.to(device)
    if "base" in stages:
        load_weights(base, run_dir / "base")
        stages.result("base")
    else:
        ppo_stage(stages, "base", partial(Monitor, logger, "base", dict, 1, 0), base, SimVectorEnv(old_sim, ppo.num_envs, device, cfg.sim_compile),
                  dataclasses.replace(ppo, total_steps=family.pretrain_steps), cfg.seed, progress)
        base.save(run_dir / "base")
        stages.finish("base")
    base.cpu()
    veteran_path = Path(opsd.teacher.path) if opsd.teacher.path else run_dir / "veteran"
    if "veteran" in stages:
        stages.result("veteran")
    elif not opsd.teacher.path:
        veteran_policy = copy.deepcopy(base).to(device)
        ppo_stage(stages, "veteran", partial(Monitor, logger, "veteran", dict, 1, family.pretrain_steps), veteran_policy,
                  SimVectorEnv(new_sim, ppo.num_envs, device, cfg.sim_compile), dataclasses.replace(ppo, total_steps=family.veteran_steps),
                  cfg.seed, progress)
        veteran_policy.cpu().save(veteran_path)
        stages.finish("veteran")

    # 3. OPSD of the veteran into the base, in the new variant's dream, with anchors on the old variants.
    teacher = Teacher.checkpoint(veteran_path, device)
    student = copy.deepcopy(base).to(device)
    if "consolidation" in stages:
        load_weights(student, run_dir / "policy")
        monitor_state = stages.result("consolidation")
    else:
        frozen_base = copy.deepcopy(base).to(device).requires_grad_(False)
        anchor_obs = torch.cat([collect_states(frozen_base, single[n], opsd.anchors.states, cfg.seed, opsd.anchors.envs) for n in old])
        distill = Distillation(student, student, teacher, opsd, Anchors(student, frozen_base, anchor_obs, opsd.anchors.coef, opsd.anchors.batch), cfg.seed)

        def evaluate() -> dict[str, float]:
            return {f"return_{n}": float(evaluate_in_sim(student, sim, family.eval_episodes, cfg.seed).mean()) for n, sim in single.items()}

        monitor = ppo_stage(stages, "consolidation",
                            partial(Monitor, logger, "consolidation", evaluate, opsd.eval_every, family.pretrain_steps + family.veteran_steps),
                            student, SimVectorEnv(new_sim, ppo.num_envs, device, cfg.sim_compile), ppo, cfg.seed, progress, distill)
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


VETERAN = Pipeline(VeteranConfig.from_config, veteran)
