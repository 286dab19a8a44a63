"""Sandbox settings (no defaults here: `conf/sandbox/default.yaml` holds every value)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from dreamer.config import build
from dreamer.sim.fidelity import Tolerances


@dataclass(frozen=True)
class FidelityThresholds:
    """Pass marks for the held-out fidelity figures; None skips that figure."""

    max_obs_nrmse: float | None  # mean over obs dims of one-step RMSE / std(next_obs - obs)
    max_reward_nrmse: float | None  # reward RMSE / std(reward)
    min_termination_accuracy: float | None  # fraction of transitions whose terminal flag matches
    min_termination_recall: float | None  # fraction of the real terminations predicted (unmeasured without any)
    max_kstep_nrmse: float | None  # open-loop RMSE after `kstep` steps / std(obs), mean over dims
    min_accuracy: float | None  # fraction of transitions right in state, reward and termination


@dataclass(frozen=True)
class PlanningConfig:
    """The planning check: CEM over open-loop action sequences inside the candidate."""

    horizon: int  # steps; 0 turns the check off
    samples: int  # action sequences per CEM iteration
    iterations: int
    starts: int  # held-out episode starts planned from
    tolerance: float  # pass when planned >= best real `horizon`-step return - tolerance * max(1, |that|)
    elite_fraction: float  # share of each iteration's samples refitted to (at least 2), in (0, 1]
    smoothing: float  # weight kept on the old discrete action probabilities at each refit, in [0, 1)


@dataclass(frozen=True)
class SandboxConfig:
    """Limits of the worker process and sizes of the validation suite."""

    isolation: str  # "auto" (bubblewrap when it works here, else rlimits), "bwrap" or "rlimits"
    timeout_s: float  # wall clock for the whole worker; then its process group is killed
    memory_mb: int  # RLIMIT_AS of the worker (address space, so torch's import counts)
    cpu_s: int  # RLIMIT_CPU of the worker (SIGXCPU)
    max_processes: int  # RLIMIT_NPROC headroom (processes and threads) over the user's current count
    max_open_files: int  # RLIMIT_NOFILE of the worker
    max_output_mb: float  # stdout read cap, also RLIMIT_FSIZE (files, stderr log)
    max_weights_mb: float  # largest weights file a sim may come with (a learned sim's safetensors)
    max_source_kb: float  # longest source the static check reads; a longer one is rejected unread
    workers: int  # candidates validated at once, each in its own worker: <= workers x memory_mb in all
    seed: int  # seeds the rollouts and the random actions
    kstep: int  # horizon of the open-loop fidelity figure (steps)
    batch_check_size: int  # rows in the shape and batch-vs-row checks
    rollout_envs: int  # SimVectorEnv width of the determinism/finiteness rollout
    rollout_steps: int  # steps of that rollout
    counterexamples: int  # worst-predicted held-out transitions returned in the report
    tolerances: Tolerances
    planning: PlanningConfig
    thresholds: FidelityThresholds

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SandboxConfig:
        """From a dict or DictConfig with exactly the dataclass fields (thresholds nested)."""
        config = build(cls, values, "sandbox")
        if config.isolation not in ("auto", "bwrap", "rlimits"):
            raise ValueError(f"sandbox.isolation must be auto, bwrap or rlimits, got {config.isolation!r}")
        for key in ("memory_mb", "cpu_s", "max_processes", "max_open_files", "workers", "seed", "kstep",
                    "batch_check_size", "rollout_envs", "rollout_steps", "counterexamples"):
            value = getattr(config, key)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"sandbox.{key} must be an int, got {value!r}")
        for key in ("workers", "max_processes", "max_open_files"):
            if getattr(config, key) < 1:
                raise ValueError(f"sandbox.{key} must be at least 1, got {getattr(config, key)}")
        for key in ("planning.horizon", "planning.samples", "planning.iterations", "planning.starts"):
            value = getattr(config.planning, key.split(".")[1])
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"sandbox.{key} must be a non-negative int, got {value!r}")
        if not 0 < config.planning.elite_fraction <= 1:
            raise ValueError(f"sandbox.planning.elite_fraction must be in (0, 1], got {config.planning.elite_fraction!r}")
        if not 0 <= config.planning.smoothing < 1:
            raise ValueError(f"sandbox.planning.smoothing must be in [0, 1), got {config.planning.smoothing!r}")
        for key, value in (("timeout_s", config.timeout_s), ("max_output_mb", config.max_output_mb),
                           ("max_weights_mb", config.max_weights_mb), ("max_source_kb", config.max_source_kb),
                           ("tolerances.state", config.tolerances.state),
                           ("tolerances.reward", config.tolerances.reward)):
            if not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"sandbox.{key} must be a positive number, got {value!r}")
        for key, value in asdict(config.thresholds).items():
            if value is not None and not isinstance(value, int | float):
                raise ValueError(f"sandbox.thresholds.{key} must be a number or null, got {value!r}")
        return config

    def to_dict(self) -> dict:
        return asdict(self)
