"""The schema of a run's config (`conf/`): the sections no single stage owns (`eval`, `trace`, `sim`), the
top-level keys each entry point allows, and `check_run_config`, the start-up check of them all."""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import gymnasium
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from dreamer.config import CONF_DIR, build, choose, resolve_device, to_plain, type_error
from dreamer.loggers import LoggerConfig
from dreamer.rl import MLPPolicyConfig, NoveltyConfig, PPOConfig
from dreamer.rl.sequence import SequencePolicyConfig
from dreamer.sim.branch import BranchConfig
from dreamer.sim.env import UncertaintyConfig
from dreamer.sim.support import SupportConfig
from dreamer.traces.storage import TABLES
from dreamer.traces.table import TableColumns

ENTRY_POINTS = {  # entry point -> (the pipelines it runs, its config's top-level keys; `family` only in opsd_*)
    "train": (("dream", "opsd_self_context", "opsd_veteran"),
              ("pipeline", "seed", "device", "eval", "trace", "writer", "sandbox", "sim", "policy", "algo", "opsd",
               "logger", "family")),
    "write": (("write",), ("pipeline", "seed", "device", "trace", "writer", "sandbox", "sim", "logger")),
}


def env_id_problem(env_id: str) -> str | None:
    """Why `gymnasium.make(env_id)` cannot find the env, or None (a `module:Env-v0` id imports its module first)."""
    module, _, name = env_id.rpartition(":")
    try:
        if module:
            importlib.import_module(module)
        gymnasium.spec(name)
    except (ImportError, gymnasium.error.Error) as error:
        return str(error)
    return None


