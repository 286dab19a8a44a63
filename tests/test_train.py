"""End to end: `python -m dreamer.train` with tiny budgets, and the config's start-up checks."""

import dataclasses
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dreamer import load_policy, load_sim, load_trace
from dreamer.traces import collect_trace, save_trace
from conftest import TINY_DREAM, TINY_OPSD, run_module

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
TARGETS = OmegaConf.load(ROOT / "benchmarks" / "targets.yaml")  # benchmarks/sample_efficiency.py's
TINY = TINY_DREAM
METRIC_KEYS = {
    "real_env_steps", "dream_env_steps", "real_return_mean", "real_return_std", "real_eval_episodes",
    "fidelity", "accepted", "writer", "wall_seconds", "seed",
}


def train(*overrides: str) -> subprocess.CompletedProcess:
    return run_module("dreamer.train", *overrides)


@pytest.mark.slow
def test_default_run_writes_a_complete_run_dir(dream_run):
    run_dir = dream_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert METRIC_KEYS <= metrics.keys()
    assert metrics["accepted"] is True and metrics["writer"] == "symbolic" and metrics["resumed"] is None
    assert metrics["real_env_steps"] == 1200 and metrics["real_eval_episodes"] == 2
    assert metrics["sim_compile_seconds"] is None  # TINY_DREAM steps eagerly (sim.compile=false)
    assert metrics["dream_env_steps"] == 2 * 4096
    assert metrics["fidelity"]["obs_nrmse_mean"] < 0.05
    assert 0 <= metrics["support_leaving_share"] <= 1  # of the kept policy's dream episodes (sim.support)
    session = load_trace(run_dir / "trace.jsonl")
    assert len(session) == 1200
    assert load_sim(run_dir).action_space.n == 2
    assert json.loads((run_dir / "env" / "report.json").read_text())["accepted"] is True
    assert (run_dir / "env" / "round_0" / "dream.py").is_file()
    split = json.loads((run_dir / "env" / "split.json").read_text())
    assert sorted(split["train_episodes"] + split["held_out_episodes"], key=int) == session.episode_ids
    selection = json.loads((run_dir / "env" / "search" / "selection.json").read_text())
    assert selection["chosen"] == "symbolic" and (run_dir / "env" / "search" / "symbolic" / "sim.py").is_file()
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    updates = [row for row in history if "dream/episode_return_mean" in row]
    assert len(updates) == 2 * 4096 // (32 * 32) and updates[-1]["step"] == 2 * 4096
    assert history[-1]["real/return_mean"] == metrics["real_return_mean"]
    policy = load_policy(run_dir)
    assert policy.act([0.0, 0.0, 0.0, 0.0]) in (0, 1)
    # A finished run dir is never overwritten.
    again = train(*TINY, "trace.steps_per_round=[400]", f"hydra.run.dir={run_dir}")
    assert again.returncode != 0 and "already holds a finished run" in again.stderr


