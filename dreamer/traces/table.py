"""Traces as tables (CSV and Parquet files): the column mapping `TableColumns`, and the reading
and writing the two formats share.

Our writers produce one row per transition, in recording order, with the columns

    episode                       episode id (text); an episode's rows are contiguous
    obs_0, ..., obs_{O-1}         observation before the step
    action | action_0, ...        one integer column for a Discrete action space, A number columns for a Box one
    reward
    next_obs_0, ..., ...          observation after the step
    terminated, truncated         true / false
    feedback                      text feedback on the transition (only when the trace has some)
    info                          the info dict as JSON text (only when the trace has info)

and the metadata as one JSON object: the JSONL meta object (see `dreamer.traces.jsonl`) plus
"episode_feedback": {"episode id": text}. Empty cells in feedback and info mean none.

`TableColumns` reads other layouts: other column names, no episode column, or `next_obs_columns=
"next_row"`, where each episode's rows are its observations in order, one row more than its
steps: transition t's next_obs is row t+1's obs, and the episode's last row holds only its final
observation (its other cells are ignored), as in Minari/D4RL exports. Without spaces in the
metadata or the columns they are inferred from the data, with a TraceWarning, as for JSONL; one
integer action column then means Discrete.

Reading streams record batches (pyarrow), converts each to numpy arrays and concatenates them at
the end (`TraceChunks`): peak memory is about the Trace plus its largest array. Errors name the
file, the row (a CSV line number, a Parquet row index), the field and its column, e.g.
`run.csv:12: field "reward" (column "r"): expected a number, got 'abc'`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from gymnasium import spaces

from dreamer.traces.jsonl import (
    episode_feedback_from_json,
    episode_feedback_to_json,
    infer_missing_spaces,
    meta_from_dict,
    meta_to_dict,
    space_from_json,
)
from dreamer.traces.trace import CHUNK_ROWS, Trace, TraceChunks, TraceError, check_spaces, short

NEXT_ROW = "next_row"
_FORMS = {  # field -> the forms its value may take
    "episode_column": ("name", "none"),
    "obs_columns": ("names", "none"),
    "next_obs_columns": ("names", NEXT_ROW, "none"),
    "action_column": ("name", "names"),
    "reward_column": ("name",),
    "terminated_column": ("name", "none"),
    "truncated_column": ("name", "none"),
    "feedback_column": ("name", "none"),
    "info_column": ("name", "none"),
}
_DESCRIBED = {"name": "a column name", "names": "a non-empty list of column names", "none": "None",
              NEXT_ROW: f'"{NEXT_ROW}"'}


def _form(value) -> str | None:
    if value is None:
        return "none"
    if isinstance(value, str) and value:
        return "name"
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return "names"
    return None


@dataclass(frozen=True)
class TableColumns:
    """Which columns of a CSV or Parquet file hold which Trace fields; the defaults are the layout
    our writers produce (see the module docstring). Built from the config section `trace.columns`."""

    episode_column: str | None = "episode"  # None: episodes end after each terminated or truncated row
    obs_columns: list[str] | None = None  # None: obs_0, obs_1, ... as far as the file has them
    next_obs_columns: list[str] | str | None = None  # None: next_obs_0, ...; "next_row": the next row's obs
    # one column: a Discrete action, or a Box action of size 1; a list: a Box action's columns. A
    # name the file lacks, with NAME_0, NAME_1, ... present, means those (our writer's Box actions)
    action_column: str | list[str] = "action"
    reward_column: str = "reward"
    terminated_column: str | None = "terminated"  # None: never terminated
    truncated_column: str | None = "truncated"  # None: never truncated
    feedback_column: str | None = "feedback"  # text, used when the file has the column
    info_column: str | None = "info"  # JSON object text, used when the file has the column
    observation_space: dict | None = None  # SPACE as in the JSONL meta line; overrides the file's
    action_space: dict | None = None  # SPACE; overrides the file's
    max_episode_steps: int | None = None  # overrides the file's

    def __post_init__(self):
        for name, forms in _FORMS.items():
            value = getattr(self, name)
            form = NEXT_ROW if name == "next_obs_columns" and value == NEXT_ROW else _form(value)
            if form not in forms:
                raise ValueError(f"{name} must be {' or '.join(_DESCRIBED[f] for f in forms)}, got {value!r}")
        if isinstance(self.obs_columns, list) and isinstance(self.next_obs_columns, list) and (
            len(self.obs_columns) != len(self.next_obs_columns)
        ):
            raise ValueError(f"next_obs_columns must name as many columns as obs_columns ({len(self.obs_columns)}), "
                             f"got {self.next_obs_columns!r}")
        if self.next_obs_columns == NEXT_ROW and self.episode_column is None:
            raise ValueError(f'next_obs_columns="{NEXT_ROW}" needs an episode_column: without episode ids the rows '
                             "that hold only an episode's final observation cannot be told apart")
        owner: dict[str, str] = {}
        for name in _FORMS:
            value = getattr(self, name)
            if value == NEXT_ROW and name == "next_obs_columns":
                continue
            for column in [value] if isinstance(value, str) else value or []:
                if column in owner:
                    raise ValueError(f"column {column!r} is mapped twice: by {owner[column]} and by {name}")
                owner[column] = name
        horizon = self.max_episode_steps
        if horizon is not None and not (type(horizon) is int and horizon > 0):
            raise ValueError(f"max_episode_steps must be None or a positive int, got {horizon!r}")
        try:
            self.overrides()
        except TraceError as error:
            raise ValueError(f"{error.field}: {error.problem}") from None

    def overrides(self) -> dict:
        """The Trace keyword arguments set here (spaces parsed), which override the file's metadata."""
        found = {key: space_from_json(getattr(self, key), "", key)
                 for key in ("observation_space", "action_space") if getattr(self, key) is not None}
        check_spaces(found.get("observation_space"), found.get("action_space"))
        return found | ({} if self.max_episode_steps is None else {"max_episode_steps": self.max_episode_steps})


