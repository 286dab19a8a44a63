"""Config sections (Hydra's or plain mappings) -> the typed dataclasses each stage takes, with errors that name
the key. Imports no Hydra and no stage, so that every library, the sandbox worker included, can use it cheaply."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch

T = TypeVar("T")
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the Hydra configs of `python -m dreamer.train`/`.write`


def to_plain(values: Any) -> Any:
    """An omegaconf DictConfig/ListConfig (resolved) or a mapping -> plain Python containers."""
    if type(values).__module__.startswith("omegaconf"):  # only a caller that has omegaconf loaded can pass one
        from omegaconf import OmegaConf
        return OmegaConf.to_container(values, resolve=True)
    return dict(values) if isinstance(values, Mapping) else values


def choose(options: Mapping[str, T], kind: Any, key: str) -> T:
    """`options[kind]` for a selector key such as `writer.kind`; ValueError naming `key` and the allowed kinds."""
    if not isinstance(kind, str) or kind not in options:
        raise ValueError(f"{key}={kind!r} is not one of {sorted(options)}")
    return options[kind]


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
        hint, args = hints[key], typing.get_args(hints[key])
        nested = [option for option in (args or (hint,)) if dataclasses.is_dataclass(option)]
        if typing.get_origin(hint) is dict and nested and isinstance(value, Mapping):  # dict[str, Config]
            values[key] = {name: build(nested[0], item, f"{where}.{key}.{name}") for name, item in value.items()}
        elif nested and isinstance(value, Mapping):  # a dataclass field, or an optional one (`Config | None`)
            values[key] = build(nested[0], value, f"{where}.{key}")
        elif problem := type_error(value, hint, f"{where}.{key}"):
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
