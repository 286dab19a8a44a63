"""Sandbox settings (no defaults here: `conf/sandbox/default.yaml` holds every value)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf


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
        values = _plain(values)
        thresholds = _plain(values.get("thresholds", {}))
        _check_keys("sandbox config", values, cls)
        _check_keys("sandbox config thresholds", thresholds, FidelityThresholds)
        for key in ("memory_mb", "cpu_s", "seed", "kstep", "batch_check_size", "rollout_envs", "rollout_steps"):
            if not isinstance(values[key], int) or isinstance(values[key], bool):
                raise ValueError(f"sandbox config: {key} must be an int, got {values[key]!r}")
        for key in ("timeout_s", "max_output_mb"):
            if not isinstance(values[key], int | float) or values[key] <= 0:
                raise ValueError(f"sandbox config: {key} must be a positive number, got {values[key]!r}")
        for key, value in thresholds.items():
            if value is not None and not isinstance(value, int | float):
                raise ValueError(f"sandbox config: thresholds.{key} must be a number or null, got {value!r}")
        return cls(**{**values, "thresholds": FidelityThresholds(**thresholds)})

    def to_dict(self) -> dict:
        return asdict(self)


def _plain(values) -> dict:
    if isinstance(values, DictConfig):
        return OmegaConf.to_container(values, resolve=True)
    if isinstance(values, Mapping):
        return dict(values)
    raise ValueError(f"sandbox config: expected a mapping, got {type(values).__name__}")


def _check_keys(what: str, values: dict, kind: type) -> None:
    expected = {f.name for f in fields(kind)}
    unknown, missing = sorted(set(values) - expected), sorted(expected - set(values))
    if unknown or missing:
        raise ValueError(f"{what}: unknown keys {unknown}, missing keys {missing}")
