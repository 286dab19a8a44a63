"""Hydra config sections -> the typed dataclasses each stage takes, with errors that name the key; and
`check_run_config`, the start-up check of the keys of a run's config that no stage's dataclass covers."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from dreamer.loggers import LoggerConfig
from dreamer.rl.explore import NoveltyConfig
from dreamer.traces.storage import TABLES
from dreamer.traces.table import TableColumns

T = TypeVar("T")
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the Hydra configs of `python -m dreamer.train`/`.write`
RUN_KEYS = {  # the top-level keys of each entry point's config; `family` only with +experiment=opsd_*
    "train": ("pipeline", "seed", "device", "eval", "trace", "writer", "sandbox", "sim", "policy", "algo", "opsd",
              "logger", "family"),
    "write": ("seed", "device", "trace", "writer", "sandbox", "sim"),
}


def to_plain(values: Any) -> Any:
    """A DictConfig/ListConfig (resolved) or mapping -> plain Python containers."""
    if isinstance(values, DictConfig) or OmegaConf.is_config(values):
        return OmegaConf.to_container(values, resolve=True)
    return dict(values) if isinstance(values, Mapping) else values


def build(kind: type[T], values: Mapping[str, Any], where: str, ignore: tuple[str, ...] = ()) -> T:
    """`kind(**values)` for a dataclass, nested dataclass fields included.

    Raises ValueError naming `where.key` for an unknown or missing key or a value that does not fit the
    field's annotation (`type_error`). Keys in `ignore` are config entries meant for the caller (e.g. a
    group's `name`), not for the dataclass.
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
        elif problem := type_error(value, hints[key], f"{where}.{key}"):
            raise ValueError(problem)
    try:
        return kind(**values)
    except ValueError as error:  # a dataclass's own check of its values
        raise ValueError(f"{where}: {error}") from error


def type_error(value: Any, hint: Any, key: str) -> str | None:
    """None when `value` fits the annotation `hint`, else a message naming `key`, the value and what it must
    be, e.g. "algo.learning_rate='fast' is not a float". An int fits a float, a bool fits only a bool, a
    list fits `list[X]` and `tuple[X, ...]` when each item fits X (a bad item is named: `key[i]`), a
    mapping fits `dict[str, X]` when each value does (`key.name`)."""
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if origin in (list, tuple, dict) and isinstance(value, Mapping if origin is dict else list | tuple):
        items = value.items() if origin is dict else enumerate(value)  # list[X], tuple[X, ...], dict[str, X]
        item_hint = (args[1] if origin is dict else args[0]) if args else Any
        for index, item in items:
            if problem := type_error(item, item_hint, f"{key}.{index}" if origin is dict else f"{key}[{index}]"):
                return problem
        return None
    if origin is Literal:
        fits = any(type(value) is type(option) and value == option for option in args)
    elif origin in (typing.Union, types.UnionType):
        fits = any(type_error(value, option, key) is None for option in args)
    elif origin in (int, float):
        fits = isinstance(value, int | origin) and not isinstance(value, bool)
    else:
        fits = origin is Any or isinstance(value, origin)  # bool, str, None, a list or dict that is not one, ...
    return None if fits else f"{key}={value!r} is not {describe(hint)}"


def describe(hint: Any) -> str:
    """An annotation in words: `float | None` -> "a float or null"; `Literal["a", "b"]` -> "one of ['a', 'b']"."""
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if origin is Literal:
        return f"one of {list(args)}"
    if origin in (typing.Union, types.UnionType):
        words = [describe(option) for option in args]
        return f"{', '.join(words[:-1])} or {words[-1]}"
    if origin is type(None):
        return "null"
    if dataclasses.is_dataclass(origin):
        return f"a mapping with the keys {[f.name for f in dataclasses.fields(origin)]}"
    name = origin.__name__
    if args:  # list[X], tuple[X, ...], dict[str, X]
        name += " of " + describe(args[-1 if origin is dict else 0]).removeprefix("a ").removeprefix("an ")
    return ("an " if name[0].lower() in "aeiou" else "a ") + name


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


@dataclasses.dataclass(frozen=True)
class TraceConfig:
    """The `trace` section, less its `columns` (`trace_columns`): where the session comes from."""

    source: Literal["env", "file"]    # env: recorded in a live Gymnasium env | file: read from `path`
    env_id: str | None                # env: the env recorded in (file: evaluated in, or None)
    path: str | None                  # file: the trace file
    steps_per_round: list[int] | None  # env: real steps recorded in each round
    held_out_fraction: float          # share of episodes held out for the sandbox's fidelity report
    explore: NoveltyConfig | None     # env: a round whose session shows no task signal trains an explorer for the next

    def __post_init__(self):
        if not 0 < self.held_out_fraction < 1:
            raise ValueError(f"held_out_fraction must be in (0, 1), got {self.held_out_fraction}")
        if self.source == "env":
            if not self.env_id:
                raise ValueError(f"env_id must name a Gymnasium env for source=env, got {self.env_id!r}")
            if not self.steps_per_round or min(self.steps_per_round) < 1:
                raise ValueError(f"steps_per_round must be a non-empty list of positive ints for source=env, "
                                 f"got {self.steps_per_round}")
            if self.path is not None:
                raise ValueError(f"path is read for source=file only (trace=file), got {self.path!r} with source=env")
        elif self.steps_per_round is not None:
            raise ValueError(f"steps_per_round applies to source=env only (trace=gym), got {self.steps_per_round} "
                             "with source=file (one round)")


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """The `sim` section: what the accepted sim is called."""

    name: str  # the env file is env/<name>.py; registered as gymnasium id dreamer/<name>

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.name):
            raise ValueError(f"name must be a Python identifier (letters, digits, _), got {self.name!r}")


def check_run_config(cfg: DictConfig, name: Literal["train", "write"]) -> None:
    """The start-up check of `python -m dreamer.<name>`'s config, before any work: values still `???`
    (`require_set`), the top-level keys (`RUN_KEYS`), `seed`, `device` (`resolve_device`), `sim`, `eval`,
    `logger` and `trace` (`SimConfig`, `EvalConfig`, `LoggerConfig`, `TraceConfig`, `trace_columns`).
    Raises ValueError naming the key and what it allows. The other sections are checked by the dataclasses
    their stages build."""
    require_set(cfg, f"dreamer.{name}")
    values = to_plain(cfg)
    allowed = RUN_KEYS[name]
    unknown = sorted(set(values) - set(allowed))
    missing = sorted(set(allowed) - {"family"} - set(values))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; allowed keys: {sorted(allowed)}")
    if missing:
        raise ValueError(f"missing config key(s) {missing}")
    for key, hint in (("seed", int), ("device", str)):
        if problem := type_error(values[key], hint, key):
            raise ValueError(problem)
    resolve_device(values["device"])
    build(SimConfig, values["sim"], "sim")
    if name == "train":
        build(EvalConfig, values["eval"], "eval")
        build(LoggerConfig, values["logger"], "logger")
    trace = values["trace"]
    build(TraceConfig, trace, "trace", ignore=("columns",) if trace.get("source") != "env" else ())
    if trace["source"] == "file":
        trace_columns(trace)  # the columns of a file trace


def resolve_device(device: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; else a torch device string, which for cuda must name a
    device this machine has. Raises ValueError naming `device` and the allowed forms."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device={device!r} is neither 'auto' nor a torch device string such as 'cpu', 'cuda', "
                         f"'cuda:1' or 'mps' ({error})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but this machine has no CUDA device; use device=cpu or device=auto")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device={device!r} but this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
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
