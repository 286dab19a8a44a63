"""Trace formats: round trips of every format (JSONL, NPZ, CSV, Parquet, Minari), episode feedback,
JSONL feedback records, the CSV/Parquet column mapping, bad files, the streamed summary and the
memory a 1M-transition read takes."""

import json
import tracemalloc
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from gymnasium import spaces

from dreamer.config import build
from dreamer.traces import TableColumns, Trace, TraceError, TraceWarning, collect_trace, load_trace, save_trace
from dreamer.traces.trace import ARRAYS, SummaryAccumulator

SUFFIXES = [".jsonl", ".npz", ".csv", ".parquet"]
TEXTS = ["too fast", "NA", 'a "quoted", comma', "two\nlines", "ünïcode ✓", "  spaces  "]


def random_trace(seed: int, discrete: bool, episodes: int = 7, max_length: int = 40) -> Trace:
    """Episodes of random lengths whose next_obs is the next obs; infinite bounds, odd ids, feedback,
    episode feedback and info dicts (some empty)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_length, episodes)
    scale = np.array([1.0, 1e3, 1e-3], np.float32)
    offset = np.array([0.0, 0.0, 1e4], np.float32)  # a large mean with a small spread
    obs, next_obs = [], []
    for length in lengths:
        sequence = rng.standard_normal((length + 1, 3)).astype(np.float32) * scale + offset
        obs.append(sequence[:-1])
        next_obs.append(sequence[1:])
    n = int(lengths.sum())
    ends = np.cumsum(lengths) - 1
    terminated, truncated = np.zeros(n, bool), np.zeros(n, bool)
    ending = rng.integers(0, 3, episodes)  # terminated, truncated, or neither (the recording stopped)
    terminated[ends[ending == 0]] = True
    truncated[ends[ending == 1]] = True
    if discrete:
        action_space, action = spaces.Discrete(4), rng.integers(0, 4, n)
    else:
        action_space = spaces.Box(np.array([-1, -np.inf], np.float32), np.array([1, np.inf], np.float32))
        action = np.column_stack([rng.uniform(-1, 1, n), rng.standard_normal(n) * 50]).astype(np.float32)
    ids = ["ep 0", "7", "a,b", 'q"uote', "ü", "-3", "null"] + [f"e{i}" for i in range(7, episodes)]
    return Trace(
        obs=np.concatenate(obs),
        action=action,
        reward=rng.standard_normal(n).astype(np.float32),
        next_obs=np.concatenate(next_obs),
        terminated=terminated,
        truncated=truncated,
        episode=np.repeat(np.arange(episodes), lengths),
        episode_ids=ids[:episodes],
        observation_space=spaces.Box(np.array([-np.inf, -5, 0], np.float32), np.array([np.inf, 5, np.inf], np.float32)),
        action_space=action_space,
        name=f"random {seed}",
        notes="notes with\na newline",
        max_episode_steps=50,
        feedback={int(row): TEXTS[i % len(TEXTS)] for i, row in enumerate(rng.choice(n, 5, replace=False))},
        episode_feedback={0: "first episode", episodes - 1: "two\nlines"},
        info=[{"step": i, "nested": {"x": [1.5, None]}} if i % 3 else {} for i in range(n)],
    )


def reference_summary(trace: Trace) -> dict:
    """The statistics by two passes over float64 copies (what Trace.summary computed before streaming)."""
    starts = trace.episode_starts()
    lengths = np.diff(np.append(starts, len(trace)))
    returns = np.add.reduceat(trace.reward.astype(np.float64), starts)
    obs, reward = trace.obs.astype(np.float64), trace.reward.astype(np.float64)
    return dict(
        num_transitions=len(trace), num_episodes=trace.num_episodes, episode_length_mean=lengths.mean(),
        episode_length_min=lengths.min(), episode_length_max=lengths.max(), episode_return_mean=returns.mean(),
        episode_return_std=returns.std(), episode_return_min=returns.min(), episode_return_max=returns.max(),
        obs_mean=obs.mean(0).tolist(), obs_std=obs.std(0).tolist(), obs_min=obs.min(0).tolist(),
        obs_max=obs.max(0).tolist(), reward_mean=reward.mean(), reward_std=reward.std(),
        num_terminated=trace.terminated.sum(), num_truncated=trace.truncated.sum(),
    )


def assert_summary(summary, trace: Trace) -> None:
    for key, expected in reference_summary(trace).items():
        assert getattr(summary, key) == pytest.approx(expected, rel=1e-9, abs=1e-12), key


# ---- round trips ---------------------------------------------------------------------------


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("discrete", [True, False], ids=["discrete", "box"])
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_every_format_round_trips_exactly(suffix, discrete, tmp_path):
    trace = random_trace(0, discrete)
    loaded = load_trace(save_trace(trace, tmp_path / f"trace{suffix}"))
    assert loaded == trace
    assert loaded.episode_feedback == {0: "first episode", trace.num_episodes - 1: "two\nlines"}
    assert_summary(loaded.summary(), trace)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_streaming_readers_take_the_summary_while_reading(suffix, tmp_path):
    trace = random_trace(1, discrete=False, episodes=40, max_length=1500)  # ~30k rows: several chunks
    loaded = load_trace(save_trace(trace, tmp_path / f"big{suffix}"))
    assert loaded == trace
    assert loaded._summary is not None  # cached by the reader: no second pass
    assert_summary(loaded.summary(), trace)


def test_episode_feedback_is_validated_compared_and_carried_by_select(tmp_path):
    trace = random_trace(2, discrete=True)
    assert trace != replace(trace, episode_feedback={})
    with pytest.raises(TraceError, match=r'field "episode_feedback": expected \{episode in 0\.\.6: text\}'):
        replace(trace, episode_feedback={7: "past the end"})
    with pytest.raises(TraceError, match='field "episode_feedback"'):
        replace(trace, episode_feedback={0: 3})
    picked = trace.select_episodes([6, 1, 0])
    assert picked.episode_feedback == {0: "two\nlines", 2: "first episode"}
    train, held_out = trace.split(0.3, seed=0)
    assert len(train.episode_feedback) + len(held_out.episode_feedback) == 2
    for part in (train, held_out):
        for index, text in part.episode_feedback.items():
            assert trace.episode_feedback[trace.episode_ids.index(part.episode_ids[index])] == text


def test_episode_feedback_reaches_the_writer_prompt_and_the_text_context():
    from dreamer.opsd import ContextConfig, build_context
    from dreamer.writers.prompting import Templates, session_prompt

    trace = tiny(feedback={1: "tilted"}, episode_feedback={1: "it never fell"}, notes="a note")
    prompt = session_prompt(Templates.load(None), trace, transitions=5, seed=0, draft=None)
    assert "- row 1 (episode 0): tilted\n- episode 1: it never fell\n" in prompt
    assert build_context(trace, ContextConfig("text", [], 1)) == "a note\nstep 1: tilted\nepisode 1: it never fell"


@pytest.mark.parametrize("seed", range(4))
def test_summary_accumulator_matches_two_pass_statistics(seed):
    trace = random_trace(seed, discrete=seed % 2 == 0, episodes=12)
    assert_summary(trace.summary(), trace)
    accumulator = SummaryAccumulator()  # fed in uneven chunks, episodes split across them
    cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, len(trace)), 6, replace=False))
    for rows in np.split(np.arange(len(trace)), cuts):
        accumulator.add(trace.obs[rows], trace.reward[rows], trace.terminated[rows], trace.truncated[rows],
                        trace.episode[rows])
    assert_summary(accumulator.result(), trace)


def test_summary_is_taken_once_and_fresh_after_replace():
    trace = random_trace(3, discrete=True)
    assert trace.summary() is trace.summary()
    doubled = replace(trace, reward=trace.reward * 2)
    assert doubled.summary().reward_mean == pytest.approx(2 * trace.summary().reward_mean)


# ---- Minari --------------------------------------------------------------------------------


@pytest.fixture
def minari_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_minari_round_trip(env_id, minari_home):
    trace = collect_trace(gym.make(env_id), 450, seed=0)
    trace = replace(trace, notes="random policy")
    assert save_trace(trace, "minari:dreamer/session-v0") == "minari:dreamer/session-v0"
    assert (minari_home / "dreamer" / "session-v0" / "data").is_dir()
    loaded = load_trace("minari:dreamer/session-v0")
    assert loaded == trace
    assert (loaded.max_episode_steps, loaded.name) == (trace.max_episode_steps, env_id)
    assert_summary(loaded.summary(), trace)


def test_minari_refuses_to_overwrite_and_what_it_cannot_store(minari_home):
    trace = collect_trace(gym.make("CartPole-v1"), 100, seed=0)
    save_trace(trace, "minari:cartpole-v0")
    with pytest.raises(TraceError, match=r"^minari:cartpole-v0: a Minari dataset already exists at .*minari delete"):
        save_trace(trace, "minari:cartpole-v0")

    next_obs = trace.next_obs.copy()
    next_obs[4] += 1  # no longer transition 5's obs
    with pytest.raises(TraceError, match=r'^minari:other-v0: row 4: field "next_obs": differs from the next'):
        save_trace(replace(trace, next_obs=next_obs), "minari:other-v0")
    assert not (minari_home / "other-v0").exists()

    dropping = replace(trace, feedback={3: "hm"}, episode_feedback={0: "good"}, info=[{"a": 1}] * len(trace),
                       episode_ids=[f"e{i}" for i in range(trace.num_episodes)])
    with pytest.warns(TraceWarning, match=r"minari:lossy-v0: Minari has no place for the trace's feedback on "
                                          r"transitions \(1\), feedback on episodes \(1\), info dicts \(\d+\), "
                                          r"episode ids other than 0, 1, \.\.\. \(\d+\)"):
        save_trace(dropping, "minari:lossy-v0")
    assert load_trace("minari:lossy-v0") == trace


def test_minari_never_downloads(minari_home):
    with pytest.raises(TraceError, match=r"^minari:D4RL/door/human-v2: no local Minari dataset at .*"
                                         r"`minari download D4RL/door/human-v2`"):
        load_trace("minari:D4RL/door/human-v2")
    with pytest.raises(TraceError, match="Malformed dataset ID"):
        save_trace(random_trace(0, True), "minari:no version")


# ---- storage -------------------------------------------------------------------------------


def test_columns_are_only_for_tables(tmp_path):
    path = save_trace(random_trace(0, True), tmp_path / "t.jsonl")
    for target in (path, "minari:x-v0"):
        with pytest.raises(TraceError, match=r'field "columns": columns map only the columns of \.csv and \.parquet'):
            load_trace(target, TableColumns())


# ---- column mapping ------------------------------------------------------------------------


def tiny(**changes) -> Trace:
    """Two episodes ("a": 3 steps, terminated; "b": 2 steps), Discrete(2), 2-d obs."""
    fields = dict(
        obs=[[0, 0], [1, 1], [2, 2], [3, 3], [4, 4]], action=[0, 1, 1, 0, 1], reward=[1, 2, 3, 4, 5],
        next_obs=[[1, 1], [2, 2], [9, 9], [4, 4], [5, 5]], terminated=[False, False, True, False, False],
        truncated=[False] * 5, episode=[0, 0, 0, 1, 1], episode_ids=["a", "b"],
        observation_space=spaces.Box(-np.inf, np.inf, (2,), np.float32), action_space=spaces.Discrete(2),
    )
    return Trace(**{**fields, **changes})


SPACES = dict(observation_space={"type": "Box", "low": ["-inf", "-inf"], "high": ["inf", "inf"]},
              action_space={"type": "Discrete", "n": 2})


def write_text(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_custom_column_names(tmp_path):
    path = write_text(tmp_path / "custom.csv", [
        "t,ep,x,y,a,r,nx,ny,done,cut,comment",
        "0,a,0,0,0,1,1,1,0,0,",
        "1,a,1,1,1,2,2,2,0,0,tilted",
        "2,a,2,2,1,3,9,9,1,0,",
        "0,b,3,3,0,4,4,4,0,0,",
        "1,b,4,4,1,5,5,5,0,0,",
    ])
    columns = TableColumns(episode_column="ep", obs_columns=["x", "y"], next_obs_columns=["nx", "ny"],
                           action_column="a", reward_column="r", terminated_column="done", truncated_column="cut",
                           feedback_column="comment", max_episode_steps=10, **SPACES)
    assert load_trace(path, columns) == tiny(feedback={1: "tilted"}, max_episode_steps=10)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_next_row_layout(suffix, tmp_path):
    """Minari/D4RL style: an episode's rows are its observations, the last one only its final obs."""
    table = pa.table({
        "episode": [10, 10, 10, 10, 11, 11, 11],
        "obs_0": [0.0, 1.0, 2.0, 9.0, 3.0, 4.0, 5.0],
        "obs_1": [0.0, 1.0, 2.0, 9.0, 3.0, 4.0, 5.0],
        "action": [0, 1, 1, None, 0, 1, None],  # the final rows' other cells are ignored
        "reward": [1.0, 2.0, 3.0, None, 4.0, 5.0, None],
        "terminated": [False, False, True, None, False, False, None],
    })
    path = tmp_path / f"rows{suffix}"
    if suffix == ".csv":
        pa_csv.write_csv(table, path)
    else:
        pq.write_table(table, path)
    columns = TableColumns(next_obs_columns="next_row", truncated_column=None, **SPACES)
    assert load_trace(path, columns) == tiny(episode_ids=["10", "11"])