@dataclass(frozen=True)
class Layout:
    """A file's column(s) for each field: `TableColumns` resolved against the file's column names."""

    episode: str | None
    obs: list[str]
    next_obs: list[str] | None  # None: the next row's obs
    action: list[str]
    reward: str
    terminated: str | None
    truncated: str | None
    feedback: str | None
    info: str | None

    @staticmethod
    def resolve(columns: TableColumns, names: list[str], where: str) -> Layout:
        """The layout of a file with column `names`; TraceError at `where` for missing or duplicate columns."""
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise TraceError(f"duplicate column names {duplicates}", where)
        present = set(names)

        def numbered(prefix: str) -> list[str]:
            found = []
            while f"{prefix}_{len(found)}" in present:
                found.append(f"{prefix}_{len(found)}")
            return found

        obs = columns.obs_columns or numbered("obs") or ["obs_0"]
        next_obs = columns.next_obs_columns
        if next_obs is None:
            next_obs = [f"next_obs_{i}" for i in range(len(obs))]
        action = columns.action_column
        if isinstance(action, str):
            action = [action] if action in present or not numbered(action) else numbered(action)
        layout = Layout(
            episode=columns.episode_column,
            obs=obs,
            next_obs=None if next_obs == NEXT_ROW else next_obs,
            action=action,
            reward=columns.reward_column,
            terminated=columns.terminated_column,
            truncated=columns.truncated_column,
            feedback=columns.feedback_column if columns.feedback_column in present else None,
            info=columns.info_column if columns.info_column in present else None,
        )
        missing = [f'"{column}" (field "{field}")' for field in ("episode", "obs", "action", "reward", "next_obs",
                                                                "terminated", "truncated")
                   for column in layout.columns(field) if column not in present]
        if missing:
            raise TraceError(f"missing columns {', '.join(missing)}; the file has columns {names}", where)
        if len(layout.next_obs or obs) != len(obs):
            raise TraceError(f"expected as many columns as obs has ({len(obs)}), got {len(layout.next_obs)}",
                             where, "next_obs", columns=tuple(layout.next_obs))
        return layout

    def columns(self, field: str | None) -> tuple[str, ...]:
        """The columns that hold `field` (none for fields that no column holds)."""
        found = {
            "episode": [self.episode],
            "obs": self.obs,
            "next_obs": self.obs if self.next_obs is None else self.next_obs,
            "action": self.action,
            "reward": [self.reward],
            "terminated": [self.terminated],
            "truncated": [self.truncated],
            "feedback": [self.feedback],
            "info": [self.info],
        }.get(field, [])
        return tuple(column for column in found if column is not None)

    def names(self) -> list[str]:
        """Every column the layout reads, each once."""
        fields = ("episode", "obs", "next_obs", "action", "reward", "terminated", "truncated", "feedback", "info")
        return list(dict.fromkeys(column for field in fields for column in self.columns(field)))


