"""JSONL traces: one JSON object per line, UTF-8; blank lines are skipped.

An optional first line holds the metadata; every field of it is optional:

    {"meta": {"name": str, "notes": str, "max_episode_steps": int | null,
              "observation_space": SPACE, "action_space": SPACE}}

    SPACE = {"type": "Discrete", "n": int} or {"type": "Box", "low": [...], "high": [...]}

JSON has no infinity, so infinite Box bounds are written as the strings "inf" and "-inf" (the
reader also accepts the non-standard tokens Infinity and -Infinity). The other lines are
transitions, in recording order,

    {"episode": int | str,         episode id; an episode's lines are contiguous
     "obs": [float, ...],          (O,) observation before the step
     "action": int | [float, ...], an int for a Discrete action space, (A,) numbers for a Box one
     "reward": float,
     "next_obs": [float, ...],     (O,) observation after the step
     "terminated": bool,
     "truncated": bool,
     "feedback": str,              optional: text feedback on this transition
     "info": {...}}                optional: the env's info dict

and feedback records, which may come anywhere after their episode's first transition (so a
recorder can append them later):

    {"episode": int | str, "feedback": str}               feedback on the whole episode
    {"episode": int | str, "step": int, "feedback": str}  feedback on its step `step` (0-based)

Several feedbacks on one step (inline or records) or one episode are joined with newlines, in file
order. `write_jsonl` writes step feedback inline and episode feedback as records after the
episode's last transition.

Only an episode's last line may be terminated or truncated. Numbers must be finite; actions must
lie in the action space. Without a meta line (or a space in it) the spaces are inferred from the
data, with a TraceWarning: obs -> Box(-inf, inf, (O,)); integer actions -> Discrete(max + 1);
list actions -> Box(per-dimension min, max of the data).

Bad input raises TraceError naming the file, line and field, e.g.
`run.jsonl:12: field "obs": expected a list of 4 numbers, got [0.1, 0.2]`. Unknown keys, and a
next_obs that differs from the next line's obs within an episode, give a TraceWarning.

The reader streams: it parses CHUNK_ROWS lines at a time into arrays (`TraceChunks`), so its peak
memory is about the loaded Trace plus its largest array, and it takes the summary on the way.
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
from dreamer.traces.trace import CHUNK_ROWS, Trace, TraceChunks, TraceError, TraceWarning, check_spaces, short

TRANSITION_KEYS = ("episode", "obs", "action", "reward", "next_obs", "terminated", "truncated")
OPTIONAL_KEYS = ("feedback", "info")
KNOWN_KEYS = frozenset(TRANSITION_KEYS + OPTIONAL_KEYS)
FEEDBACK_KEYS = frozenset(("episode", "step", "feedback"))  # a feedback record's keys
NUMBER_TYPES = frozenset((int, float))  # JSON numbers (not bools)
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


def episode_feedback_to_json(trace: Trace) -> dict[str, str]:
    """The episode feedback keyed by episode id, for a metadata object."""
    return {trace.episode_ids[episode]: text for episode, text in trace.episode_feedback.items()}


def episode_feedback_from_json(value, ids: list[str], where: str) -> dict[int, str]:
    """Inverse of `episode_feedback_to_json` given the episode ids; TraceError at `where` otherwise."""
    if not (isinstance(value, dict) and all(isinstance(text, str) for text in value.values())):
        raise TraceError(f'expected {{"episode id": text}}, got {short(value)}', where, "episode_feedback")
    index = {episode_id: i for i, episode_id in enumerate(ids)}
    unknown = sorted(value.keys() - index.keys())
    if unknown:
        raise TraceError(f"unknown episode ids {short(unknown)} (the trace has {short(ids)})", where,
                         "episode_feedback")
    return {index[episode_id]: text for episode_id, text in value.items()}


def warn_unknown(keys, where: str) -> None:
    if keys:
        warnings.warn(f"{where}: ignoring unknown keys {sorted(keys)}", TraceWarning, stacklevel=4)


def feedback_line(episode_id: str, text: str, step: int | None = None) -> str:
    """A feedback record on episode `episode_id`, or on its step `step` (see the module docstring)."""
    return json.dumps({"episode": episode_id, **({} if step is None else {"step": step}), "feedback": text}) + "\n"


def transition_lines(trace: Trace) -> Iterator[str]:
    """The lines of `trace` after the meta line: its transitions, with each episode's feedback
    record after its last transition."""
    last_row = (np.append(trace.episode_starts()[1:], len(trace)) - 1).tolist()  # (E,)
    for start in range(0, len(trace), CHUNK_ROWS):
        columns = zip(*(getattr(trace, key)[start:start + CHUNK_ROWS].tolist() for key in TRANSITION_KEYS))
        for row, values in enumerate(columns, start):
            record = dict(zip(TRANSITION_KEYS, values))
            episode = record["episode"]
            record["episode"] = trace.episode_ids[episode]
            if row in trace.feedback:
                record["feedback"] = trace.feedback[row]
            if trace.info is not None:
                record["info"] = trace.info[row]
            yield json.dumps(record) + "\n"
            if row == last_row[episode] and episode in trace.episode_feedback:
                yield feedback_line(trace.episode_ids[episode], trace.episode_feedback[episode])


def meta_line(trace: Trace) -> str:
    return json.dumps({"meta": meta_to_dict(trace)}) + "\n"


def write_jsonl(trace: Trace, path: Path) -> None:
    """Write `trace` to `path` in the format above (meta line first)."""
    with open(path, "w", encoding="utf-8") as file:
        file.write(meta_line(trace))
        file.writelines(transition_lines(trace))


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank lines."""
    try:
        with open(path, encoding="utf-8") as file:
            yield from ((number, text) for number, text in enumerate(file, 1) if text.strip())
    except UnicodeDecodeError as error:
        raise TraceError(f"expected UTF-8 text ({error.reason} at byte {error.start})", str(path)) from None