def test_next_row_across_batches_and_its_errors(tmp_path):
    trace = random_trace(4, discrete=True, episodes=30, max_length=2000)  # ~30k rows: several record batches
    rows = []  # (episode id, obs, action): each episode's steps, then its final observation
    for e, episode in enumerate(trace.episode_slices()):
        rows += [(trace.episode_ids[e], trace.obs[r], int(trace.action[r])) for r in range(episode.start, episode.stop)]
        rows.append((trace.episode_ids[e], trace.next_obs[episode.stop - 1], None))
    ids, obs, action = zip(*rows)
    obs = np.array(obs)
    table = pa.table({"episode": ids, **{f"obs_{i}": obs[:, i] for i in range(3)}, "action": action,
                      "reward": np.zeros(len(rows), np.float32)})
    pq.write_table(table, tmp_path / "rows.parquet")
    columns = TableColumns(next_obs_columns="next_row", terminated_column=None, truncated_column=None,
                           observation_space={"type": "Box", "low": ["-inf"] * 3, "high": ["inf"] * 3},
                           action_space={"type": "Discrete", "n": 4})
    loaded = load_trace(tmp_path / "rows.parquet", columns)
    for name in ("obs", "next_obs", "action", "episode"):
        assert np.array_equal(getattr(loaded, name), getattr(trace, name)), name
    assert loaded.episode_ids == trace.episode_ids

    single = {"episode": ["a", "a", "a", "b"], **{f"obs_{i}": [0.0] * 4 for i in range(3)},
              "action": [0, 0, None, 0], "reward": [0.0] * 4}
    pq.write_table(pa.table(single), tmp_path / "single.parquet")
    with pytest.raises(TraceError, match=r'single\.parquet: row 3: field "episode" \(column "episode"\): episode '
                                         r"'b' has a single row"):
        load_trace(tmp_path / "single.parquet", columns)


