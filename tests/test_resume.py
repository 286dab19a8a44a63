"""Runs survive faults: a run killed with SIGKILL resumes in its run dir; bad numbers stop it honestly."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console
from conftest import TINY_DREAM, TINY_OPSD, run_module

from dreamer.pipelines import compose_config
from dreamer.inspect import Run
from dreamer.inspect.__main__ import summarise
from dreamer.resume import CHECKPOINT
from dreamer.rl import NonFiniteError
from dreamer.traces import load_trace

ROUNDS = [400, 800]
ARGS = [*TINY_DREAM, "algo.total_steps=16384", "algo.checkpoint_every=2", f"trace.steps_per_round=[{ROUNDS[0]},{ROUNDS[1]}]"]


def start(run_dir: Path, args: list[str] = ARGS) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dreamer.train", *args, f"hydra.run.dir={run_dir}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_when(process: subprocess.Popen, ready, timeout_s: float = 300) -> None:
    """SIGKILL `process` as soon as `ready()` holds (polled every 10 ms)."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert process.poll() is None, "the run ended before the moment to kill it"
        assert time.monotonic() < deadline, "the moment to kill the run never came"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()


def checkpoint_at(run_dir: Path) -> dict | None:
    try:
        return torch.load(run_dir / CHECKPOINT, weights_only=True)
    except (FileNotFoundError, EOFError, RuntimeError):
        return None


