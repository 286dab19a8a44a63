"""Sandbox settings (no defaults here: `conf/sandbox/default.yaml` holds every value)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from dreamer.config import build


@dataclass(frozen=True)
class FidelityThresholds:
    """Pass marks for the held-out fidelity figures; None skips that figure."""

    max_obs_nrmse: float | None  # mean over obs dims of one-step RMSE / std(next_obs - obs)
    max_reward_nrmse: float | None  # reward RMSE / std(reward)
    min_termination_accuracy: float | None  # fraction of transitions whose terminal flag matches
    max_kstep_nrmse: float | None  # open-loop RMSE after `kstep` steps / std(obs), mean over dims


@dataclass(frozen=True)
class SandboxConfig:
    """Limits of the worker process and sizes of the validation suite."""

    timeout_s: float  # wall clock for the whole worker; then its process group is killed
    memory_mb: int  # RLIMIT_AS of the worker (address space, so torch's import counts)
    cpu_s: int  # RLIMIT_CPU of the worker (SIGXCPU)
    max_output_mb: float  # stdout read cap, also RLIMIT_FSIZE (files, stderr log)
    seed: int  # seeds the rollouts and the random actions
    kstep: int  # horizon of the open-loop fidelity figure (steps)
    batch_check_size: int  # rows in the shape and batch-vs-row checks
    rollout_envs: int  # SimVectorEnv width of the determinism/finiteness rollout
    rollout_steps: int  # steps of that rollout
    thresholds: FidelityThresholds

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SandboxConfig:
        """From a dict or DictConfig with exactly the dataclass fields (thresholds nested)."""
        config = build(cls, values, "sandbox")
        for key in ("memory_mb", "cpu_s", "seed", "kstep", "batch_check_size", "rollout_envs", "rollout_steps"):
            value = getattr(config, key)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"sandbox.{key} must be an int, got {value!r}")
        for key in ("timeout_s", "max_output_mb"):
            value = getattr(config, key)
            if not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"sandbox.{key} must be a positive number, got {value!r}")
        for key, value in asdict(config.thresholds).items():
            if value is not None and not isinstance(value, int | float):
                raise ValueError(f"sandbox.thresholds.{key} must be a number or null, got {value!r}")
        return config

    def to_dict(self) -> dict:
        return asdict(self)