def test_no_episode_column_splits_after_each_end(tmp_path):
    path = write_text(tmp_path / "flat.csv", [
        "obs_0,obs_1,action,reward,next_obs_0,next_obs_1,terminated,timeout",
        "0,0,0,1,1,1,false,false", "1,1,1,2,2,2,false,false", "2,2,1,3,9,9,true,false",
        "3,3,0,4,4,4,false,false", "4,4,1,5,5,5,false,true",
        "5,5,1,6,6,6,false,false",
    ])
    columns = TableColumns(episode_column=None, truncated_column="timeout", **SPACES)
    loaded = load_trace(path, columns)
    assert loaded.episode_ids == ["0", "1", "2"]
    assert loaded.episode.tolist() == [0, 0, 0, 1, 1, 2]
    assert loaded.truncated.tolist() == [False, False, False, False, True, False]


@pytest.mark.filterwarnings("error")
def test_csv_from_a_spreadsheet(tmp_path):
    """A byte order mark, CRLF line ends, texts that other tools take for missing values."""
    path = tmp_path / "sheet.csv"
    lines = ["#meta " + json.dumps(SPACES), "episode,obs_0,obs_1,action,reward,next_obs_0,next_obs_1,terminated,"
             "truncated,feedback", "NA,0,0,1,0.5,1,1,false,true,null", "nan,1,1,0,1,2,2,true,false,NA"]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    trace = load_trace(path)
    assert trace.episode_ids == ["NA", "nan"] and trace.feedback == {0: "null", 1: "NA"}
    assert trace.obs.tolist() == [[0, 0], [1, 1]] and trace.terminated.tolist() == [False, True]


