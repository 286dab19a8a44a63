"""Hydra config sections -> the typed dataclasses each stage takes, with errors that name the key."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import torch
from omegaconf import DictConfig, OmegaConf

T = TypeVar("T")


def to_plain(values: Any) -> Any:
    """A DictConfig/ListConfig (resolved) or mapping -> plain Python containers."""
    if isinstance(values, DictConfig) or OmegaConf.is_config(values):
        return OmegaConf.to_container(values, resolve=True)
    return dict(values) if isinstance(values, Mapping) else values


def build(kind: type[T], values: Mapping[str, Any], where: str, ignore: tuple[str, ...] = ()) -> T:
    """`kind(**values)` for a dataclass, nested dataclass fields included.

    Raises ValueError naming `where.key` for an unknown or missing key. Keys in `ignore` are
    config entries meant for the caller (e.g. a group's `name`), not for the dataclass.
    """
    values = {k: v for k, v in to_plain(values).items() if k not in ignore}
    expected = {f.name for f in dataclasses.fields(kind)}
    unknown, missing = sorted(set(values) - expected), sorted(expected - set(values))
    if unknown:
        raise ValueError(f"unknown config key(s) {[f'{where}.{k}' for k in unknown]}; allowed keys: {sorted(expected)}")
    if missing:
        raise ValueError(f"missing config key(s) {[f'{where}.{k}' for k in missing]}")
    hints = typing.get_type_hints(kind)
    for key, value in values.items():
        nested = [hint for hint in (typing.get_args(hints[key]) or (hints[key],)) if dataclasses.is_dataclass(hint)]
        if nested and isinstance(value, Mapping):  # a dataclass field, or an optional one (`Config | None`)
            values[key] = build(nested[0], value, f"{where}.{key}")
    try:
        return kind(**values)
    except ValueError as error:  # a dataclass's own check of its values
        raise ValueError(f"{where}: {error}") from error


def resolve_device(device: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; a cuda device on a machine without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but this machine has no CUDA device; use device=cpu or device=auto")
    return resolved
