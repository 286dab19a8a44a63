"""JSONL traces: one JSON object per line, UTF-8; blank lines are skipped.

An optional first line holds the metadata; every field of it is optional:

    {"meta": {"name": str, "notes": str, "max_episode_steps": int | null,
              "observation_space": SPACE, "action_space": SPACE}}

    SPACE = {"type": "Discrete", "n": int} or {"type": "Box", "low": [...], "high": [...]}

JSON has no infinity, so infinite Box bounds are written as the strings "inf" and "-inf" (the
reader also accepts the non-standard tokens Infinity and -Infinity). Every other line is one
transition, in recording order:

    {"episode": int | str,         episode id; an episode's lines are contiguous
     "obs": [float, ...],          (O,) observation before the step
     "action": int | [float, ...], an int for a Discrete action space, (A,) numbers for a Box one
     "reward": float,
     "next_obs": [float, ...],     (O,) observation after the step
     "terminated": bool,
     "truncated": bool,
     "feedback": str,              optional: text feedback on this transition
     "info": {...}}                optional: the env's info dict

Only an episode's last line may be terminated or truncated. Numbers must be finite; actions must
lie in the action space. Without a meta line (or a space in it) the spaces are inferred from the
data, with a TraceWarning: obs -> Box(-inf, inf, (O,)); integer actions -> Discrete(max + 1);
list actions -> Box(per-dimension min, max of the data).

Bad input raises TraceError naming the file, line and field, e.g.
`run.jsonl:12: field "obs": expected a list of 4 numbers, got [0.1, 0.2]`. Unknown keys, and a
next_obs that differs from the next line's obs within an episode, give a TraceWarning.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from gymnasium import spaces

from dreamer.sim.contract import space_from_dict, space_to_dict
from dreamer.traces.trace import Trace, TraceError, TraceWarning, check_spaces, short

TRANSITION_KEYS = ("episode", "obs", "action", "reward", "next_obs", "terminated", "truncated")
OPTIONAL_KEYS = ("feedback", "info")
META_KEYS = ("name", "notes", "max_episode_steps", "observation_space", "action_space")
SPACE_FORMAT = '{"type": "Discrete", "n": int} or {"type": "Box", "low": [...], "high": [...]}'


def space_to_json(space: spaces.Space) -> dict:
    """`space_to_dict` with infinite bounds as the strings "inf" and "-inf"."""
    spec = space_to_dict(space)
    for key in ("low", "high") if "low" in spec else ():
        spec[key] = [x if math.isfinite(x) else ("inf" if x > 0 else "-inf") for x in spec[key]]
    return spec


def space_from_json(spec, where: str, field: str) -> spaces.Space:
    """Inverse of `space_to_json`; TraceError at `where` for anything else."""
    try:
        if spec.get("type") == "Box":
            bounds = {key: [float(x) if x in ("inf", "-inf") else x for x in spec[key]] for key in ("low", "high")}
            spec = {**spec, **bounds}
        return space_from_dict(spec)
    except (AttributeError, KeyError, TypeError, ValueError):
        raise TraceError(f"expected {SPACE_FORMAT}, got {short(spec)}", where, field) from None


def meta_to_dict(trace: Trace) -> dict:
    """The JSON-able metadata of a trace (see the module docstring)."""
    return {
        "name": trace.name,
        "notes": trace.notes,
        "max_episode_steps": trace.max_episode_steps,
        "observation_space": space_to_json(trace.observation_space),
        "action_space": space_to_json(trace.action_space),
    }


def meta_from_dict(meta, where: str) -> dict:
    """Metadata -> keyword arguments of `Trace` (spaces parsed and checked; the rest checked by Trace)."""
    if not isinstance(meta, dict):
        raise TraceError(f"expected an object with keys {list(META_KEYS)}, got {short(meta)}", where, "meta")
    warn_unknown(meta.keys() - set(META_KEYS), where)
    kwargs = {key: meta[key] for key in META_KEYS if key in meta}
    for key in ("observation_space", "action_space"):
        if key in kwargs:
            kwargs[key] = space_from_json(kwargs[key], where, key)
    try:
        check_spaces(kwargs.get("observation_space"), kwargs.get("action_space"))
    except TraceError as error:
        raise error.at(where) from None
    return kwargs


def warn_unknown(keys, where: str) -> None:
    if keys:
        warnings.warn(f"{where}: ignoring unknown keys {sorted(keys)}", TraceWarning, stacklevel=4)


def write_jsonl(trace: Trace, path: Path) -> None:
    """Write `trace` to `path` in the format above (meta line first)."""
    columns = zip(*(getattr(trace, key).tolist() for key in TRANSITION_KEYS))
    with open(path, "w", encoding="utf-8") as file:
        file.write(json.dumps({"meta": meta_to_dict(trace)}) + "\n")
        for row, values in enumerate(columns):
            record = dict(zip(TRANSITION_KEYS, values))
            record["episode"] = trace.episode_ids[record["episode"]]
            if row in trace.feedback:
                record["feedback"] = trace.feedback[row]
            if trace.info is not None:
                record["info"] = trace.info[row]
            file.write(json.dumps(record) + "\n")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank lines."""
    try:
        with open(path, encoding="utf-8") as file:
            yield from ((number, text) for number, text in enumerate(file, 1) if text.strip())
    except UnicodeDecodeError as error:
        raise TraceError(f"expected UTF-8 text ({error.reason} at byte {error.start})", str(path)) from None


def _is_number(x) -> bool:
    return type(x) in (int, float)