def assert_complete(run_dir: Path) -> dict:
    """The resumed run dir holds what an uninterrupted run's holds, nothing lost or twice."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["accepted"] is True and metrics["resumed"] is not None
    assert metrics["dream_env_steps"] == 2 * 16384 and metrics["real_env_steps"] == sum(ROUNDS)
    session = load_trace(run_dir / "trace.jsonl")
    assert len(session) == sum(ROUNDS) and len(set(session.episode_ids)) == session.num_episodes
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    updates = [row["step"] for row in rows if "dream/env_steps" in row]
    assert updates == list(range(1024, 2 * 16384 + 1, 1024)), "each PPO update logged exactly once, in order"
    assert sum("fidelity/accuracy" in row for row in rows) == 2, "each round's write stage logged once"
    assert sum("real/return_mean" in row for row in rows) == 1
    assert not list(run_dir.rglob(".*.tmp")), "no half-written file is left"
    return metrics


@pytest.mark.slow
def test_a_run_killed_during_training_resumes_from_its_last_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    process = start(run_dir)

    def mid_training() -> bool:
        state = checkpoint_at(run_dir)
        return state is not None and state["current"] == "round 2 PPO" and state["ppo"]["updates"] >= 4

    kill_when(process, mid_training)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "running"
    again = run_module("dreamer.train", *ARGS, f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    said = " ".join(again.stderr.split())  # rich wraps lines
    assert f'resuming {run_dir} in "round 2 PPO" at PPO update' in said
    assert "real steps" not in again.stderr, "nothing recorded again"
    assert assert_complete(run_dir)["resumed"].startswith('in "round 2 PPO" at PPO update')


@pytest.mark.slow
def test_a_run_killed_while_its_writer_works_resumes(tmp_path):
    run_dir = tmp_path / "run"
    process = start(run_dir)
    round_dir = run_dir / "env" / "round_0"
    kill_when(process, lambda: (round_dir / "split.json").exists() and not (round_dir / "report.json").exists())
    again = run_module("dreamer.train", *ARGS, f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert_complete(run_dir)


@pytest.mark.slow
def test_resuming_with_another_config_is_refused_naming_the_keys(tmp_path):
    run_dir = tmp_path / "run"
    process = start(run_dir)
    kill_when(process, lambda: checkpoint_at(run_dir) is not None)
    other = run_module("dreamer.train", *ARGS, "seed=1", f"hydra.run.dir={run_dir}")
    assert other.returncode != 0 and "holds an unfinished run with another config (seed: 0 -> 1, writer.seed: 0 -> 1)" in other.stderr


VETERAN = ["+experiment=opsd_veteran", *TINY_OPSD, "family.pretrain_steps=2048", "family.veteran_steps=2048", "seed=5"]
SELF_CONTEXT = ["+experiment=opsd_self_context", *TINY_OPSD, "family.pretrain_steps=2048", "family.seeds=[0]",
                "policy.model.hidden_size=16", "policy.model.intermediate_size=32", "policy.model.num_hidden_layers=1",
                "algo.total_steps=8192", "algo.checkpoint_every=1"]


def history_without_timings(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return [{key: value for key, value in row.items() if not key.endswith("steps_per_second")} for row in rows]


@pytest.mark.slow
def test_an_opsd_run_resumed_after_a_stage_ends_with_the_numbers_of_an_uninterrupted_one(tmp_path):
    """Killed once the base is trained: the resumed run skips the base and redraws, from the RNG state saved
    when the base ended, exactly the numbers of an uninterrupted run: every figure and every history row."""
    whole = run_module("dreamer.train", *VETERAN, f"hydra.run.dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]
    run_dir = tmp_path / "cut"
    process = start(run_dir, VETERAN)
    kill_when(process, lambda: "base" in (checkpoint_at(run_dir) or {"done": {}})["done"])
    again = run_module("dreamer.train", *VETERAN, f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    said = " ".join(again.stderr.split())
    assert f'resuming {run_dir} after "base"' in said or f'resuming {run_dir} in "veteran"' in said
    figures = [json.loads((path / "metrics.json").read_text())["opsd"] for path in (tmp_path / "whole", run_dir)]
    for opsd in figures:
        del opsd["last_update"]["steps_per_second"]
    assert figures[0] == figures[1]
    assert history_without_timings(run_dir) == history_without_timings(tmp_path / "whole")
    assert not list(run_dir.rglob(".*.tmp"))


@pytest.mark.slow
def test_an_opsd_run_killed_mid_consolidation_resumes_from_its_last_ppo_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    process = start(run_dir, SELF_CONTEXT)

    def mid_consolidation() -> bool:
        state = checkpoint_at(run_dir)
        return state is not None and state["current"] == "seed 0 opsd" and 2 <= state["ppo"]["updates"] < 8

    kill_when(process, mid_consolidation)
    again = run_module("dreamer.train", *SELF_CONTEXT, f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f'resuming {run_dir} in "seed 0 opsd" at PPO update' in " ".join(again.stderr.split())
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    steps = lambda key: [row["step"] for row in rows if key in row]  # noqa: E731
    assert steps("pretrain/policy_loss") == [1024, 2048]
    for method, start_step in (("opsd", 2048), ("ppo", 2048 + 8192)):
        assert steps(f"seed_0/{method}/policy_loss") == [start_step + 1024 * k for k in range(1, 9)], "each update once"
        assert steps(f"seed_0/{method}/student_return") == [start_step + 1024 * k for k in range(9)], "each evaluation once"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished"
    (run,) = metrics["opsd"]["runs"]
    assert [row["env_steps"] for row in run["curves"]["opsd"]] == [1024 * k for k in range(9)]
    assert "opsd/divergence_raw" in run["last_update"]["opsd"]
    assert (run_dir / "seed_0" / "opsd" / "policy.pt").is_file() and not list(run_dir.rglob(".*.tmp"))


def test_bad_numbers_fail_the_run_honestly(tmp_path, monkeypatch):
    """NaN in training: metrics.json says failed and counts it, the details are saved, the checkpoint kept."""
    from dreamer import pipelines
    from dreamer.pipelines import dream

    def nan_training(*args, checkpoint, **kwargs):
        raise NonFiniteError("env", "the env returned a non-finite reward at env step 1,024 (env 3): ...",
                             {"obs": [0.1, 0.0, 0.0, 0.0], "action": 1, "next_obs": [0.1, 0.0, 0.0, 0.0], "reward": None})

    monkeypatch.setattr(dream, "train_ppo", nan_training)
    cfg = compose_config("train", [*ARGS, "trace.steps_per_round=[300]"])
    with pytest.raises(NonFiniteError):
        pipelines.run(cfg, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["nonfinite"]["count"] == 1 and "non-finite reward" in metrics["error"]
    saved = json.loads((tmp_path / "run" / "nonfinite.json").read_text())
    assert saved["where"] == "env" and saved["details"]["obs"] == [0.1, 0.0, 0.0, 0.0]
    assert list(checkpoint_at(tmp_path / "run")["done"]) == ["round 1 write"], "the last good checkpoint stays"
    console = Console(record=True, width=200)
    summarise(Run.load(tmp_path / "run"), console)
    shown = console.export_text()
    assert "Bad numbers stopped the run (in the env)" in shown and "[0.1, 0.0, 0.0, 0.0]" in shown


@pytest.mark.parametrize("error, status", [(RuntimeError("the writer's server went away"), "failed"),
                                           (KeyboardInterrupt(), "interrupted")])
def test_a_run_that_stops_on_an_error_says_so_and_resumes(tmp_path, monkeypatch, error, status):
    from dreamer import pipelines
    from dreamer.pipelines import dream

    def stopping(*args, **kwargs):
        raise error

    cfg = compose_config("train", [*ARGS, "trace.steps_per_round=[300]"])
    monkeypatch.setattr(dream, "train_ppo", stopping)
    with pytest.raises(type(error)):
        pipelines.run(cfg, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == status and metrics["error"].startswith(type(error).__name__)
    monkeypatch.undo()
    resumed = pipelines.run(cfg, tmp_path / "run")
    assert resumed["status"] == "finished" and resumed["resumed"] == 'after "round 1 write"'


def test_a_folder_that_holds_other_files_is_never_written_into(tmp_path):
    from dreamer import pipelines

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not empty and holds no run"):
        pipelines.run(compose_config("train", ARGS), tmp_path / "run")
    assert [path.name for path in (tmp_path / "run").iterdir()] == ["notes.txt"]
