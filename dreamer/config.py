"""Hydra config sections -> the typed dataclasses each stage takes, with errors that name the key."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from dreamer.traces.storage import TABLES
from dreamer.traces.table import TableColumns

T = TypeVar("T")
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the Hydra configs of `python -m dreamer.train`/`.write`


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