def _first_failure(array: pa.Array, convert: Callable[[pa.Array], object]) -> int:
    """The index of the first element of `array` that `convert` fails on (it fails on the whole)."""
    low, high = 0, len(array)
    while high - low > 1:
        middle = (low + high) // 2
        try:
            convert(array.slice(low, middle - low))
            low = middle
        except pa.ArrowException:
            high = middle
    return low


def _integral(array: pa.Array) -> bool:
    """Whether `array` holds integers: an integer column, or text that parses as integers."""
    if pa.types.is_floating(array.type):
        return False
    try:
        pc.cast(array, pa.int64())
        return True
    except pa.ArrowException:
        return False


class TableReader:
    """One streaming read of a table file (see the module docstring)."""

    def __init__(self, path: Path, layout: Layout, meta: dict | None, meta_where: str, columns: TableColumns,
                 locate: Callable[[int], str], source: str):
        """`meta`: the file's metadata object, read at `meta_where` (None: none); `locate(row)`: where a
        data row is, for errors; `source`: what holds the metadata in this format, for the spaces warning."""
        self.path, self.layout, self.locate, self.source = path, layout, locate, source
        if not isinstance(meta, dict | None):
            raise TraceError(f"expected a JSON object, got {short(meta)}", meta_where, "meta")
        meta = dict(meta or {})
        self.episode_feedback, self.meta_where = meta.pop("episode_feedback", {}), meta_where
        self.meta = meta_from_dict(meta, meta_where) | columns.overrides()
        self.chunks = TraceChunks()
        self.first = 0  # the file row of the first row of the next table `add` gets
        self.ids: dict[str, int] = {}  # episode id -> index
        self.previous_episode = -1  # next_row: the episode of the last row added
        self.last_episode, self.after_done = 0, False  # no episode column: the current episode, and whether it ended
        self.feedback: dict[int, str] = {}
        self.infos: dict[int, dict] = {}
        obs_space, action_space = self.meta.get("observation_space"), self.meta.get("action_space")
        if obs_space is not None and obs_space.shape[0] != len(layout.obs):
            raise TraceError(f"expected {obs_space.shape[0]} columns for the observation space {obs_space}, got "
                             f"{len(layout.obs)}", str(path), "obs", columns=tuple(layout.obs))
        self.discrete = None if action_space is None else isinstance(action_space, spaces.Discrete)
        action_dim = 1 if self.discrete else None if action_space is None else action_space.shape[0]
        if action_dim is not None and action_dim != len(layout.action):
            raise TraceError(f"expected {action_dim} columns for the action space {action_space}, got "
                             f"{len(layout.action)}", str(path), "action", columns=tuple(layout.action))

    def read(self, batches: Iterable[pa.RecordBatch]) -> Trace:
        carry = None
        for batch in batches:
            if batch.num_rows:
                table = pa.Table.from_batches([batch])
                carry = self.add(table if carry is None else pa.concat_tables([carry, table]), final=False)
        if carry is not None:
            self.add(carry, final=True)
        if not self.chunks.rows:
            raise TraceError("no transitions (expected at least one data row)", str(self.path))

        arrays = self.chunks.concatenate()
        infer_missing_spaces(self.meta, arrays["obs"], arrays["action"], str(self.path), self.source)
        ids = list(self.ids) if self.layout.episode else [str(i) for i in range(self.last_episode + 1)]
        episode_feedback = episode_feedback_from_json(self.episode_feedback, ids, self.meta_where)
        n = self.chunks.rows
        try:
            return self.chunks.trace(
                arrays,
                episode_ids=ids,
                feedback=self.feedback,
                info=[self.infos.get(row, {}) for row in range(n)] if self.infos else None,
                episode_feedback=episode_feedback,
                **self.meta,
            )
        except TraceError as error:
            columns = self.layout.columns(error.field)
            if error.row is None:
                raise error.at(str(self.path), columns) from None
            # next_row: each earlier episode has one more row than transitions
            row = error.row + (int(arrays["episode"][error.row]) if self.layout.next_obs is None else 0)
            raise error.at(self.locate(row), columns) from None

    def add(self, table: pa.Table, final: bool) -> pa.Table | None:
        """Convert the rows of `table` (from file row `self.first` on) to a chunk of transitions.

        Returns the rows left for the next table: with next_row, the last row unless `final`.
        """
        layout, n = self.layout, table.num_rows
        if layout.next_obs is None:
            episode = self.episode_index(table, np.arange(n))
            observations = self.floats(table, "obs", layout.obs, np.arange(n))
            processed = n if final else n - 1  # the rows whose next row, if any, is in `table`
            has_next = np.append(episode[1:] == episode[:-1], False)[:processed]
            starts = episode[:processed] != np.append(self.previous_episode, episode[:processed - 1])
            single = np.flatnonzero(starts & ~has_next)
            if single.size:
                episode_id = list(self.ids)[episode[single[0]]]
                raise TraceError(f'episode {episode_id!r} has a single row, but with next_obs_columns="{NEXT_ROW}" an '
                                 "episode's last row holds only its final observation, after the rows of its steps",
                                 self.locate(self.first + int(single[0])), "episode", columns=(layout.episode,))
            rows = np.flatnonzero(has_next)
            obs, next_obs = observations[rows], observations[rows + 1]
            if processed:
                self.previous_episode = episode[processed - 1]
            carry = None if final else table.slice(n - 1)
            table = table.take(rows)
        else:
            processed, rows, carry = n, np.arange(n), None
            obs = self.floats(table, "obs", layout.obs, rows)
            next_obs = self.floats(table, "next_obs", layout.next_obs, rows)
        if rows.size:
            self.add_transitions(table, rows, obs, next_obs, episode[rows] if layout.next_obs is None else None)
        self.first += processed
        return carry

    def add_transitions(self, table: pa.Table, rows: np.ndarray, obs: np.ndarray, next_obs: np.ndarray,
                        episode: np.ndarray | None) -> None:
        """Add the transitions in `table` (table row i is the file row self.first + rows[i])."""
        layout = self.layout
        terminated = self.flags(table, "terminated", layout.terminated, rows)
        truncated = self.flags(table, "truncated", layout.truncated, rows)
        if layout.episode is None:  # a new episode after each terminated or truncated row
            done = terminated | truncated
            episode = self.last_episode + np.cumsum(np.append(self.after_done, done[:-1]))
            self.last_episode, self.after_done = int(episode[-1]), bool(done[-1])
        elif episode is None:
            episode = self.episode_index(table, rows)
        if self.discrete is None:  # no action space: one integer column means Discrete
            self.discrete = len(layout.action) == 1 and _integral(table.column(layout.action[0]).combine_chunks())
        if self.discrete:
            action = self.values(table, "action", layout.action[0], pa.int64(), "an integer (Discrete action)", rows)
        else:
            action = self.floats(table, "action", layout.action, rows)
        offset = self.chunks.rows
        if layout.feedback is not None:
            positions, texts = self.texts(table, "feedback", layout.feedback, rows)
            self.feedback.update(zip((offset + positions).tolist(), texts))
        if layout.info is not None:
            positions, texts = self.texts(table, "info", layout.info, rows)
            for position, text in zip(positions.tolist(), texts):
                try:
                    info = json.loads(text)
                except json.JSONDecodeError:
                    info = None
                if not isinstance(info, dict):
                    self.fail(f"expected a JSON object, got {short(text)}", "info", layout.info, rows[position])
                self.infos[offset + position] = info
        reward = self.floats(table, "reward", [layout.reward], rows)[:, 0]
        self.chunks.add(obs=obs, action=action, reward=reward, next_obs=next_obs, terminated=terminated,
                        truncated=truncated, episode=episode)

    def fail(self, problem: str, field: str, column: str, row: int) -> NoReturn:
        """Raise TraceError at `row` of the table being added."""
        raise TraceError(problem, self.locate(self.first + int(row)), field, columns=(column,))

    def cast(self, table: pa.Table, field: str, column: str, to: pa.DataType, expected: str, rows: np.ndarray,
             safe: bool = True) -> pa.Array:
        """Column `column` of `table` cast to `to`, or TraceError at the first cell that does not cast."""
        array = table.column(column).combine_chunks()
        try:
            return pc.cast(array, to, safe=safe)
        except pa.ArrowException:
            bad = _first_failure(array, lambda part: pc.cast(part, to, safe=safe))
            self.fail(f"expected {expected}, got {short(array[bad].as_py())}", field, column, rows[bad])

    def values(self, table: pa.Table, field: str, column: str, to: pa.DataType, expected: str,
               rows: np.ndarray, safe: bool = True) -> np.ndarray:
        """`cast` as a numpy array; TraceError at the first empty cell."""
        array = self.filled(self.cast(table, field, column, to, expected, rows, safe), field, column, expected, rows)
        return np.array(array.to_numpy(zero_copy_only=False))  # a copy: the Arrow batch is freed

    def filled(self, array: pa.Array, field: str, column: str, expected: str, rows: np.ndarray) -> pa.Array:
        """`array`, or TraceError at its first empty cell."""
        if array.null_count:
            first = pc.index(array.is_null(), True).as_py()
            self.fail(f"expected {expected}, got an empty cell", field, column, rows[first])
        return array

    def floats(self, table: pa.Table, field: str, columns: list[str], rows: np.ndarray) -> np.ndarray:
        """(K, len(columns)) float32 of the number columns (float casts round, as numpy's do)."""
        return np.column_stack([self.values(table, field, column, pa.float32(), "a number", rows, safe=False)
                                for column in columns])

    def flags(self, table: pa.Table, field: str, column: str | None, rows: np.ndarray) -> np.ndarray:
        """(K,) bool of a true/false column (no column: all false)."""
        if column is None:
            return np.zeros(len(rows), bool)
        return self.values(table, field, column, pa.bool_(), "true or false", rows)

    def texts(self, table: pa.Table, field: str, column: str, rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """(positions, texts) of the non-empty cells of a text column."""
        array = self.cast(table, field, column, pa.string(), "text", rows)
        present = pc.fill_null(pc.greater(pc.utf8_length(array), 0), False)
        positions = np.flatnonzero(present.to_numpy(zero_copy_only=False))
        return positions, array.take(positions).to_pylist()

    def episode_index(self, table: pa.Table, rows: np.ndarray) -> np.ndarray:
        """(K,) int64 episode indices (in order of first appearance) of the episode id column."""
        column = self.layout.episode
        ids = self.cast(table, "episode", column, pa.string(), "an episode id", rows)
        encoded = pc.dictionary_encode(self.filled(ids, "episode", column, "an episode id", rows))
        index = [self.ids.setdefault(episode_id, len(self.ids)) for episode_id in encoded.dictionary.to_pylist()]
        return np.array(index, np.int64)[encoded.indices.to_numpy(zero_copy_only=False)]


def table_meta(trace: Trace) -> dict:
    """The metadata object of a table file (see the module docstring)."""
    return {**meta_to_dict(trace), "episode_feedback": episode_feedback_to_json(trace)}


def canonical_tables(trace: Trace) -> Iterator[pa.Table]:
    """`trace` in our writers' layout, CHUNK_ROWS rows at a time."""
    ids = np.array(trace.episode_ids, dtype=object)
    discrete = isinstance(trace.action_space, spaces.Discrete)
    for start in range(0, len(trace), CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        columns = {"episode": pa.array(ids[trace.episode[rows]], pa.string())}
        columns |= {f"obs_{i}": np.ascontiguousarray(column) for i, column in enumerate(trace.obs[rows].T)}
        if discrete:
            columns["action"] = trace.action[rows]
        else:
            columns |= {f"action_{i}": np.ascontiguousarray(column) for i, column in enumerate(trace.action[rows].T)}
        columns["reward"] = trace.reward[rows]
        columns |= {f"next_obs_{i}": np.ascontiguousarray(column) for i, column in enumerate(trace.next_obs[rows].T)}
        columns |= {"terminated": trace.terminated[rows], "truncated": trace.truncated[rows]}
        if trace.feedback:
            columns["feedback"] = pa.array([trace.feedback.get(row) for row in range(*rows.indices(len(trace)))],
                                           pa.string())
        if trace.info is not None:
            columns["info"] = pa.array([json.dumps(info) for info in trace.info[rows]], pa.string())
        yield pa.table(columns)