def _is_number(x) -> bool:
    return type(x) in NUMBER_TYPES


def _is_int(x) -> bool:
    return type(x) is int


def _is_int64(x) -> bool:
    return _is_int(x) and -(2**63) <= x < 2**63


def _is_numbers(value, n: int | None) -> bool:
    """Whether `value` is a list of n numbers (of any length > 0 when n is None)."""
    return type(value) is list and len(value) == (n or len(value)) > 0 and set(map(type, value)) <= NUMBER_TYPES


def _numbers(n: int | None) -> tuple:
    """(check, description) of a list of n numbers (of any length > 0 when n is None)."""
    return (lambda value: _is_numbers(value, n)), f"a list of {n or 'one or more'} numbers"


def _take(record: dict, key: str, check, expected: str, where: str):
    if key not in record:
        raise TraceError(f"missing (expected {expected})", where, key)
    if not check(record[key]):
        raise TraceError(f"expected {expected}, got {short(record[key])}", where, key)
    return record[key]


def infer_missing_spaces(meta: dict, obs: np.ndarray, action: np.ndarray, where: str,
                         source: str = "meta line") -> None:
    """Add the spaces missing from `meta`, inferred from the data, with a TraceWarning that says
    the file's `source` of metadata had no spaces."""
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
        warnings.warn(f"{where}: no {source} with spaces; inferred from the data: {found}", TraceWarning, stacklevel=5)


def _joined(parts: list[tuple[int, int, str]]) -> dict[int, str]:
    """{key: its texts joined with newlines in line order} of (line, key, text) parts."""
    joined: dict[int, str] = {}
    for _, key, text in sorted(parts, key=lambda part: part[0]):
        joined[key] = text if key not in joined else joined[key] + "\n" + text
    return joined