def test_spaces_inferred_from_a_table_with_a_warning(tmp_path):
    header = "episode,obs_0,action,reward,next_obs_0,terminated,truncated"
    discrete = write_text(tmp_path / "discrete.csv", [header, "0,0.5,3,1,1,false,false", "0,1,0,1,2,false,false"])
    with pytest.warns(TraceWarning, match=r"discrete\.csv: no meta line with spaces; inferred from the data: "
                                          r"observation_space=Box\(-inf, inf, \(1,\), float32\), "
                                          r"action_space=Discrete\(4\)"):
        assert load_trace(discrete).action.tolist() == [3, 0]
    box = write_text(tmp_path / "box.csv", [header, "0,0.5,0.25,1,1,false,false", "0,1,-2,1,2,false,false"])
    with pytest.warns(TraceWarning, match=r"action_space=Box\(-2\.0, 0\.25, \(1,\), float32\)"):
        assert load_trace(box).action.tolist() == [[0.25], [-2.0]]
    table = {"episode": [0], "obs_0": [0.5], "action_0": [0.5], "action_1": [1.5], "reward": [1.0],
             "next_obs_0": [1.0], "terminated": [True], "truncated": [False]}
    pq.write_table(pa.table(table), tmp_path / "box.parquet")
    with pytest.warns(TraceWarning, match=r"box\.parquet: no 'trace_meta' metadata with spaces; .*action_space=Box"):
        assert load_trace(tmp_path / "box.parquet").action.tolist() == [[0.5, 1.5]]


