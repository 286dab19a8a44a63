"""TraceRecorder with a file: episodes appended as they end, feedback, continuing a file, and a
real crash (SIGKILL) losing only the episode being recorded."""

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from dreamer.traces import TraceError, TraceRecorder, collect_trace, load_trace, save_trace

ROOT = Path(__file__).resolve().parent.parent


def finish_episode(recorder: TraceRecorder, action: int = 1) -> int:
    """Step with `action` until the episode ends (pushing one way topples CartPole soon); returns its length."""
    steps, done = 0, False
    while not done:
        _, _, terminated, truncated, _ = recorder.step(action)
        steps, done = steps + 1, terminated or truncated
    return steps


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_episodes_are_appended_as_they_end(tmp_path):
    path = tmp_path / "runs" / "session.jsonl"
    recorder = TraceRecorder(gym.make("CartPole-v1"), path)
    recorder.reset(seed=0)
    recorder.step(0)
    assert not path.exists()  # nothing has ended yet
    first = 1 + finish_episode(recorder)
    on_disk = load_trace(path)
    assert on_disk == recorder.trace() and len(on_disk) == first and on_disk.terminated[-1]
    assert (on_disk.name, on_disk.max_episode_steps) == ("CartPole-v1", 500)

    recorder.reset()
    for _ in range(3):
        recorder.step(0)
    assert len(load_trace(path)) == first  # the running episode is not in the file
    recorder.reset()  # cuts it: written, marked truncated
    cut = load_trace(path)
    assert cut.episode_ids == ["0", "1"] and len(cut) == first + 3 and cut.truncated.tolist()[-1]

    recorder.reset()
    recorder.step(0)
    recorder.close()  # writes the running episode
    closed = load_trace(path)
    assert closed == recorder.trace() and closed.episode_ids == ["0", "1", "2"] and closed.truncated[-1]
    assert len(lines(path)) == 1 + len(closed)  # the meta line and one line per transition


def test_feedback_before_and_after_the_episode_is_written(tmp_path):
    path = tmp_path / "session.jsonl"
    recorder = TraceRecorder(gym.make("CartPole-v1"), path)
    with pytest.raises(TraceError, match="no step to give feedback on yet"):
        recorder.add_feedback("too early")
    with pytest.raises(TraceError, match="no episode to give feedback on yet"):
        recorder.add_episode_feedback("too early")
    recorder.reset(seed=0)
    recorder.step(1)
    recorder.add_feedback("first step")  # the running episode: written with it
    recorder.add_episode_feedback("while running")
    length = 1 + finish_episode(recorder)
    records = len(lines(path))
    recorder.add_feedback("on the last step")  # in the file already: appended as records
    recorder.add_feedback("and again")
    recorder.add_episode_feedback("after the end")
    assert lines(path)[records:] == [
        {"episode": "0", "step": length - 1, "feedback": "on the last step"},
        {"episode": "0", "step": length - 1, "feedback": "and again"},
        {"episode": "0", "feedback": "after the end"},
    ]
    recorder.reset()
    recorder.step(0)
    recorder.add_episode_feedback("second")
    recorder.close()

    trace = load_trace(path)
    assert trace.feedback == {0: "first step", length - 1: "on the last step\nand again"}
    assert trace.episode_feedback == {0: "while running\nafter the end", 1: "second"}
    assert trace == recorder.trace()


def test_reopening_continues_the_file(tmp_path):
    path = tmp_path / "session.jsonl"
    first = TraceRecorder(gym.make("CartPole-v1"), path)
    first.reset(seed=0)
    finish_episode(first)
    first.add_feedback("end of the first session")
    first.close()

    second = TraceRecorder(gym.make("CartPole-v1"), path)
    assert second.trace() == load_trace(path)  # before any step it holds the file
    second.add_episode_feedback("said later")  # the file's last episode
    second.reset(seed=1)
    finish_episode(second, action=0)
    second.close()
    trace = load_trace(path)
    assert trace.episode_ids == ["0", "1"] and trace == second.trace()
    assert trace.episode_feedback == {0: "said later"} and trace.feedback[trace.episode_starts()[1] - 1] == (
        "end of the first session")

    with pytest.raises(TraceError, match=rf'^{path}: field "observation_space": expected the env\'s Box'):
        TraceRecorder(gym.make("Pendulum-v1"), path)
    with pytest.raises(TraceError, match=r"expected a \.jsonl path"):
        TraceRecorder(gym.make("CartPole-v1"), tmp_path / "session.npz")


def test_new_ids_follow_the_files_ids(tmp_path):
    trace = collect_trace(gym.make("CartPole-v1"), 40, seed=0)
    trace = trace.select_episodes([0, 1])
    path = save_trace(replace(trace, episode_ids=["warmup", "7"]), tmp_path / "session.jsonl")
    recorder = TraceRecorder(gym.make("CartPole-v1"), path)
    recorder.reset(seed=2)
    recorder.step(0)
    assert recorder.trace().episode_ids == ["warmup", "7", "8"]


def test_without_a_path_feedback_stays_in_memory(tmp_path):
    recorder = TraceRecorder(gym.make("CartPole-v1"))
    recorder.reset(seed=0)
    finish_episode(recorder)
    recorder.add_feedback("fell")
    recorder.add_episode_feedback("bad run")
    recorder.close()
    trace = recorder.trace()
    assert trace.feedback == {len(trace) - 1: "fell"} and trace.episode_feedback == {0: "bad run"}
    assert list(tmp_path.iterdir()) == []


CHILD = """
import sys
import gymnasium as gym
from dreamer.traces import TraceRecorder, save_trace

path, snapshot, episodes = sys.argv[1], sys.argv[2], int(sys.argv[3])
recorder = TraceRecorder(gym.make("CartPole-v1"), path)
recorder.action_space.seed(0)
recorder.reset(seed=0)
finished = 0
while finished < episodes:
    _, _, terminated, truncated, _ = recorder.step(recorder.action_space.sample())
    if terminated or truncated:
        finished += 1
        recorder.reset()
for _ in range(3):  # into the next episode
    recorder.step(recorder.action_space.sample())
recorder.add_feedback("about the running episode")
save_trace(recorder.trace().select_episodes(range(episodes)), snapshot)
print("ready", flush=True)
input()  # wait to be killed
"""


def test_a_crash_loses_only_the_running_episode(tmp_path):
    path, snapshot = tmp_path / "session.jsonl", tmp_path / "finished.npz"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(snapshot), "5"], cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    trace = load_trace(path)
    assert trace == load_trace(snapshot)
    assert trace.episode_ids == ["0", "1", "2", "3", "4"]
    ends = np.append(trace.episode_starts()[1:], len(trace)) - 1
    assert (trace.terminated | trace.truncated)[ends].all()  # each episode complete
