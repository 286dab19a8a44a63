"""Traces: JSONL/NPZ round trips, the recorder, split, summary, and the errors on bad input."""

import json
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.error import ResetNeeded

from dreamer.traces import Trace, TraceError, TraceRecorder, TraceWarning, collect_trace, load_trace, save_trace

FIXTURES = Path(__file__).parent / "fixtures"
INF_BOX = {"type": "Box", "low": ["-inf", "-inf"], "high": ["inf", "inf"]}
META = {"meta": {"observation_space": INF_BOX, "action_space": {"type": "Discrete", "n": 2}}}
BOX_META = {"meta": {"observation_space": INF_BOX, "action_space": {"type": "Box", "low": [-1, -1], "high": [1, 1]}}}


@pytest.fixture(scope="module")
def cartpole() -> Trace:
    return collect_trace(gym.make("CartPole-v1"), 300, seed=0)


@pytest.fixture(scope="module")
def pendulum() -> Trace:
    return collect_trace(gym.make("Pendulum-v1"), 450, seed=0)  # two full episodes and 50 steps


def tiny(**changes) -> Trace:
    """Two episodes ("a": rows 0-2, terminated; "b": rows 3-4), Discrete(2), 2-d obs with infinite bounds."""
    fields = dict(
        obs=[[0, 0], [1, 1], [2, 2], [3, 3], [4, 4]],
        action=[0, 1, 1, 0, 1],
        reward=[1, 2, 3, 4, 5],
        next_obs=[[1, 1], [2, 2], [9, 9], [4, 4], [5, 5]],
        terminated=[False, False, True, False, False],
        truncated=[False] * 5,
        episode=[0, 0, 0, 1, 1],
        episode_ids=["a", "b"],
        observation_space=spaces.Box(-np.inf, np.inf, (2,), np.float32),
        action_space=spaces.Discrete(2),
        feedback={1: "early", 3: "late"},
        info=[{"i": i} for i in range(5)],
    )
    return Trace(**{**fields, **changes})


def rec(episode=0, **changes) -> dict:
    """A valid transition line for META, with `changes`."""
    record = {"episode": episode, "obs": [0.0, 0.0], "action": 0, "reward": 1.0, "next_obs": [0.0, 0.0]}
    return {**record, "terminated": False, "truncated": False, **changes}