def test_config_overrides_the_file_and_builds_from_a_config_section(tmp_path):
    path = save_trace(tiny(), tmp_path / "t.parquet")
    values = {f: None for f in ("obs_columns", "next_obs_columns", "observation_space", "max_episode_steps")}
    values |= dict(episode_column="episode", action_column="action", reward_column="reward",
                   terminated_column="terminated", truncated_column="truncated", feedback_column="feedback",
                   info_column="info", action_space={"type": "Discrete", "n": 5})
    columns = build(TableColumns, values, "trace.columns")
    assert load_trace(path, columns) == tiny(action_space=spaces.Discrete(5))
    with pytest.raises(ValueError, match=r"^trace\.columns\.reward_column=None is not a str"):
        build(TableColumns, values | {"reward_column": None}, "trace.columns")


BAD_COLUMNS = {
    "reward None": (dict(reward_column=None), "reward_column must be a column name, got None"),
    "empty name": (dict(episode_column=""), "episode_column must be a column name or None"),
    "obs string": (dict(obs_columns="x"), "obs_columns must be a non-empty list of column names or None"),
    "action empty list": (dict(action_column=[]), "action_column must be a column name or a non-empty list"),
    "next_obs other string": (dict(next_obs_columns="next"), 'next_obs_columns must be .* or "next_row" or None'),
    "lengths": (dict(obs_columns=["a", "b"], next_obs_columns=["c"]), "as many columns as obs_columns"),
    "next_row without ids": (dict(next_obs_columns="next_row", episode_column=None), "needs an episode_column"),
    "mapped twice": (dict(reward_column="episode"), "column 'episode' is mapped twice"),
    "bad space": (dict(action_space={"type": "Foo"}), 'action_space: expected {"type": "Discrete"'),
    "2-d space": (dict(observation_space={"type": "Discrete", "n": 3}), "observation_space: expected a 1-d Box"),
    "horizon": (dict(max_episode_steps=0), "max_episode_steps must be None or a positive int, got 0"),
}


def test_next_row_is_not_read_as_column_names():
    """Regression: "next_row" was once taken as the columns n, e, x, t, ... and clashed with an obs column "x"."""
    columns = TableColumns(episode_column="run", obs_columns=["x", "e"], next_obs_columns="next_row")
    assert columns.next_obs_columns == "next_row"


@pytest.mark.parametrize("case", BAD_COLUMNS)
def test_bad_table_columns(case):
    changes, expected = BAD_COLUMNS[case]
    with pytest.raises(ValueError, match=expected):
        TableColumns(**changes)


# ---- bad CSV -------------------------------------------------------------------------------

CSV_META = "#meta " + json.dumps(SPACES)
CSV_HEADER = "episode,obs_0,obs_1,action,reward,next_obs_0,next_obs_1,terminated,truncated,feedback,info"


def csv_row(episode="a", obs="0,0", action="0", reward="1", terminated="false", info="") -> str:
    return f"{episode},{obs},{action},{reward},{obs},{terminated},false,,{info}"


BAD_CSV = {  # case: (rows after a first row with a two-line feedback cell, field, columns, expected text)
    "not a number": ([csv_row(reward="abc")], "reward", '"reward"', "expected a number, got 'abc'"),
    "empty cell": ([csv_row(reward="")], "reward", '"reward"', "expected a number, got an empty cell"),
    "flag": ([csv_row(terminated="maybe")], "terminated", '"terminated"', "expected true or false, got 'maybe'"),
    "discrete action": ([csv_row(action="1.5")], "action", '"action"',
                        "expected an integer (Discrete action), got '1.5'"),
    "action range": ([csv_row(action="2")], "action", '"action"', "expected an action in 0..1, got 2"),
    "nan obs": ([csv_row(obs="nan,0")], "obs", '"obs_0", "obs_1"', "expected finite numbers, got [nan, 0.0]"),
    "info": ([csv_row(info="[1]")], "info", '"info"', "expected a JSON object, got '[1]'"),
    "episode order": ([csv_row("b"), csv_row("a")], "episode", '"episode"', "episode 'a' resumes after episode 'b'"),
    "after terminated": ([csv_row(terminated="true"), csv_row()], "episode", '"episode"', "goes on"),
}


