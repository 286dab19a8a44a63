"""What OPSD costs per student step: PPO + OPSD against PPO alone, in one run, on the same policy and dream.

The policy is the self-context experiment's sequence policy (`conf/policy/sequence.yaml`, random init),
the dream a variant of the hidden-goal family, PPO and OPSD as `conf/experiment/opsd_self_context.yaml`
sets them (teacher: the same model with a context; anchors on family states). Both runs are timed by
`PPOResult.steps_per_second` (rollouts, GAE and updates; no evaluations), after one warm-up update each.

    python benchmarks/opsd_overhead.py                  # cpu, 4 timed updates each
    python benchmarks/opsd_overhead.py --device cuda --updates 8
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from gymnasium import spaces
from hydra import compose, initialize_config_dir

from dreamer.artifacts import write_json
from dreamer.config import build, resolve_device
from envs.hidden_goal import family_source, goal_at
from dreamer.opsd import Anchors, Distillation, OPSDConfig, Teacher, collect_states
from dreamer.rl import PPOConfig, train_ppo
from dreamer.rl.sequence import SequencePolicy, SequencePolicyConfig
from dreamer.sim import FuncSim, SimVectorEnv

CONF = str((Path(__file__).parents[1] / "conf").resolve())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--updates", type=int, default=4, help="timed PPO updates per method")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=opsd_self_context"])
    device = resolve_device(args.device)
    opsd = build(OPSDConfig, cfg.opsd, "opsd")
    ppo = build(PPOConfig, cfg.algo, "algo", ignore=("kind", "progress"))
    ppo = dataclasses.replace(ppo, total_steps=ppo.num_envs * ppo.num_steps * (args.updates + 1))
    torch.manual_seed(args.seed)
    model = SequencePolicy(spaces.Box(-1.0, 1.0, (2,), np.float32), spaces.Discrete(5),
                           build(SequencePolicyConfig, cfg.policy, "policy", ignore=("kind",)), context_dims=2).to(device)
    goal = goal_at(30.0, cfg.family.radius)
    variant = FuncSim.from_source(family_source([goal], radius=cfg.family.radius), "variant")
    family = FuncSim.from_source(family_source(None, reveal_goal=True, radius=cfg.family.radius), "family")

    def steps_per_second(auxiliary_for) -> float:
        """Steps/s of the timed updates: the run's total time minus its first (warm-up) update."""
        student_model = copy.deepcopy(model)
        auxiliary = auxiliary_for(student_model)
        result = train_ppo(student_model.bind(None), SimVectorEnv(variant, ppo.num_envs, device), ppo, args.seed,
                           progress=False, auxiliary=auxiliary)
        first = result.history[0]
        total_time = result.env_steps / result.steps_per_second
        warmup_time = first["env_steps"] / first["steps_per_second"]
        return (result.env_steps - first["env_steps"]) / (total_time - warmup_time)

    def distillation(student_model: SequencePolicy) -> Distillation:
        base = copy.deepcopy(model).requires_grad_(False)
        anchors = Anchors(student_model.bind_from_obs(), base.bind_from_obs(),
                          collect_states(base.bind_from_obs(), family, opsd.anchors.states, args.seed, opsd.anchors.envs),
                          opsd.anchors.coef, opsd.anchors.batch)
        teacher = Teacher.self_context(student_model, torch.tensor(goal), opsd.teacher)
        return Distillation(student_model.bind(None), student_model, teacher, opsd, anchors, args.seed)

    ppo_alone = steps_per_second(lambda student_model: None)
    with_opsd = steps_per_second(distillation)
    figures = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": str(device), "torch_threads": torch.get_num_threads(),
        "hardware": {"platform": platform.platform(), "processor": platform.processor(), "cores": os.cpu_count()},
        "seed": args.seed, "timed_updates": args.updates, "num_envs": ppo.num_envs, "num_steps": ppo.num_steps,
        "policy_model": dict(cfg.policy.model), "anchors_coef": opsd.anchors.coef,
        "ppo_steps_per_second": ppo_alone, "ppo_opsd_steps_per_second": with_opsd,
        "opsd_cost_ratio": ppo_alone / with_opsd,
    }
    out = Path(__file__).parent / "results" / f"opsd-overhead-{device.type}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    if out.exists():
        raise FileExistsError(f"{out} exists; not overwriting it")
    write_json(out, figures)
    print(f"PPO alone {ppo_alone:,.0f} steps/s, PPO + OPSD {with_opsd:,.0f} steps/s: OPSD costs "
          f"{figures['opsd_cost_ratio']:.2f}x the time per student step ({device}, {figures['torch_threads']} threads)")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