@pytest.mark.slow
def test_the_default_run_balances_the_real_cartpole(tmp_path):
    """`python -m dreamer.train` as a new user runs it (seed 0, 5,000 real steps): its policy scored 185 before
    the obs statistics followed the rollouts, each round's policy started fresh, one-sided bounds were read as
    two-sided and the value clip went."""
    run_dir = tmp_path / "run"
    done = train("logger=none", "algo.progress=false", f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["real_env_steps"] == 5000
    assert metrics["real_return_mean"] >= 475
    assert metrics["dream_return_mean"] >= 475 and metrics["large_gap"] is False
    assert metrics["support_leaving_share"] < 0.05 and "leaves the session's support" in done.stderr  # (sim.support)
    assert metrics["picked_round"] == 2 and list(metrics["dream_returns_by_round"]) == ["1", "2"]
    assert "dream - real return" in done.stderr and "LARGE" not in done.stderr
    assert metrics["sim_compile_seconds"] > 0 and "(sim step compiled in" in done.stderr  # sim.compile=true by default


@pytest.mark.slow
def test_from_trace_trains_without_a_live_env(tmp_path):
    import gymnasium

    path = save_trace(collect_trace(gymnasium.make("CartPole-v1"), 1500, seed=4), tmp_path / "session.jsonl")
    run_dir = tmp_path / "run"
    done = train("+experiment=from_trace", f"trace.path={path}", *TINY, f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["real_return_mean"] is None and metrics["real_eval_episodes"] == 0
    assert metrics["real_env_steps"] == 1500 and metrics["accepted"] is True
    assert (run_dir / "policy" / "policy.pt").is_file()


def test_unknown_config_key_fails_before_any_work(tmp_path):
    done = train(*TINY, "+algo.learning_rat=0.1", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode != 0
    assert "algo.learning_rat" in done.stderr and "allowed keys" in done.stderr
    assert not (tmp_path / "run" / "trace.jsonl").exists()


def test_from_trace_without_a_path_names_the_missing_value(tmp_path):
    done = train("+experiment=from_trace", *TINY, f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode != 0 and "['trace.path'] must be set" in done.stderr
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.parametrize("experiment, env_id", [("cartpole", "CartPole-v1"), ("pendulum", "Pendulum-v1"), (None, "CartPole-v1"),
                                                ("acrobot", "Acrobot-v1"), ("mountain_car", "MountainCarContinuous-v0")])
def test_experiments_compose_as_written_within_their_real_step_targets(experiment, env_id):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={experiment}"] if experiment else [])
    assert cfg.trace.env_id == env_id and cfg.eval.env_id == env_id
    target = TARGETS[experiment or "cartpole"]  # the default run is the cartpole experiment's
    if target is not None:
        assert sum(cfg.trace.steps_per_round) <= target["max_real_steps"]


@pytest.mark.slow
def test_a_rejected_sim_ends_the_run_with_its_reasons(tmp_path):
    run_dir = tmp_path / "run"
    done = train(*TINY, "trace.steps_per_round=[400]", "sandbox.thresholds.max_obs_nrmse=1e-12", f"hydra.run.dir={run_dir}")
    assert done.returncode != 0 and "the sandbox rejected the written sim (held-out one-step NRMSE per obs dim:" in done.stderr
    assert "No policy was trained. What can help: a longer session" in done.stderr.replace("\n", " ")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["accepted"] is False and metrics["dream_env_steps"] == 0
    assert any("max_obs_nrmse" in reason for reason in metrics["reasons"])
    assert json.loads((run_dir / "env" / "report.json").read_text())["accepted"] is False
    assert not (run_dir / "policy").exists()
    with pytest.raises(ValueError, match="rejected"):
        load_sim(run_dir)  # a rejected sim is never loaded in-process


def test_a_cuda_device_on_a_machine_without_one_is_refused():
    import torch

    from dreamer.config import resolve_device

    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.slow
def test_llm_writer_replays_recorded_completions_end_to_end(tmp_path):
    examples = ROOT / "examples" / "completions" / "cartpole"
    run_dir = tmp_path / "run"
    done = train("+experiment=cartpole", "writer=llm", "writer.backend=replay", f"writer.replay_dir={examples}",
                 "writer.cache_dir=null", *TINY, "trace.steps_per_round=[1000,1000]", f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["accepted"] is True and metrics["writer"] == "llm"
    assert metrics["sim_candidate"] == "previous", "round 2 keeps round 1's sim: it still fits the new data"
    search = run_dir / "env" / "round_0" / "search"
    assert json.loads((search / "selection.json").read_text())["chosen"] == "iter_2/candidate_1"
    assert (search / "iter_1" / "candidate_4" / "completion.md").read_text() == (examples / "04.md").read_text()
    assert json.loads((run_dir / "env" / "search" / "previous" / "report.json").read_text())["accepted"] is True
    assert load_sim(run_dir).action_space.n == 2




@pytest.mark.slow
def test_dream_loop_distils_from_a_checkpoint_teacher(tmp_path):
    veteran_dir, run_dir = tmp_path / "veteran", tmp_path / "run"
    done = train(*TINY, "trace.steps_per_round=[400]", f"hydra.run.dir={veteran_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    done = train(*TINY, "trace.steps_per_round=[400]", "opsd.enabled=true", f"opsd.teacher.path={veteran_dir}",
                 f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    opsd = json.loads((run_dir / "metrics.json").read_text())["opsd"]
    assert opsd["setting"] == "checkpoint" and opsd["teacher"] == str(veteran_dir)
    assert opsd["last_update"]["aux_weight"] == 1.0 and opsd["last_update"]["opsd/divergence_raw"] >= 0
    assert opsd["teacher_return_real"] is not None and opsd["teacher_student_gap_real"] is not None


def test_the_dream_loop_refuses_opsd_without_a_veteran_before_any_work(tmp_path):
    done = train(*TINY, "opsd.enabled=true", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode != 0 and "opsd.teacher.path=RUN_DIR" in done.stderr
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.slow
def test_opsd_veteran_pipeline_reports_every_policy_on_every_variant(tmp_path):
    run_dir = tmp_path / "run"
    done = train("+experiment=opsd_veteran", *TINY_OPSD, "family.pretrain_steps=4096", "family.veteran_steps=4096",
                 f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    opsd = metrics["opsd"]
    assert metrics["pipeline"] == "opsd_veteran" and opsd["setting"] == "veteran"
    assert set(opsd["real_returns"]) == {"base", "veteran", "consolidated"}
    assert all(set(per_variant) == {"A", "B", "C"} for per_variant in opsd["real_returns"].values())
    assert len(opsd["claims"]) == 3 and all(isinstance(ok, bool) for ok in opsd["claims"].values())
    assert opsd["curve"][0]["env_steps"] == 0 and {"return_A", "return_B", "return_C"} <= opsd["curve"][-1].keys()
    assert "opsd/anchor_kl" in opsd["last_update"] and "opsd/teacher_entropy" in opsd["last_update"]
    for name in ("base", "veteran", "policy"):
        assert load_policy(run_dir / name).act([0.0, 0.0, 1.0]) in range(5)


@pytest.mark.slow
def test_an_opsd_run_is_reproduced_by_its_seed(tmp_path):
    figures = []
    for name in ("first", "second"):
        done = train("+experiment=opsd_veteran", *TINY_OPSD, "family.pretrain_steps=2048", "family.veteran_steps=2048",
                     "seed=5", f"hydra.run.dir={tmp_path / name}")
        assert done.returncode == 0, done.stderr[-3000:]
        opsd = json.loads((tmp_path / name / "metrics.json").read_text())["opsd"]
        last_update = {key: value for key, value in opsd["last_update"].items() if key != "steps_per_second"}  # a timing
        figures.append((last_update, opsd["curve"], opsd["real_returns"]))
    assert figures[0] == figures[1]
    assert figures[0][0]["policy_loss"] != 0 and figures[0][0]["opsd/divergence_raw"] > 0  # real figures were compared


@pytest.mark.slow
def test_opsd_self_context_pipeline_compares_opsd_with_ppo_alone(self_context_run):
    run_dir = self_context_run
    opsd = json.loads((run_dir / "metrics.json").read_text())["opsd"]
    assert opsd["setting"] == "self_context" and [run["seed"] for run in opsd["runs"]] == [0, 1]
    for run in opsd["runs"]:
        assert set(run["curves"]) == {"opsd", "ppo"} and set(run["samples_to_level"]) == {"opsd", "ppo"}
        assert {"student_return", "teacher_return", "teacher_student_gap", "retention_return"} <= run["curves"]["opsd"][-1].keys()
        assert run["curves"]["opsd"][-1]["env_steps"] == 2048
        assert "opsd/divergence_raw" in run["last_update"]["opsd"] and "opsd/divergence_raw" not in run["last_update"]["ppo"]
        assert len(run["context"]) == 2 and (run_dir / f"seed_{run['seed']}" / "trace.jsonl").is_file()
    summary = opsd["summary"]
    assert {"teacher_return_real", "student_return_real_after_opsd", "sample_ratio_ppo_over_opsd", "retention_drop_opsd", "retention_drop_ppo"} <= summary.keys()
    assert len(summary["claims"]) == 3
    assert load_policy(run_dir / "pretrained").context_dims == 2


@pytest.mark.slow
def test_opsd_self_context_runs_a_local_pretrained_lm_through_the_text_codec(tmp_path):
    from tiny_lm import build_tiny_causal_lm

    model_path = build_tiny_causal_lm(tmp_path / "lm")
    run_dir = tmp_path / "run"
    done = train("+experiment=opsd_self_context", *TINY_OPSD, "family.pretrain_steps=256", "family.seeds=[0]",
                 "family.eval_episodes=4", "algo.num_envs=8", "algo.num_steps=32", "algo.total_steps=256",
                 "opsd.anchors.states=16", "opsd.anchors.batch=8", "policy.codec=text", f"policy.model_path={model_path}",
                 "policy.action_names=[stay,right,left,up,down]", "policy.template='{context} {observation}'",
                 f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((run_dir / "metrics.json").read_text())["opsd"]["runs"][0]
    assert "opsd/divergence_raw" in run["last_update"]["opsd"] and len(run["curves"]["opsd"]) == 2
    student = load_policy(run_dir / "seed_0" / "opsd")
    assert student.config.codec == "text" and (run_dir / "seed_0" / "opsd" / "model" / "config.json").is_file()
    assert student.act([0.1, -0.2]) in range(5)


def test_a_session_that_never_shows_the_goal_stops_before_any_sim_is_written(tmp_path):
    import gymnasium

    session = collect_trace(gymnasium.make("Acrobot-v1"), 600, seed=0)  # reward -1 throughout, nothing terminates
    assert not session.terminated.any() and len(set(session.reward.tolist())) == 1
    path = save_trace(session, tmp_path / "acrobot.jsonl")
    run_dir = tmp_path / "run"
    done = train("+experiment=from_trace", f"trace.path={path}", *TINY, f"hydra.run.dir={run_dir}")
    assert done.returncode != 0
    assert "stopped: the session of" in done.stderr and "shows one reward (-1) at every step" in done.stderr
    assert not (run_dir / "env").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["error"].startswith("NoTaskSignal")


def test_the_summary_says_when_the_held_out_episodes_cannot_vouch_for_termination():
    """MountainCarContinuous's random session never reached the goal: "termination accuracy 1" read as a
    perfect `terminal` although nothing in the held-out data could test it."""
    from pathlib import Path

    from dreamer.pipelines.dream import termination_figure
    from dreamer.sandbox import SandboxReport

    fidelity = SandboxReport.load(Path(__file__).parents[1] / "envs" / "cartpole_dream" / "report.json").fidelity
    assert fidelity.terminations is None  # written before the counts: the figure says what it knows
    assert termination_figure(fidelity).startswith(f"{fidelity.termination_accuracy:.4g} (recall of the real terminations")
    counted = dataclasses.replace(fidelity, termination_accuracy=0.996, termination_recall=0.9, terminations=20,
                                  predicted_terminations=21, termination_precision=18 / 21)
    assert termination_figure(counted) == ("0.996 (caught 18 of 20 real terminations, recall 0.9; "
                                           "3 predicted where none happened)")
    never = dataclasses.replace(fidelity, termination_accuracy=1.0, termination_recall=None)
    assert termination_figure(never) == "1 (untested: the held-out episodes never terminate)"
    never_called = dataclasses.replace(never, termination_accuracy=0.99, terminations=0, predicted_terminations=4)
    assert termination_figure(never_called) == ("0.99 (untested: the held-out episodes never terminate; "
                                                "the sim calls 4 of their steps terminal)")
    assert termination_figure(None) == "—"


def test_the_summary_flags_a_dream_return_the_real_env_does_not_give_back():
    from dreamer.pipelines.dream import Pick, dream_vs_real, summary_table
    from rich.console import Console

    pick = Pick(round=2, dream_returns={1: 150.0, 2: 500.0}, random_return=20.0)
    honest, exploited = dream_vs_real(pick, np.array([490.0]), 0.25), dream_vs_real(pick, np.array([150.0]), 0.25)
    assert honest["dream_real_gap"] == 10.0 and honest["dream_real_gap_fraction"] == 10 / 480 and not honest["large_gap"]
    assert exploited["dream_real_gap_fraction"] == 350 / 480 and exploited["large_gap"]
    assert dream_vs_real(Pick(1, {1: -1000.0}, -900.0), np.array([-1200.0]), 0.25)["dream_real_gap_fraction"] is None
    base = {"accepted": True, "writer": "auto", "sim_candidate": "neural/neural",
            "writers_tried": ["symbolic: REJECTED (fidelity: x)", "hybrid: REJECTED (fidelity: y)"], "real_env_steps": 5000, "dream_env_steps": 1,
            "dream_steps_per_second": 1.0, "sim_compile_seconds": None, "dream_uncertainty": {"mean": 0.05, "truncated_share": 0.012},
            "fidelity": None, "real_return_mean": 150.0, "real_return_std": 0.0, "real_eval_episodes": 20,
            "support_leaving_share": 0.25, "coverage_warnings": ["no held-out episode terminated: the termination figures test nothing"]}
    console = Console(width=200, record=True)
    console.print(summary_table({**base, **exploited}))
    text = console.export_text()
    assert "round 2 (best in the last sim: round 1 150.0, round 2 500.0)" in text and "+350.0 (73% of the gain over random): LARGE" in text
    assert "writer=auto (neural/neural); tried first: symbolic: REJECTED (fidelity: x); tried first: hybrid: REJECTED" in text
    assert "0.05 per step (mean); 1.2% of steps truncated for it" in text
    assert "leaves the session's support" in text and "in 25.0% of the kept policy's dream episodes" in text
    assert "session coverage" in text and "no held-out episode terminated: the termination figures test nothing" in text


def test_the_summary_warns_of_what_the_split_cannot_vouch_for():
    """Acrobot seed 1's case: the train episodes never terminate, the held-out ones do once and pay 0 there."""
    import gymnasium

    from dreamer.traces.coverage import coverage_warnings
    from dreamer.traces import collect_trace

    session = collect_trace(gymnasium.make("CartPole-v1"), 400, seed=0)
    train, held_out = session.split(0.3, 0)
    assert coverage_warnings(train, held_out) == []
    never = dataclasses.replace(train, terminated=np.zeros_like(train.terminated), truncated=train.terminated | train.truncated)
    goal = dataclasses.replace(held_out, reward=np.where(held_out.terminated, 0.0, 1.0).astype(np.float32))
    ends = int(held_out.terminated.sum())
    assert coverage_warnings(never, goal) == [
        f"no training episode terminated, though {ends} held-out steps did: the sim was not shown how an episode ends",
        f"{ends} held-out steps pay 0, a reward no training step pays: the sim cannot have learned it"]
    assert coverage_warnings(goal, never)[-1] == (
        f"{ends} training steps pay 0, a reward no held-out step pays: the held-out figures do not test the sim's")
    quiet = dataclasses.replace(held_out, terminated=np.zeros_like(held_out.terminated),
                                truncated=held_out.terminated | held_out.truncated)
    assert coverage_warnings(train, quiet) == ["no held-out episode terminated: the termination figures test nothing"]
    # A continuous reward (Pendulum's, MountainCarContinuous's 100 - 0.1 u² at the goal) has no kinds to miss.
    rng = np.random.default_rng(0)
    paid = dataclasses.replace(train, reward=rng.normal(size=len(train)).astype(np.float32))
    nearly = dataclasses.replace(held_out, reward=rng.normal(size=len(held_out)).astype(np.float32))
    assert coverage_warnings(paid, nearly) == []