@pytest.mark.parametrize("case", BAD_CSV)
def test_bad_csv_names_file_line_field_and_column(case, tmp_path):
    rows, field, columns, expected = BAD_CSV[case]
    first = 'a,0,0,0,1,0,0,false,false,"two\nlines",'  # lines 3-4: quoted newlines count as lines
    path = write_text(tmp_path / "bad.csv", [CSV_META, CSV_HEADER, first, *rows])
    with pytest.raises(TraceError) as error:
        load_trace(path)
    message = str(error.value)
    line = 4 + len(rows)  # the last row is the bad one
    column_word = "columns" if ", " in columns else "column"
    assert message.startswith(f'{path}:{line}: field "{field}" ({column_word} {columns}): '), message
    assert expected in message, message


def test_bad_csv_cells_under_a_custom_name(tmp_path):
    path = write_text(tmp_path / "run.csv", ["ep,o,a,r,n,done", *["0,0,0,1,0,false"] * 10, "0,0,0,abc,0,false"])
    columns = TableColumns(episode_column="ep", obs_columns=["o"], next_obs_columns=["n"], action_column="a",
                           reward_column="r", terminated_column="done", truncated_column=None,
                           observation_space={"type": "Box", "low": [0], "high": [1]},
                           action_space=SPACES["action_space"])
    expected = rf'^{path}:12: field "reward" \(column "r"\): expected a number, got \'abc\'$'
    with pytest.raises(TraceError, match=expected):
        load_trace(path, columns)


def test_bad_csv_structure(tmp_path):
    missing = write_text(tmp_path / "missing.csv", [CSV_META, "episode,obs_0,obs_1,action,next_obs_0,terminated",
                                                    "a,0,0,0,0,false"])
    with pytest.raises(TraceError) as error:
        load_trace(missing)
    assert str(error.value) == (
        f'{missing}:2: missing columns "reward" (field "reward"), "next_obs_1" (field "next_obs"), "truncated" '
        "(field \"truncated\"); the file has columns ['episode', 'obs_0', 'obs_1', 'action', 'next_obs_0', "
        "'terminated']")

    meta = write_text(tmp_path / "meta.csv", ['#meta {"observation_space": ', CSV_HEADER, csv_row()])
    with pytest.raises(TraceError, match=rf'^{meta}:1: field "meta": expected #meta {{JSON object}}'):
        load_trace(meta)
    listed = write_text(tmp_path / "listed.csv", ["#meta [1]", CSV_HEADER, csv_row()])
    with pytest.raises(TraceError, match=rf'^{listed}:1: field "meta": expected a JSON object, got \[1\]'):
        load_trace(listed)
    bad_space = write_text(tmp_path / "space.csv", ['#meta {"action_space": {"type": "Foo"}}', CSV_HEADER, csv_row()])
    with pytest.raises(TraceError, match=rf'^{bad_space}:1: field "action_space": expected {{"type": "Discrete"'):
        load_trace(bad_space)

    cells = write_text(tmp_path / "cells.csv", [CSV_META, CSV_HEADER, csv_row(), csv_row() + ",extra"])
    with pytest.raises(TraceError, match=rf"^{cells}:4: expected 11 cells as the header has, got 12$"):
        load_trace(cells)
    empty = write_text(tmp_path / "empty.csv", [CSV_META, CSV_HEADER])
    with pytest.raises(TraceError, match=rf"^{empty}: no transitions"):
        load_trace(empty)
    unknown = write_text(tmp_path / "unknown.csv", [
        "#meta " + json.dumps({**SPACES, "episode_feedback": {"zz": "?"}}), CSV_HEADER, csv_row()])
    with pytest.raises(TraceError, match=rf"^{unknown}:1: field \"episode_feedback\": unknown episode ids \['zz'\]"):
        load_trace(unknown)


# ---- bad Parquet ---------------------------------------------------------------------------


def parquet(tmp_path: Path, name: str = "bad.parquet", **changes) -> Path:
    """tiny() in the canonical layout, with columns replaced (None: dropped)."""
    path = save_trace(tiny(), tmp_path / name)
    table = pq.read_table(path)
    for column, values in changes.items():
        table = table.drop_columns([column])
        if values is not None:
            table = table.append_column(column, pa.array(values))
    pq.write_table(table.replace_schema_metadata(pq.read_schema(path).metadata), path)
    return path