def _is_int(x) -> bool:
    return type(x) is int


def _numbers(n: int | None) -> tuple:
    """(check, description) of a list of n numbers (of any length > 0 when n is None)."""

    def check(value) -> bool:
        return isinstance(value, list) and len(value) == (n or len(value)) > 0 and all(map(_is_number, value))

    return check, f"a list of {n or 'one or more'} numbers"


def _take(record: dict, key: str, check, expected: str, where: str):
    if key not in record:
        raise TraceError(f"missing (expected {expected})", where, key)
    if not check(record[key]):
        raise TraceError(f"expected {expected}, got {short(record[key])}", where, key)
    return record[key]


def _infer_missing_spaces(meta: dict, obs: np.ndarray, action: np.ndarray, path: Path) -> None:
    """Add the spaces missing from `meta`, inferred from the data, with a TraceWarning."""
    inferred = {}
    if "observation_space" not in meta:
        inferred["observation_space"] = spaces.Box(-np.inf, np.inf, obs.shape[1:], np.float32)
    if "action_space" not in meta and action.ndim == 1:
        inferred["action_space"] = spaces.Discrete(max(int(action.max()) + 1, 1))
    elif "action_space" not in meta:  # NaN becomes an infinite bound; Trace's finiteness check names its line
        low = np.nan_to_num(action.min(0), nan=-np.inf).astype(np.float32)
        high = np.nan_to_num(action.max(0), nan=np.inf).astype(np.float32)
        inferred["action_space"] = spaces.Box(low, high, dtype=np.float32)
    if inferred:
        meta.update(inferred)
        found = ", ".join(f"{key}={space}" for key, space in inferred.items())
        warnings.warn(f"{path}: no meta line with spaces; inferred from the data: {found}", TraceWarning, stacklevel=4)


def read_jsonl(path: Path) -> Trace:
    """Read and validate a JSONL trace; see the module docstring for the format and its checks."""
    meta, meta_line = {}, None
    columns = {key: [] for key in TRANSITION_KEYS}
    lines, ids, feedback, infos, unknown = [], {}, {}, {}, set()
    obs_dim = act_dim = discrete = None
    for number, text in _lines(path):
        where = f"{path}:{number}"
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            raise TraceError(f"invalid JSON: {error.msg} (column {error.colno})", where) from None
        if not isinstance(record, dict):
            raise TraceError(f"expected a JSON object (the meta line or a transition), got {short(record)}", where)
        if "meta" in record:
            if lines or meta_line:
                raise TraceError("the meta line must be the file's first line", where, "meta")
            meta, meta_line = meta_from_dict(record["meta"], where), number
            warn_unknown(record.keys() - {"meta"}, where)
            obs_space, act_space = meta.get("observation_space"), meta.get("action_space")
            obs_dim = None if obs_space is None else obs_space.shape[0]
            if act_space is not None:
                discrete = isinstance(act_space, spaces.Discrete)
                act_dim = None if discrete else act_space.shape[0]
            continue
        new_keys = record.keys() - set(TRANSITION_KEYS + OPTIONAL_KEYS) - unknown
        warn_unknown(new_keys, where)
        unknown |= new_keys
        episode = _take(record, "episode", lambda v: type(v) in (int, str), "an integer or a string id", where)
        columns["episode"].append(ids.setdefault(str(episode), len(ids)))
        columns["obs"].append(_take(record, "obs", *_numbers(obs_dim), where))
        obs_dim = len(columns["obs"][-1])
        if discrete is None:
            discrete = type(record.get("action")) is int
        if discrete:
            columns["action"].append(_take(record, "action", _is_int, "an integer (Discrete action)", where))
        else:
            check, expected = _numbers(act_dim)
            columns["action"].append(_take(record, "action", check, f"{expected} (Box action)", where))
            act_dim = len(columns["action"][-1])
        columns["reward"].append(_take(record, "reward", _is_number, "a number", where))
        columns["next_obs"].append(_take(record, "next_obs", *_numbers(obs_dim), where))
        for key in ("terminated", "truncated"):
            columns[key].append(_take(record, key, lambda v: type(v) is bool, "true or false", where))
        if "feedback" in record:
            feedback[len(lines)] = _take(record, "feedback", lambda v: isinstance(v, str), "a string", where)
        if "info" in record:
            infos[len(lines)] = _take(record, "info", lambda v: isinstance(v, dict), "an object", where)
        lines.append(number)
    if not lines:
        raise TraceError("no transitions (expected at least one line with a transition)", str(path))

    arrays = {key: np.array(values, dtype=np.int64 if key == "episode" else None) for key, values in columns.items()}
    _infer_missing_spaces(meta, arrays["obs"], arrays["action"], path)
    try:
        trace = Trace(
            **arrays,
            episode_ids=list(ids),
            feedback=feedback,
            info=[infos.get(row, {}) for row in range(len(lines))] if infos else None,
            **meta,
        )
    except TraceError as error:
        line = meta_line if error.row is None else lines[error.row]
        raise error.at(f"{path}:{line}" if line else str(path)) from None

    same_episode = trace.episode[1:] == trace.episode[:-1]
    mismatch = np.flatnonzero(same_episode & (trace.next_obs[:-1] != trace.obs[1:]).any(1))
    if mismatch.size:
        warnings.warn(
            f'{path}:{lines[mismatch[0] + 1]}: field "obs": differs from the previous line\'s next_obs in the same '
            f"episode ({mismatch.size} such lines in the file)",
            TraceWarning,
            stacklevel=3,
        )
    return trace
