"""Reading a run back: `dreamer.inspect`'s API and CLI, and `python -m dreamer.write`."""

import json
import shutil

import gymnasium
import numpy as np
import pytest
from conftest import run_module

from dreamer.inspect import Run, dream_rollouts, latest_run, one_step, open_loop, render_states
from dreamer.inspect.__main__ import main as inspect_main
from dreamer.sandbox import SandboxConfig
from dreamer.sim import FuncSim
from dreamer.traces import TraceWarning, collect_trace, save_trace
from dreamer.pipelines import compose_config, run as write_run


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A `dreamer.write` run dir (symbolic writer) on a random-action CartPole session."""
    folder = tmp_path_factory.mktemp("write")
    path = save_trace(collect_trace(gymnasium.make("CartPole-v1"), 1000, seed=3), folder / "session.jsonl")
    run_dir = folder / "run"
    write_run(compose_config("write", [f"trace.path={path}"]), run_dir)
    return run_dir


def test_a_write_run_reads_back_with_every_artifact(written):
    run = Run.load(written)
    assert run.metrics["pipeline"] == "write" and run.metrics["accepted"] is True
    assert run.metrics["coverage_warnings"] == []  # both splits terminate; one reward, paid in both
    train, held_out = run.split
    assert len(train) + len(held_out) == len(run.trace) == 1000
    assert not set(train.episode_ids) & set(held_out.episode_ids)
    assert run.report.accepted and run.report.fidelity.transitions == len(held_out)
    assert [c["label"] for c in run.candidates] == ["symbolic"] and run.candidates[0]["report"].accepted
    assert run.source == (written / "env" / "dream.py").read_text()
    assert run.history == []  # nothing was trained
    assert latest_run(written.parent) == written


def test_one_step_is_the_sandbox_own_figure(written):
    run = Run.load(written)
    step = one_step(run.sim(), run.held_out, SandboxConfig.from_dict(run.config["sandbox"]))
    np.testing.assert_allclose(step.nrmse, run.report.fidelity.obs_nrmse, rtol=1e-6)
    counts = step.confusion()
    assert counts.sum() == len(run.held_out)
    assert np.trace(counts) / counts.sum() == pytest.approx(run.report.fidelity.termination_accuracy)


def test_open_loop_with_the_true_physics_retraces_the_real_episodes(cartpole_source, held_out):
    sim = FuncSim.from_source(cartpole_source, "cartpole")
    replays = open_loop(sim, held_out, 40, [0, 1, 2])
    for replay, rows in zip(replays, held_out.episode_slices()):
        steps = min(rows.stop - rows.start, 40)
        assert replay.obs.shape == replay.predicted_obs.shape == (steps + 1, 4)
        np.testing.assert_allclose(replay.predicted_obs, replay.obs, atol=1e-4)
        np.testing.assert_array_equal(replay.reward, held_out.reward[rows][:steps])


def test_open_loop_shows_a_wrong_sim_drifting(cartpole_source, held_out):
    wrong = FuncSim.from_source(cartpole_source.replace("GRAVITY = 9.8", "GRAVITY = 20.0"), "heavy")
    assert wrong.source != cartpole_source, "the fixture's gravity constant moved: update this test"
    [replay] = open_loop(wrong, held_out, 40, [0])
    assert np.abs(replay.predicted_obs[-1] - replay.obs[-1]).max() > 1e-2


def test_dream_rollouts_end_each_episode_once(cartpole_source):
    sim = FuncSim.from_source(cartpole_source, "cartpole")
    dream = dream_rollouts(sim, 6, 500, seed=0)
    ended = dream.terminated | dream.truncated
    assert (ended.sum(0) == 1).all(), "every env runs exactly one episode"
    lengths = ended.argmax(0) + 1
    np.testing.assert_array_equal(dream.returns(), lengths)  # CartPole pays 1 per step
    for env, length in enumerate(lengths):
        assert dream.episode(env).shape == (length + 1, 4)
        assert np.isnan(dream.obs[length + 1:, env]).all()


def test_frames_are_drawn_only_where_the_state_is_the_observation(held_out):
    frames = render_states("CartPole-v1", held_out.obs[:3])
    assert frames.shape[0] == 3 and frames.shape[-1] == 3 and frames.dtype == np.uint8
    assert not np.array_equal(frames[0], frames[2]), "different states draw different frames"
    pendulum = collect_trace(gymnasium.make("Pendulum-v1"), 5, seed=0)  # obs (cos, sin, velocity); state (angle, velocity)
    assert render_states("Pendulum-v1", pendulum.obs) is None


def test_inspect_cli_summarises_a_finished_training_run(dream_run, capsys):
    inspect_main([str(dream_run)])
    out = capsys.readouterr().out
    for section in ("Trace", "Writer candidates", "Sandbox report", "Held-out fidelity", "Training curves",
                    "Real vs dream returns"):
        assert section in out, section
    metrics = json.loads((dream_run / "metrics.json").read_text())
    assert f"{metrics['real_return_mean']:.4g}" in out
    assert "dream return of the kept policy" in out and "dream - real return" in out
    assert "leaves the session's support" in out and f"in {metrics['support_leaving_share']:.1%} of" in out


@pytest.mark.parametrize("metrics, outcome", [
    (None, "not started"),
    ({"status": "running"}, "running"),
    ({"status": "failed", "error": "NoTaskSignal: the session never showed a reward"}, "failed: NoTaskSignal: the session never"),
    ({"status": "finished", "accepted": False}, "finished, sim rejected"),
    ({"status": "finished", "accepted": True}, "finished, sim accepted"),
    ({"status": "finished", "opsd": {}}, "finished"),
])
def test_inspect_heads_a_run_with_its_true_outcome(written, tmp_path, capsys, metrics, outcome):
    """A run whose sim the sandbox rejected once read "finished" like one that trained a policy."""
    run_dir = tmp_path / "run"
    shutil.copytree(written, run_dir)
    (run_dir / "metrics.json").unlink()
    if metrics is not None:
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    assert Run.load(run_dir).outcome.startswith(outcome)
    inspect_main([str(run_dir)])
    assert outcome in capsys.readouterr().out.replace("\n", " ")


def test_inspect_cli_names_a_folder_that_is_not_a_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        inspect_main([str(tmp_path)])
    assert exit_.value.code == 2 and "has no config.yaml" in capsys.readouterr().out


@pytest.mark.slow
def test_write_cli_prints_the_report_and_where_the_sim_is(tmp_path):
    path = save_trace(collect_trace(gymnasium.make("CartPole-v1"), 800, seed=1), tmp_path / "session.jsonl")
    run_dir = tmp_path / "run"
    done = run_module("dreamer.write", f"trace.path={path}", f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Sandbox report" in done.stderr and str(run_dir / "env" / "dream.py") in done.stderr.replace("\n", "")
    assert json.loads((run_dir / "metrics.json").read_text())["accepted"] is True
    rejected = run_module("dreamer.write", f"trace.path={path}", "sandbox.thresholds.max_obs_nrmse=1e-12",
                          f"hydra.run.dir={tmp_path / 'strict'}")
    message = " ".join(rejected.stderr.split())
    assert rejected.returncode == 1 and "the sandbox rejected the written sim (held-out one-step NRMSE per obs dim: " in message
    assert "fidelity: mean obs_nrmse" in message and f"python -m dreamer.inspect {tmp_path / 'strict'}" in message
    assert json.loads((tmp_path / "strict" / "env" / "report.json").read_text())["accepted"] is False
    again = run_module("dreamer.write", f"trace.path={path}", f"hydra.run.dir={run_dir}")
    assert again.returncode != 0 and "already holds a finished run" in again.stderr


def test_write_refuses_a_live_env_session(tmp_path):
    with pytest.raises(ValueError, match="trace.kind must be 'file'"):
        write_run(compose_config("write", ["trace=gym"]), tmp_path / "run")
    assert not (tmp_path / "run").exists(), "nothing is written before the config is checked"


def test_write_reads_a_csv_through_the_configured_column_mapping(tmp_path):
    session = collect_trace(gymnasium.make("CartPole-v1"), 600, seed=4)
    header = "run,x,x_dot,theta,theta_dot,push,r,nx,nx_dot,ntheta,ntheta_dot,fell,cut"
    rows = [",".join([session.episode_ids[e], *map(repr, o.tolist()), str(a), repr(float(r)), *map(repr, n.tolist()),
                      str(bool(d)).lower(), str(bool(c)).lower()])
            for e, o, a, r, n, d, c in zip(session.episode, session.obs, session.action, session.reward,
                                          session.next_obs, session.terminated, session.truncated)]
    (tmp_path / "log.csv").write_text("\n".join([header, *rows]) + "\n")
    cfg = compose_config("write", [f"trace.path={tmp_path / 'log.csv'}", "trace.columns.episode_column=run",
                                   "trace.columns.obs_columns=[x,x_dot,theta,theta_dot]",
                                   "trace.columns.next_obs_columns=[nx,nx_dot,ntheta,ntheta_dot]",
                                   "trace.columns.action_column=push", "trace.columns.reward_column=r",
                                   "trace.columns.terminated_column=fell", "trace.columns.truncated_column=cut",
                                   "trace.columns.action_space={type: Discrete, n: 2}"])
    with pytest.warns(TraceWarning, match="inferred from the data: observation_space=Box"):
        assert write_run(cfg, tmp_path / "run")["accepted"] is True
    read = Run.load(tmp_path / "run").trace
    for key in ("obs", "action", "reward", "next_obs", "terminated", "truncated", "episode"):
        np.testing.assert_array_equal(getattr(read, key), getattr(session, key), err_msg=key)


def test_a_column_mapping_for_a_jsonl_trace_is_refused_naming_the_key(tmp_path):
    path = save_trace(collect_trace(gymnasium.make("CartPole-v1"), 50, seed=0), tmp_path / "session.jsonl")
    cfg = compose_config("write", [f"trace.path={path}", "trace.columns.obs_columns=[x,v]"])
    with pytest.raises(ValueError, match=r"trace.columns maps the columns of .csv and .parquet files"):
        write_run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_history_leaves_out_a_last_row_cut_short_by_a_crash(written, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(written, copy)
    (copy / "history.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')
    assert Run.load(copy).history == [{"step": 1, "loss": 0.5}]
    (copy / "history.jsonl").write_text('{"step": 1, "lo\n{"step": 2, "loss": 0.5}\n')
    with pytest.raises(ValueError, match=r"history.jsonl:1: expected a JSON row"):
        Run.load(copy).history