BAD_PARQUET = {  # case: (column changes, row, field, expected text)
    "not a number": (dict(reward=["1", "2", "3", "abc", "5"]), 3, "reward", "expected a number, got 'abc'"),
    "empty cell": (dict(reward=[1.0, None, 3.0, 4.0, 5.0]), 1, "reward", "expected a number, got an empty cell"),
    "fractional action": (dict(action=[0.0, 1.0, 0.5, 0.0, 1.0]), 2, "action", "an integer (Discrete action), got 0.5"),
    "episode order": (dict(episode=["a", "a", "b", "a", "b"]), 3, "episode", "episode 'a' resumes"),
    "inf next_obs": (dict(next_obs_1=[0.0, 0.0, 0.0, 0.0, np.inf]), 4, "next_obs", "finite numbers"),
}


@pytest.mark.parametrize("case", BAD_PARQUET)
def test_bad_parquet_names_file_row_field_and_column(case, tmp_path):
    changes, row, field, expected = BAD_PARQUET[case]
    path = parquet(tmp_path, **changes)
    with pytest.raises(TraceError) as error:
        load_trace(path)
    message = str(error.value)
    assert message.startswith(f'{path}: row {row}: field "{field}" (column'), message
    assert expected in message, message


def test_bad_parquet_files(tmp_path):
    missing = parquet(tmp_path, "missing.parquet", reward=None)
    with pytest.raises(TraceError, match=rf'^{missing}: missing columns "reward" \(field "reward"\); the file has'):
        load_trace(missing)

    corrupt = save_trace(tiny(), tmp_path / "corrupt.parquet")
    corrupt.write_bytes(corrupt.read_bytes()[: corrupt.stat().st_size // 2])
    with pytest.raises(TraceError, match=rf"^{corrupt}: pyarrow could not read it as Parquet: "):
        load_trace(corrupt)

    meta = parquet(tmp_path, "meta.parquet")
    pq.write_table(pq.read_table(meta).replace_schema_metadata({"trace_meta": "{not json"}), meta)
    with pytest.raises(TraceError, match=rf'^{meta}: field "meta": expected a JSON object under \'trace_meta\''):
        load_trace(meta)


# ---- JSONL feedback records ----------------------------------------------------------------

META = {"meta": SPACES}


def rec(episode="a", **changes) -> dict:
    record = {"episode": episode, "obs": [0.0, 0.0], "action": 0, "reward": 1.0, "next_obs": [0.0, 0.0]}
    return {**record, "terminated": False, "truncated": False, **changes}


def jsonl(tmp_path: Path, lines: list) -> Path:
    return write_text(tmp_path / "t.jsonl", [json.dumps(line) for line in lines])


@pytest.mark.filterwarnings("error")
def test_jsonl_feedback_records_anywhere_after_the_episode_starts(tmp_path):
    path = jsonl(tmp_path, [
        META,
        rec("a", feedback="inline"),
        {"episode": "a", "step": 2, "feedback": "ahead of its step"},
        rec("a"),
        rec("a", terminated=True),
        rec(7),
        {"episode": "a", "feedback": "whole episode"},
        {"episode": "a", "step": 0, "feedback": "later"},
        {"episode": 7, "step": 0, "feedback": "seven"},
        {"episode": "a", "feedback": "and more"},
    ])
    trace = load_trace(path)
    assert trace.feedback == {0: "inline\nlater", 2: "ahead of its step", 3: "seven"}
    assert trace.episode_feedback == {0: "whole episode\nand more"}
    assert load_trace(save_trace(trace, tmp_path / "again.jsonl")) == trace


def test_write_jsonl_puts_episode_feedback_after_the_episode(tmp_path):
    path = save_trace(tiny(episode_feedback={0: "first", 1: "second"}, feedback={4: "step"}), tmp_path / "t.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[4] == {"episode": "a", "feedback": "first"} and lines[7] == {"episode": "b", "feedback": "second"}
    assert lines[6]["feedback"] == "step"


BAD_RECORDS = {  # case: (lines, line number, field, expected text)
    "before its episode": ([META, {"episode": "a", "feedback": "x"}, rec()], 2, "episode", "unknown episode 'a'"),
    "unknown episode": ([META, rec(), {"episode": "b", "step": 0, "feedback": "x"}], 3, "episode", "unknown episode"),
    "step out of range": ([META, rec(), rec(), {"episode": "a", "step": 2, "feedback": "x"}], 4, "step",
                          "expected a step in 0..1 of episode 'a', got 2"),
    "negative step": ([META, rec(), {"episode": "a", "step": -1, "feedback": "x"}], 3, "step", "an integer >= 0"),
    "missing text": ([META, rec(), {"episode": "a", "step": 0}], 3, "feedback", "missing (expected a string)"),
    "text type": ([META, rec(), {"episode": "a", "feedback": 5}], 3, "feedback", "expected a string, got 5"),
}


@pytest.mark.parametrize("case", BAD_RECORDS)
def test_bad_feedback_records_name_file_line_and_field(case, tmp_path):
    lines, line, field, expected = BAD_RECORDS[case]
    path = jsonl(tmp_path, lines)
    with pytest.raises(TraceError) as error:
        load_trace(path)
    assert str(error.value).startswith(f'{path}:{line}: field "{field}": '), str(error.value)
    assert expected in str(error.value), str(error.value)


def test_npz_episode_feedback_names_unknown_ids(tmp_path):
    path = save_trace(tiny(episode_feedback={1: "b's"}), tmp_path / "t.npz")
    with np.load(path) as data:
        arrays = dict(data)
    meta = json.loads(str(arrays["meta"]))
    arrays["meta"] = np.array(json.dumps({**meta, "episode_feedback": {"zz": "?"}}))
    np.savez(path, **arrays)
    with pytest.raises(TraceError, match=rf"^{path}: field \"episode_feedback\": unknown episode ids \['zz'\]"):
        load_trace(path)


# ---- memory --------------------------------------------------------------------------------

MILLION = 1_000_000


def large_jsonl(path: Path, transitions: int) -> None:
    """`transitions` (obs dim 4, Discrete(2), 100 steps an episode), the lines joined by pyarrow (fast)."""
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((transitions + 1, 4)).astype(np.float32)
    text = [pc.cast(pa.array(column), pa.string()) for column in obs.T]
    parts = ['{"episode": ', np.arange(transitions) // 100, ', "obs": [', *sum(([t[:-1], ", "] for t in text), [])[:-1],
             '], "action": ', rng.integers(0, 2, transitions),
             ', "reward": ', rng.standard_normal(transitions).astype(np.float32),
             ', "next_obs": [', *sum(([t[1:], ", "] for t in text), [])[:-1],
             '], "terminated": ', np.arange(transitions) % 100 == 99, ', "truncated": false}']
    parts = [part if isinstance(part, str | pa.Array) else pc.cast(pa.array(part), pa.string()) for part in parts]
    lines = pc.binary_join_element_wise(*parts, "")
    meta = {"meta": {"observation_space": {"type": "Box", "low": ["-inf"] * 4, "high": ["inf"] * 4},
                     "action_space": {"type": "Discrete", "n": 2}}}
    with open(path, "w") as file:
        file.write(json.dumps(meta) + "\n" + "\n".join(lines.to_pylist()) + "\n")


def million_trace() -> Trace:
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((MILLION + 1, 4)).astype(np.float32)
    return Trace(obs=obs[:-1], action=rng.integers(0, 2, MILLION), reward=rng.standard_normal(MILLION),
                 next_obs=obs[1:], terminated=np.arange(MILLION) % 100 == 99, truncated=np.zeros(MILLION, bool),
                 episode=np.arange(MILLION) // 100, episode_ids=[str(i) for i in range(MILLION // 100)],
                 observation_space=spaces.Box(-np.inf, np.inf, (4,), np.float32), action_space=spaces.Discrete(2))


@pytest.mark.slow
@pytest.mark.parametrize("suffix, transitions", [(".jsonl", 300_000), (".csv", MILLION), (".parquet", MILLION)])
def test_a_large_trace_loads_within_twice_its_size(suffix, transitions, tmp_path):
    """JSONL at 300k transitions: its reader holds one chunk of lines at a time, so the ratio does not grow with
    length, and a million lines under tracemalloc take minutes."""
    path = tmp_path / f"large{suffix}"
    if suffix == ".jsonl":
        large_jsonl(path, transitions)
    else:
        save_trace(million_trace(), path)
    tracemalloc.start()
    try:
        trace = load_trace(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = sum(getattr(trace, name).nbytes for name in ARRAYS)
    assert len(trace) == transitions and trace.num_episodes == transitions // 100
    assert peak <= 2 * size, f"peak {peak / 1e6:.1f} MB for {size / 1e6:.1f} MB of arrays"
    assert trace._summary is not None and trace.summary().num_terminated == transitions // 100