def write_jsonl(tmp_path: Path, lines: list, name: str = "bad.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


# ---- round trips ---------------------------------------------------------------------------


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("env", ["cartpole", "pendulum"])
@pytest.mark.parametrize("suffix", [".jsonl", ".npz"])
def test_round_trip_is_exact(env, suffix, request, tmp_path):
    trace = request.getfixturevalue(env)
    trace = replace(trace, notes="seeded random policy", feedback={0: "first", len(trace) - 1: "last"})
    path = save_trace(trace, tmp_path / f"trace{suffix}")
    assert path == tmp_path / f"trace{suffix}"
    assert list(tmp_path.iterdir()) == [path]  # the temporary file was renamed, not left behind
    loaded = load_trace(path)
    assert loaded == trace
    assert loaded.action.dtype == (np.int64 if env == "cartpole" else np.float32)
    assert loaded.obs.dtype == np.float32 and loaded.terminated.dtype == bool


@pytest.mark.parametrize("suffix", [".jsonl", ".npz"])
def test_round_trip_keeps_infinite_bounds_feedback_and_info(suffix, tmp_path):
    trace = tiny()
    path = save_trace(trace, tmp_path / f"tiny{suffix}")
    assert load_trace(path) == trace
    if suffix == ".jsonl":  # strict JSON: infinite bounds are the strings "inf" and "-inf"
        meta = json.loads(path.read_text().splitlines()[0], parse_constant=pytest.fail)["meta"]
        assert meta["observation_space"] == INF_BOX


def test_equality_sees_every_change():
    trace = tiny()
    reward = trace.reward.copy()
    reward[4] += 1
    assert trace == tiny()
    assert trace != replace(trace, reward=reward)
    assert trace != replace(trace, feedback={})
    assert trace != replace(trace, info=None)
    assert trace != replace(trace, action_space=spaces.Discrete(3))


def test_save_overwrites_atomically(tmp_path):
    path = save_trace(tiny(), tmp_path / "t.jsonl")
    save_trace(tiny(name="second"), path)
    assert load_trace(path).name == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["t.jsonl"]


@pytest.mark.filterwarnings("error")
def test_example_fixture_loads():
    trace = load_trace(FIXTURES / "trace_example.jsonl")
    assert trace.episode_ids == ["a", "7"]
    assert trace.episode.tolist() == [0, 0, 1, 1, 1]
    assert trace.feedback == {1: "pushed too far left"}
    assert trace.info[4] == {"TimeLimit.truncated": True} and trace.info[0] == {}
    assert trace.observation_space.low.tolist() == [-np.inf, -1.0]
    assert (trace.name, trace.max_episode_steps, trace.action_space) == ("example", 3, spaces.Discrete(2))


# ---- recorder ------------------------------------------------------------------------------


def test_recorder_across_resets_and_partial_episode():
    env = TraceRecorder(gym.make("CartPole-v1"))
    with pytest.raises(ResetNeeded):
        env.step(0)
    with pytest.raises(TraceError, match="nothing recorded"):
        env.trace()
    first_obs = [env.reset(seed=1)[0]]
    terminated = False
    while not terminated:  # pushing right always falls over within a few dozen steps
        _, _, terminated, _, _ = env.step(1)
    first_length = len(env.trace())
    first_obs.append(env.reset()[0])
    for _ in range(3):
        env.step(0)
    first_obs.append(env.reset()[0])  # cuts episode "1" after 3 steps
    for _ in range(4):
        env.step(0)
    trace = env.trace()

    assert (trace.name, trace.max_episode_steps) == ("CartPole-v1", 500)
    assert trace.episode_ids == ["0", "1", "2"]
    starts = trace.episode_starts()
    assert starts.tolist() == [0, first_length, first_length + 3]
    assert np.array_equal(trace.obs[starts], np.array(first_obs))
    within = trace.episode[1:] == trace.episode[:-1]
    assert np.array_equal(trace.next_obs[:-1][within], trace.obs[1:][within])
    assert np.flatnonzero(trace.terminated).tolist() == [first_length - 1]
    assert np.flatnonzero(trace.truncated).tolist() == [first_length + 2, len(trace) - 1]

    env.step(0)  # trace() marked a copy: the episode goes on unmarked in the recording
    longer = env.trace()
    assert len(longer) == len(trace) + 1
    assert np.flatnonzero(longer.truncated).tolist() == [first_length + 2, len(longer) - 1]
    with pytest.raises(ResetNeeded):
        while True:
            env.step(0)


def test_recorder_clips_box_actions():
    env = TraceRecorder(gym.make("Pendulum-v1"))
    env.reset(seed=0)
    env.step(np.array([5.0]))
    env.step(np.array([-0.5]))
    assert env.trace().action.tolist() == [[2.0], [-0.5]]


def test_collect_trace_steps_seed_and_policy():
    trace = collect_trace(gym.make("CartPole-v1"), 50, seed=3, policy=lambda obs: 1)
    assert len(trace) == 50 and trace.num_episodes > 1
    assert (trace.action == 1).all()
    assert collect_trace(gym.make("CartPole-v1"), 50, seed=3, policy=lambda obs: 1) == trace
    random = collect_trace(gym.make("CartPole-v1"), 50, seed=3)
    assert collect_trace(gym.make("CartPole-v1"), 50, seed=3) == random
    assert collect_trace(gym.make("CartPole-v1"), 50, seed=4) != random
    assert set(random.action.tolist()) == {0, 1}


# ---- episodes: select and split ------------------------------------------------------------


def test_select_episodes_renumbers_and_reindexes():
    picked = tiny().select_episodes([1, 0])
    assert picked.episode_ids == ["b", "a"]
    assert picked.episode.tolist() == [0, 0, 1, 1, 1]
    assert picked.obs[:, 0].tolist() == [3, 4, 0, 1, 2]
    assert picked.feedback == {0: "late", 3: "early"}
    assert [info["i"] for info in picked.info] == [3, 4, 0, 1, 2]
    with pytest.raises(TraceError, match="distinct episode indices"):
        tiny().select_episodes([0, 0])


def test_split_is_by_episode_and_deterministic(cartpole):
    train, held_out = cartpole.split(0.25, seed=0)
    assert held_out.num_episodes == round(0.25 * cartpole.num_episodes)
    assert not set(train.episode_ids) & set(held_out.episode_ids)
    assert sorted(train.episode_ids + held_out.episode_ids, key=int) == cartpole.episode_ids
    assert len(train) + len(held_out) == len(cartpole)
    original = dict(zip(cartpole.episode_ids, cartpole.episode_slices()))
    for part in (train, held_out):
        assert part.episode_ids == sorted(part.episode_ids, key=int)  # recording order kept
        for episode_id, rows in zip(part.episode_ids, part.episode_slices()):
            assert np.array_equal(part.obs[rows], cartpole.obs[original[episode_id]])
    assert cartpole.split(0.25, seed=0) == (train, held_out)
    assert any(cartpole.split(0.25, seed=s)[1].episode_ids != held_out.episode_ids for s in range(1, 4))


def test_split_needs_two_episodes():
    train, held_out = tiny().split(0.01, seed=0)
    assert (train.num_episodes, held_out.num_episodes) == (1, 1)
    with pytest.raises(TraceError, match="at least 2 episodes"):
        tiny().select_episodes([0]).split(0.5, seed=0)


# ---- summary -------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ["cartpole", "pendulum"])
def test_summary_matches_numpy(env, request):
    trace = request.getfixturevalue(env)
    summary = trace.summary()
    episodes = [trace.episode == e for e in range(trace.num_episodes)]
    lengths = np.array([mask.sum() for mask in episodes])
    returns = np.array([trace.reward[mask].astype(np.float64).sum() for mask in episodes])
    assert (summary.num_transitions, summary.num_episodes) == (len(trace.obs), len(set(trace.episode_ids)))
    assert summary.episode_length_mean == pytest.approx(lengths.mean())
    assert (summary.episode_length_min, summary.episode_length_max) == (lengths.min(), lengths.max())
    assert [summary.episode_return_mean, summary.episode_return_std] == pytest.approx([returns.mean(), returns.std()])
    assert [summary.episode_return_min, summary.episode_return_max] == pytest.approx([returns.min(), returns.max()])
    for name, stat in [("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max)]:
        assert getattr(summary, f"obs_{name}") == pytest.approx(stat(trace.obs, axis=0).tolist(), rel=1e-5)
    reward_stats = [trace.reward.mean(), trace.reward.std()]
    assert [summary.reward_mean, summary.reward_std] == pytest.approx(reward_stats, rel=1e-5)
    assert (summary.num_terminated, summary.num_truncated) == (trace.terminated.sum(), trace.truncated.sum())
    assert json.loads(json.dumps(summary.to_dict())) == summary.to_dict()


# ---- bad JSONL -----------------------------------------------------------------------------

BAD_JSONL = {  # case: (lines, line number, field or None, expected text)
    "invalid json": ([META, '{"episode": 0, "obs": [0.0 0.1]}'], 2, None, "invalid JSON: Expecting ',' delimiter (column 28)"),
    "cut short": ([META, '{"episode": 0, "obs": [0.0,'], 2, None,
                  "invalid JSON: Expecting value (column 28, the end of the line: is it cut short?)"),
    "not an object": ([META, "[1, 2]"], 2, None, "expected a JSON object"),
    "missing field": ([META, rec(), {k: v for k, v in rec().items() if k != "reward"}], 3, "reward", "missing"),
    "reward type": ([META, rec(reward="1.0")], 2, "reward", "expected a number"),
    "terminated type": ([META, rec(terminated=0)], 2, "terminated", "true or false"),
    "episode type": ([META, rec(episode=1.5)], 2, "episode", "an integer or a string"),
    "obs length vs space": ([META, rec(obs=[0.0])], 2, "obs", "a list of 2 numbers"),
    "obs element type": ([META, rec(obs=[0.0, "1"])], 2, "obs", "a list of 2 numbers"),
    "next_obs length vs line 1": ([rec(obs=[0] * 3, next_obs=[0] * 3), rec(obs=[0] * 3)], 2, "next_obs", "list of 3"),
    "box action length": ([BOX_META, rec(action=[0.0])], 2, "action", "a list of 2 numbers"),
    "discrete action type": ([META, rec(action=1.0)], 2, "action", "an integer"),
    "nan obs": ([META, rec(), "", rec(obs=[float("nan"), 0.0])], 4, "obs", "finite numbers"),
    "inf reward": ([META, rec(), rec(reward=float("inf"))], 3, "reward", "finite numbers"),
    "nan box action": ([BOX_META, rec(action=[0, 0]), rec(action=[0, float("nan")])], 3, "action", "finite numbers"),
    "discrete action range": ([META, rec(), rec(action=2)], 3, "action", "an action in 0..1"),
    "negative discrete action": ([META, rec(action=-1)], 2, "action", "an action in 0..1"),
    "box action bounds": ([BOX_META, rec(action=[0.0, 1.5])], 2, "action", "an action within"),
    "interleaved episodes": ([META, rec(0), rec(1), rec(0)], 4, "episode", "contiguous"),
    "after terminated": ([META, rec(0, terminated=True), rec(0)], 3, "episode", "goes on"),
    "after truncated": ([META, rec(0, truncated=True), rec(0), rec(0)], 3, "episode", "goes on"),
    "meta not first": ([rec(), META], 2, "meta", "first line"),
    "bad space": ([{"meta": {"action_space": {"type": "Foo"}}}, rec()], 1, "action_space", '"type": "Discrete"'),
    "discrete obs space": ([{"meta": {"observation_space": {"type": "Discrete", "n": 3}}}, rec()], 1,
                           "observation_space", "1-d Box"),
    "bad max_episode_steps": ([{"meta": {**META["meta"], "max_episode_steps": -1}}, rec()], 1,
                              "max_episode_steps", "positive int"),
    "feedback type": ([META, rec(feedback=3)], 2, "feedback", "a string"),
}


@pytest.mark.parametrize("case", BAD_JSONL)
def test_bad_jsonl_names_file_line_and_field(case, tmp_path):
    lines, line, field, expected = BAD_JSONL[case]
    path = write_jsonl(tmp_path, lines)
    with pytest.raises(TraceError) as error:
        load_trace(path)
    message = str(error.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert field is None or f'field "{field}"' in message, message
    assert expected in message, message


@pytest.mark.parametrize("lines", [[], [META], [""]], ids=["empty", "meta only", "blank"])
def test_jsonl_without_transitions(lines, tmp_path):
    path = write_jsonl(tmp_path, lines)
    with pytest.raises(TraceError, match=f"^{path}: no transitions"):
        load_trace(path)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(TraceError, match="missing.jsonl: no such file"):
        load_trace(tmp_path / "missing.jsonl")
    for action in (load_trace, lambda path: save_trace(tiny(), path)):
        with pytest.raises(TraceError, match=r"trace\.txt: unknown trace suffix '\.txt'; expected one of \['\.jsonl'"):
            action(tmp_path / "trace.txt")
    assert list(tmp_path.iterdir()) == []


def test_spaces_are_inferred_with_a_warning(tmp_path):
    discrete = write_jsonl(tmp_path, [rec(action=0), rec(action=4)], "discrete.jsonl")
    with pytest.warns(TraceWarning) as record:
        trace = load_trace(discrete)
    assert trace.action_space == spaces.Discrete(5)
    assert trace.observation_space == spaces.Box(-np.inf, np.inf, (2,), np.float32)
    assert [str(w.message) for w in record] == [
        f"{discrete}: no meta line with spaces; inferred from the data: "
        "observation_space=Box(-inf, inf, (2,), float32), action_space=Discrete(5)"
    ]

    lines = [{"meta": {"observation_space": INF_BOX}}, rec(action=[0.5, -2.0]), rec(action=[-1, 3])]
    box = write_jsonl(tmp_path, lines, "box.jsonl")
    with pytest.warns(TraceWarning, match=r"inferred from the data: action_space=Box\(") as record:
        trace = load_trace(box)
    assert len(record) == 1 and "observation_space" not in str(record[0].message)
    assert trace.action_space.low.tolist() == [-1.0, -2.0] and trace.action_space.high.tolist() == [0.5, 3.0]


def test_unknown_keys_warn_once_with_their_line(tmp_path):
    path = write_jsonl(tmp_path, [META, rec(), rec(extra=1), rec(extra=2)])
    with pytest.warns(TraceWarning) as record:
        load_trace(path)
    assert [str(w.message) for w in record] == [f"{path}:3: ignoring unknown keys ['extra']"]


def test_inconsistent_next_obs_warns(tmp_path):
    lines = [META, rec(next_obs=[1.0, 1.0]), rec(obs=[1.0, 1.0]), rec(obs=[2.0, 2.0]), rec(1, obs=[5.0, 5.0])]
    path = write_jsonl(tmp_path, lines)
    with pytest.warns(TraceWarning, match=f'{path}:4: field "obs": differs from the previous line') as record:
        load_trace(path)
    assert len(record) == 1 and "1 such lines" in str(record[0].message)  # the new episode on line 5 is fine


# ---- bad NPZ -------------------------------------------------------------------------------


def rewrite_npz(path: Path, **changes) -> Path:
    """Re-save the archive at `path` with arrays replaced (None: dropped)."""
    with np.load(path) as data:
        arrays = {**data, **changes}
    np.savez(path, **{name: array for name, array in arrays.items() if array is not None})
    return path


BAD_NPZ = {  # case: (changes to tiny()'s arrays, location, field, expected text)
    "nan reward": (dict(reward=np.array([1, 2, 3, np.nan, 5], np.float32)), "row 3", "reward", "finite numbers"),
    "inf next_obs": (dict(next_obs=np.full((5, 2), np.inf, np.float32)), "row 0", "next_obs", "finite numbers"),
    "obs shape": (dict(obs=np.zeros((5, 3), np.float32)), None, "obs", "shape (N, 2)"),
    "reward rows": (dict(reward=np.zeros(4, np.float32)), None, "reward", "shape (5,)"),
    "terminated dtype": (dict(terminated=np.zeros(5)), None, "terminated", "bool"),
    "action dtype": (dict(action=np.zeros(5)), None, "action", "int64"),
    "action range": (dict(action=np.array([0, 1, 7, 0, 1])), "row 2", "action", "an action in 0..1"),
    "episode order": (dict(episode=np.array([0, 0, 1, 0, 1])), "row 3", "episode", "contiguous"),
    "episode ids": (dict(episode_ids=np.array(["a"])), None, "episode_ids", "expected 2 ids"),
}


@pytest.mark.parametrize("case", BAD_NPZ)
def test_bad_npz_names_file_row_and_field(case, tmp_path):
    changes, location, field, expected = BAD_NPZ[case]
    path = rewrite_npz(save_trace(tiny(), tmp_path / "bad.npz"), **changes)
    with pytest.raises(TraceError) as error:
        load_trace(path)
    message = str(error.value)
    assert message.startswith(f"{path}: {location + ': ' if location else ''}field \"{field}\": "), message
    assert expected in message, message


def test_npz_missing_array_or_not_an_archive(tmp_path):
    path = rewrite_npz(save_trace(tiny(), tmp_path / "bad.npz"), reward=None)
    with pytest.raises(TraceError, match=r"bad\.npz: missing arrays \['reward'\]"):
        load_trace(path)
    path.write_text("not a zip")
    with pytest.raises(TraceError, match=r"bad\.npz: expected an \.npz archive"):
        load_trace(path)


# ---- direct construction -------------------------------------------------------------------

BAD_TRACE = {  # case: (changes to tiny(), field, expected text)
    "reward length": (dict(reward=[1, 2, 3]), "reward", "shape (5,)"),
    "next_obs width": (dict(next_obs=np.zeros((5, 3))), "next_obs", "shape (5, 2)"),
    "empty": (dict(obs=np.zeros((0, 2))), "obs", "at least one transition"),
    "ragged obs": (dict(obs=[[0, 0], [1]] + [[0, 0]] * 3), "obs", "expected an array"),
    "episode start": (dict(episode=[1, 1, 1, 1, 1]), "episode", "in order of first appearance"),
    "duplicate ids": (dict(episode_ids=["a", "a"]), "episode_ids", "distinct"),
    "obs space": (dict(observation_space=spaces.Discrete(3)), "observation_space", "1-d Box"),
    "action space": (dict(action_space=spaces.Discrete(2, start=1)), "action_space", "Discrete(n)"),
    "feedback row": (dict(feedback={5: "past the end"}), "feedback", "row in 0..4"),
    "info length": (dict(info=[{}]), "info", "a list of 5 dicts"),
}


@pytest.mark.parametrize("case", BAD_TRACE)
def test_bad_trace_fields(case):
    changes, field, expected = BAD_TRACE[case]
    with pytest.raises(TraceError) as error:
        tiny(**changes)
    assert f'field "{field}"' in str(error.value) and expected in str(error.value), str(error.value)