class _Reader:
    """One streaming read of a JSONL trace (see `read_jsonl`)."""

    def __init__(self, path: Path):
        self.path = path
        self.meta, self.meta_line = {}, None
        self.chunks = TraceChunks()
        self.pending: dict[str, list] = {key: [] for key in TRANSITION_KEYS}  # the chunk being parsed
        self.numbers: list[int] = []  # its line numbers
        self.line_parts: list[np.ndarray] = []  # line numbers of the chunks added
        self.ids: dict[str, int] = {}  # episode id -> index
        self.inline: list[tuple[int, int, str]] = []  # (line, row, text) of the transitions' feedback
        self.records: list[tuple[int, int, int | None, str]] = []  # (line, episode, step or None, text)
        self.infos: dict[int, dict] = {}
        self.unknown: set[str] = set()
        self.obs_dim = self.act_dim = self.discrete = None

    def read(self) -> Trace:
        for number, text in _lines(self.path):
            where = f"{self.path}:{number}"
            text = text.rstrip("\r\n")  # else an error at the end of the line is placed at column 1 of the next
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                end = ", the end of the line: is it cut short?" if error.pos >= len(text.rstrip()) else ""
                raise TraceError(f"invalid JSON: {error.msg} (column {error.colno}{end})", where) from None
            if not isinstance(record, dict):
                raise TraceError(f"expected a JSON object (the meta line, a transition or a feedback record), "
                                 f"got {short(record)}", where)
            if "meta" in record:
                self.read_meta(record, where, number)
            elif record.keys() <= FEEDBACK_KEYS and ("feedback" in record or "step" in record):
                self.read_feedback(record, where, number)
            else:
                self.read_transition(record, where, number)
        self.add_chunk()
        if not self.chunks.rows:
            raise TraceError("no transitions (expected at least one line with a transition)", str(self.path))

        arrays = self.chunks.concatenate()
        infer_missing_spaces(self.meta, arrays["obs"], arrays["action"], str(self.path))
        lines = np.concatenate(self.line_parts)
        n = len(lines)
        try:
            trace = self.chunks.trace(
                arrays,
                episode_ids=list(self.ids),
                info=[self.infos.get(row, {}) for row in range(n)] if self.infos else None,
                **self.meta,
            )
        except TraceError as error:
            line = self.meta_line if error.row is None else lines[error.row]
            raise error.at(f"{self.path}:{line}" if line else str(self.path)) from None
        trace.feedback, trace.episode_feedback = self.feedback(trace)  # valid by construction

        same_episode = trace.episode[1:] == trace.episode[:-1]
        mismatch = np.flatnonzero(same_episode & (trace.next_obs[:-1] != trace.obs[1:]).any(1))
        if mismatch.size:
            warnings.warn(
                f'{self.path}:{lines[mismatch[0] + 1]}: field "obs": differs from the previous line\'s next_obs in '
                f"the same episode ({mismatch.size} such lines in the file)",
                TraceWarning,
                stacklevel=4,
            )
        return trace

    def read_meta(self, record: dict, where: str, number: int) -> None:
        if self.chunks.rows or self.numbers or self.meta_line:
            raise TraceError("the meta line must be the file's first line", where, "meta")
        self.meta, self.meta_line = meta_from_dict(record["meta"], where), number
        warn_unknown(record.keys() - {"meta"}, where)
        obs_space, act_space = self.meta.get("observation_space"), self.meta.get("action_space")
        self.obs_dim = None if obs_space is None else obs_space.shape[0]
        if act_space is not None:
            self.discrete = isinstance(act_space, spaces.Discrete)
            self.act_dim = None if self.discrete else act_space.shape[0]

    def read_feedback(self, record: dict, where: str, number: int) -> None:
        episode = _take(record, "episode", lambda v: type(v) in (int, str), "an integer or a string id", where)
        text = _take(record, "feedback", lambda v: isinstance(v, str), "a string", where)
        step = None
        if "step" in record:
            step = _take(record, "step", lambda v: _is_int(v) and v >= 0, "an integer >= 0 (a step of the episode)",
                         where)
        if str(episode) not in self.ids:
            raise TraceError(f"unknown episode {short(episode)} (a feedback record must come after the episode's "
                             f"first transition)", where, "episode")
        self.records.append((number, self.ids[str(episode)], step, text))

    def read_transition(self, record: dict, where: str, number: int) -> None:
        new_keys = record.keys() - KNOWN_KEYS - self.unknown
        if new_keys:
            warn_unknown(new_keys, where)
            self.unknown |= new_keys
        if not self.fits(record):
            self.check(record, where)
        columns, row = self.pending, self.chunks.rows + len(self.numbers)
        columns["episode"].append(self.ids.setdefault(str(record["episode"]), len(self.ids)))
        for key in TRANSITION_KEYS[1:]:
            columns[key].append(record[key])
        if "feedback" in record:
            text = _take(record, "feedback", lambda v: isinstance(v, str), "a string", where)
            self.inline.append((number, row, text))
        if "info" in record:
            self.infos[row] = _take(record, "info", lambda v: isinstance(v, dict), "an object", where)
        self.numbers.append(number)
        if len(self.numbers) == CHUNK_ROWS:
            self.add_chunk()

    def fits(self, record: dict) -> bool:
        """Whether `record` is a valid transition with the dimensions seen so far: the common case, checked fast."""
        action = record.get("action")
        return (
            type(record.get("episode")) in (int, str)
            and _is_numbers(record.get("obs"), self.obs_dim)
            and (_is_int64(action) if self.discrete else self.discrete is False and _is_numbers(action, self.act_dim))
            and _is_number(record.get("reward"))
            and _is_numbers(record.get("next_obs"), self.obs_dim)
            and type(record.get("terminated")) is bool
            and type(record.get("truncated")) is bool
        )

    def check(self, record: dict, where: str) -> None:
        """Check `record`'s transition fields in order (TraceError at the first bad one); learn the dimensions."""
        _take(record, "episode", lambda v: type(v) in (int, str), "an integer or a string id", where)
        self.obs_dim = len(_take(record, "obs", *_numbers(self.obs_dim), where))
        if self.discrete is None:
            self.discrete = type(record.get("action")) is int
        if self.discrete:  # the range of the space is Trace's check
            _take(record, "action", _is_int64, "an integer (Discrete action)", where)
        else:
            check, expected = _numbers(self.act_dim)
            self.act_dim = len(_take(record, "action", check, f"{expected} (Box action)", where))
        _take(record, "reward", _is_number, "a number", where)
        _take(record, "next_obs", *_numbers(self.obs_dim), where)
        for key in ("terminated", "truncated"):
            _take(record, key, lambda v: type(v) is bool, "true or false", where)

    def add_chunk(self) -> None:
        """Turn the parsed lines into arrays and hand them to `self.chunks`."""
        if not self.numbers:
            return
        dtypes = dict(episode=np.int64, terminated=np.bool_, truncated=np.bool_,
                      action=np.int64 if self.discrete else np.float32)
        self.chunks.add(**{key: np.array(values, dtype=dtypes.get(key, np.float32))
                           for key, values in self.pending.items()})
        self.line_parts.append(np.array(self.numbers, dtype=np.int64))
        for values in self.pending.values():
            values.clear()
        self.numbers.clear()

    def feedback(self, trace: Trace) -> tuple[dict[int, str], dict[int, str]]:
        """(step feedback, episode feedback) from the inline texts and the feedback records."""
        starts = trace.episode_starts()
        lengths = np.diff(np.append(starts, len(trace)))
        steps, episodes = list(self.inline), []
        for line, episode, step, text in self.records:
            if step is None:
                episodes.append((line, episode, text))
            elif step < lengths[episode]:
                steps.append((line, int(starts[episode]) + step, text))
            else:
                raise TraceError(f"expected a step in 0..{lengths[episode] - 1} of episode "
                                 f"{trace.episode_ids[episode]!r}, got {step}", f"{self.path}:{line}", "step")
        return _joined(steps), _joined(episodes)


def read_jsonl(path: Path) -> Trace:
    """Read and validate a JSONL trace; see the module docstring for the format and its checks."""
    return _Reader(path).read()