def check_env_id(env_id: str) -> None:
    if problem := env_id_problem(env_id):
        raise ValueError(f"env_id={env_id!r} is not an env Gymnasium can make: {problem}")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The `eval` section of `python -m dreamer.train`."""

    env_id: str | None   # the real env the policy is evaluated in (None: no evaluation)
    episodes: int
    seed: int            # episode i is reset with seed + i
    dream_episodes: int  # episodes in the last round's sim, for the pick among rounds and the dream return
    max_gap: float       # flag dream - real > max_gap x (dream - random), both in the last round's sim

    def __post_init__(self):
        for key in ("episodes", "dream_episodes"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be a positive int, got {getattr(self, key)}")
        if not self.max_gap >= 0:
            raise ValueError(f"max_gap must be a number >= 0, got {self.max_gap}")
        if self.env_id is not None:
            check_env_id(self.env_id)


@dataclasses.dataclass(frozen=True)
class TraceConfig:
    """The `trace` section, less its `columns` (`trace_columns`): where the session comes from."""

    kind: Literal["gym", "file"]      # gym: recorded in a live Gymnasium env | file: read from `path`
    env_id: str | None                # gym: the env recorded in (file: evaluated in, or None)
    path: str | None                  # file: the trace file
    steps_per_round: list[int] | None  # gym: real steps recorded in each round
    held_out_fraction: float          # share of episodes held out for the sandbox's fidelity report
    explore: NoveltyConfig | None     # gym: a round whose session shows no task signal trains an explorer for the next

    def __post_init__(self):
        if not 0 < self.held_out_fraction < 1:
            raise ValueError(f"held_out_fraction must be in (0, 1), got {self.held_out_fraction}")
        if self.kind == "gym":
            if not self.env_id:
                raise ValueError(f"env_id must name a Gymnasium env for kind=gym, got {self.env_id!r}")
            check_env_id(self.env_id)
            if not self.steps_per_round or min(self.steps_per_round) < 1:
                raise ValueError(f"steps_per_round must be a non-empty list of positive ints for kind=gym, "
                                 f"got {self.steps_per_round}")
            if self.path is not None:
                raise ValueError(f"path is read for kind=file only (trace=file), got {self.path!r} with kind=gym")
        elif self.steps_per_round is not None:
            raise ValueError(f"steps_per_round applies to kind=gym only (trace=gym), got {self.steps_per_round} "
                             "with kind=file (one round)")


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """The `sim` section: what the accepted sim is called and how its training envs step."""

    name: str  # the env file is env/<name>.py; registered as gymnasium id dreamer/<name>
    compile: bool  # torch.compile the fused vector step of training envs (`SimVectorEnv(compile=...)`)
    uncertainty: UncertaintyConfig  # what the training envs do with a learned sim's uncertainty
    branch: BranchConfig  # where the training envs' dream episodes start and how long they last
    support: SupportConfig | None  # where the dream trusts the sim (task rounds and the pick); None: everywhere

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.name):
            raise ValueError(f"name must be a Python identifier (letters, digits, _), got {self.name!r}")


def check_run_config(cfg: DictConfig, entry: Literal["train", "write"]) -> None:
    """The start-up check of `python -m dreamer.<entry>`'s config, before any work: values still `???`
    (`require_set`), the top-level keys and `pipeline` (`ENTRY_POINTS`), `seed`, `device` (`resolve_device`),
    `sim`, `eval`, `logger` and `trace` (`SimConfig`, `EvalConfig`, `LoggerConfig`, `TraceConfig`,
    `trace_columns`). Raises ValueError naming the key and what it allows. The other sections are checked by
    the dataclasses their pipeline builds."""
    require_set(cfg, f"dreamer.{entry}")
    values = to_plain(cfg)
    pipelines, allowed = ENTRY_POINTS[entry]
    unknown = sorted(set(values) - set(allowed))
    missing = sorted(set(allowed) - {"family"} - set(values))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; allowed keys: {sorted(allowed)}")
    if missing:
        raise ValueError(f"missing config key(s) {missing}")
    choose(dict.fromkeys(pipelines), values["pipeline"], "pipeline")
    for key, hint in (("seed", int), ("device", str)):
        if problem := type_error(values[key], hint, key):
            raise ValueError(problem)
    resolve_device(values["device"])
    build(SimConfig, values["sim"], "sim")
    build(LoggerConfig, values["logger"], "logger")
    trace_config(values["trace"])  # before eval, whose env_id is the trace's by default
    if "eval" in values:
        build(EvalConfig, values["eval"], "eval")


def trace_config(trace: Mapping[str, Any]) -> TraceConfig:
    """The `trace` section, checked, its `columns` too (`trace_columns`)."""
    config = build(TraceConfig, trace, "trace", ignore=("columns",) if trace.get("kind") != "gym" else ())
    if config.kind == "file":
        trace_columns(trace)
    return config


POLICIES = {"mlp": MLPPolicyConfig, "sequence": SequencePolicyConfig}  # policy.kind -> its config
ALGOS = {"ppo": PPOConfig}  # algo.kind -> its config


def policy_config(section: Mapping[str, Any], pipeline: str, kinds: tuple[str, ...]) -> MLPPolicyConfig | SequencePolicyConfig:
    """The `policy` section of a pipeline that trains one of `kinds`; ValueError naming `policy.kind` otherwise."""
    kind = section.get("kind")
    choose(POLICIES, kind, "policy.kind")
    if kind not in kinds:
        raise ValueError(f"pipeline={pipeline} trains policy.kind in {list(kinds)}, got policy.kind={kind!r} "
                         f"(policy={kinds[0]} selects it)")
    return build(POLICIES[kind], section, "policy", ignore=("kind",))


def ppo_config(section: Mapping[str, Any]) -> PPOConfig:
    """The `algo` section (`kind: ppo`; its `progress`, the progress bar, goes to `train_ppo` itself)."""
    return build(choose(ALGOS, section.get("kind"), "algo.kind"), section, "algo", ignore=("kind", "progress"))


def require_set(cfg: DictConfig, command: str) -> None:
    """Raise ValueError naming every `???` value of `cfg` that the command line must set."""
    if missing := sorted(OmegaConf.missing_keys(cfg)):
        raise ValueError(f"config value(s) {missing} must be set, e.g. python -m {command} {missing[0]}=...")


def compose_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The config `python -m dreamer.<name>` would run with these command-line overrides (for notebooks)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name={"train": "config"}.get(name, name), overrides=list(overrides))


def trace_columns(trace: Mapping[str, Any]) -> TableColumns | None:
    """The `trace.columns` mapping for a CSV or Parquet `trace.path`; None for the other formats, for
    which a mapping other than the default is an error naming the key."""
    columns = build(TableColumns, trace["columns"], "trace.columns")
    if Path(str(trace["path"])).suffix in TABLES:
        return columns
    if columns != TableColumns():
        raise ValueError(f"trace.columns maps the columns of {' and '.join(TABLES)} files; "
                         f"trace.path={trace['path']} is not one (leave trace.columns at its defaults)")
    return None
