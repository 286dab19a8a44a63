import os
import re
import subprocess
import sys
from typing import Literal

import pytest
import torch
from omegaconf import OmegaConf

from dreamer.config import CONF_DIR, build, resolve_device, type_error
from dreamer.pipelines import PIPELINES
from dreamer.pipelines.config import check_run_config, compose_config
from dreamer.rl import PPOConfig
from conftest import run_module

ALGO = OmegaConf.to_container(OmegaConf.load("conf/algo/ppo.yaml"))
EXPERIMENTS = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))
NEEDS = {"from_trace": ["trace.path=session.jsonl"]}  # values an experiment leaves `???`
LLM = ["writer=llm", "writer.model=coder", "writer.cache_dir=null"]
WRITE = ["trace.path=session.jsonl"]


def ppo(**overrides) -> PPOConfig:
    return build(PPOConfig, {**ALGO, **overrides}, "algo", ignore=("kind", "progress"))


def start(name: str, overrides: list[str]) -> None:
    """What a run checks before any work: `check_run_config`, then every section its pipeline reads, built."""
    cfg = compose_config(name, overrides)
    check_run_config(cfg, name)
    PIPELINES[cfg.pipeline].configure(cfg)


def refused(name: str, overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        start(name, overrides)


def test_the_shipped_algo_config_builds():
    assert ppo().num_envs == ALGO["num_envs"]


@pytest.mark.parametrize("name, overrides", [
    ("train", []),
    *[("train", [f"+experiment={experiment}", *NEEDS.get(experiment, [])]) for experiment in EXPERIMENTS],
    ("train", LLM),
    ("write", WRITE),
    ("write", [*WRITE, *LLM]),
    ("write", ["trace.path=session.csv", "trace.columns.reward_column=r"]),
])
def test_every_shipped_config_passes_the_start_up_checks(name, overrides):
    start(name, overrides)


def test_unknown_and_missing_keys_are_named_with_their_group():
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['algo.learning_rat'\]; allowed keys: \[.*'learning_rate'"):
        ppo(learning_rat=1e-3)
    values = {k: v for k, v in ALGO.items() if k != "gamma"}
    with pytest.raises(ValueError, match=r"missing config key\(s\) \['algo.gamma'\]"):
        build(PPOConfig, values, "algo", ignore=("kind", "progress"))


@pytest.mark.parametrize("overrides, message", [
    ({"num_envs": 0}, "algo: num_envs must be a positive int, got 0"),
    ({"total_steps": -5}, "algo: total_steps must be a positive int, got -5"),
    ({"num_minibatches": 3}, "must be divisible by num_minibatches = 3"),
])
def test_impossible_values_are_refused_with_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        ppo(**overrides)


@pytest.mark.parametrize("name, overrides, message", [
    ("train", ["algo.num_envs=1.5"], "algo.num_envs=1.5 is not an int"),
    ("train", ["algo.learning_rate=fast"], "algo.learning_rate='fast' is not a float"),
    ("train", ["algo.anneal_lr=1"], "algo.anneal_lr=1 is not a bool"),
    ("train", ["algo.target_kl=high"], "algo.target_kl='high' is not a float or null"),
    ("train", ["policy.hidden_sizes=[64,wide]"], "policy.hidden_sizes[1]='wide' is not an int"),
    ("train", ["+experiment=opsd_self_context", "policy.codec=bytes"], "policy.codec='bytes' is not one of ['numeric', 'text']"),
    ("train", ["+experiment=opsd_self_context", "policy.action_names=[1,2]"], "policy.action_names=[1, 2] is not a list of str or null"),
    ("train", ["opsd.schedule.kind=cosine"], "opsd.schedule.kind='cosine' is not one of ['constant', 'linear', 'alternating']"),
    ("train", ["opsd.context.builder=notes"], "opsd.context.builder='notes' is not one of ['facts', 'transitions', 'text']"),
    ("train", ["opsd.anchors.states=2.5"], "opsd.anchors.states=2.5 is not an int"),
    ("train", ["sandbox.workers=2.0"], "sandbox.workers=2.0 is not an int"),
    ("train", ["writer.thresholds=[0.1,small]"], "writer.thresholds[1]='small' is not a float"),
    ("train", [*LLM, "writer.backend=vllm"], "writer.backend='vllm' is not one of ['openai', 'replay', 'transformers']"),
    ("train", [*LLM, "writer.reuse_previous=yes"], "writer.reuse_previous='yes' is not a bool"),
    ("train", ["seed=1.5"], "seed=1.5 is not an int"),
    ("train", ["seed=true"], "seed=True is not an int"),
    ("train", ["device=0"], "device=0 is not a str"),
    ("train", ["eval.episodes=ten"], "eval.episodes='ten' is not an int"),
    ("train", ["eval.env_id=5"], "eval.env_id=5 is not a str or null"),
    ("train", ["trace.kind=stream"], "trace.kind='stream' is not one of ['gym', 'file']"),
    ("train", ["trace.steps_per_round=[1000,2.5]"], "trace.steps_per_round=[1000, 2.5] is not a list of int or null"),
    ("train", ["logger.kind=wandbb"], "logger.kind='wandbb' is not one of ['wandb', 'none']"),
    ("train", ["writer.kind=gpt"], "writer.kind='gpt' is not one of ['auto', 'hybrid', 'llm', 'neural', 'symbolic']"),
    ("train", ["algo.kind=sac"], "algo.kind='sac' is not one of ['ppo']"),
    ("train", ["policy.kind=tree"], "policy.kind='tree' is not one of ['mlp', 'sequence']"),
    ("train", ["policy=sequence"], "pipeline=dream trains policy.kind in ['mlp'], got policy.kind='sequence' (policy=mlp selects it)"),
    ("train", ["+experiment=opsd_self_context", "policy=mlp"], "pipeline=opsd_self_context trains policy.kind in ['sequence']"),
    ("train", ["pipeline=write"], "pipeline='write' is not one of ['dream', 'opsd_self_context', 'opsd_veteran']"),
    ("write", [*WRITE, "pipeline=dream"], "pipeline='dream' is not one of ['write']"),
    ("train", ["logger.mode=offlne"], "logger.mode='offlne' is not one of ['offline', 'online', 'disabled'] or null"),
    ("train", ["logger.init_timeout_s=soon"], "logger.init_timeout_s='soon' is not a float or null"),
    ("write", [*WRITE, "sim.name=7"], "sim.name=7 is not a str"),
    ("train", ["sim.compile=maybe"], "sim.compile='maybe' is not a bool"),
    ("write", [*WRITE, "trace.held_out_fraction=most"], "trace.held_out_fraction='most' is not a float"),
    ("write", [*WRITE, "trace.columns.obs_columns=[1,2]"], "trace.columns.obs_columns=[1, 2] is not a list of str or null"),
])
def test_a_value_of_the_wrong_type_names_the_key_and_the_allowed_type(name, overrides, message):
    refused(name, overrides, message)


@pytest.mark.parametrize("name, overrides, message", [
    ("train", ["algo.num_envs=0"], "algo: num_envs must be a positive int, got 0"),
    ("train", ["policy.hidden_sizes=[64,0]"], "policy: hidden_sizes must be positive ints, got [64, 0]"),
    ("train", ["policy.activation=tanh"], "policy: activation must be one of ['Threshold', 'ReLU',"),
    ("train", ["opsd.skip_first=-1"], "opsd: skip_first must be >= 0, got -1"),
    ("train", ["opsd.eval_every=0"], "opsd: eval_every must be >= 1, got 0"),
    ("train", ["opsd.anchors.coef=-1"], "opsd.anchors: anchors.coef must be >= 0, got -1"),
    ("train", ["opsd.anchors.batch=0"], "opsd.anchors: anchors.batch must be >= 1, got 0"),
    ("train", ["opsd.teacher.ema_decay=1.0"], "opsd.teacher: teacher.ema_decay must be in [0, 1), got 1.0"),
    ("train", ["opsd.divergence.beta=2"], "opsd.divergence: beta must be a number in [0, 1], got 2"),
    ("train", ["writer.degree=-1"], "writer: degree must be an int >= 0, got -1"),
    ("train", ["writer.thresholds=[]"], "writer: thresholds must be a non-empty list of numbers >= 0, got []"),
    ("train", ["writer.selection_tolerance=0.5"], "writer: selection_tolerance must be >= 1"),
    ("train", ["writer.validation_fraction=1.0"], "writer: validation_fraction must be in (0, 1), got 1.0"),
    ("train", ["writer.termination.max_depth=0"], "writer.termination: max_depth must be an int >= 1, got 0"),
    ("train", [*LLM, "writer.top_p=0"], "writer: need temperature >= 0 and 0 < top_p <= 1"),
    ("train", [*LLM, "writer.candidates=0"], "writer: candidates must be a positive int, got 0"),
    ("train", ["eval.episodes=0"], "eval: episodes must be a positive int, got 0"),
    ("train", ["trace.held_out_fraction=1.0"], "trace: held_out_fraction must be in (0, 1), got 1.0"),
    ("train", ["trace.steps_per_round=[]"], "trace: steps_per_round must be a non-empty list of positive ints for kind=gym, got []"),
    ("train", ["trace.steps_per_round=[1000,-5]"], "trace: steps_per_round must be a non-empty list of positive ints"),
    ("train", ["trace.env_id=null"], "trace: env_id must name a Gymnasium env for kind=gym, got None"),
    ("train", ["trace.path=session.jsonl"], "trace: path is read for kind=file only (trace=file)"),
    ("train", ["sim.name=../outside"], "sim: name must be a Python identifier (letters, digits, _), got '../outside'"),
    ("write", [*WRITE, "sim.name=my-sim"], "sim: name must be a Python identifier (letters, digits, _), got 'my-sim'"),
    ("train", ["logger=wandb", "logger.init_timeout_s=0"], "logger: kind=wandb needs a mode and init_timeout_s > 0"),
    ("train", ["+experiment=from_trace", *WRITE, "trace.steps_per_round=[500]"], "trace: steps_per_round applies to kind=gym only"),
    ("write", ["trace.path=session.jsonl", "trace.columns.reward_column=r"], "trace.columns maps the columns of"),
])
def test_an_impossible_value_names_the_key_and_the_allowed_range(name, overrides, message):
    refused(name, overrides, message)


TRAIN_KEYS = "['algo', 'device', 'eval', 'family', 'logger', 'opsd', 'pipeline', 'policy', 'sandbox', 'seed', 'sim', 'trace', 'writer']"


@pytest.mark.parametrize("name, overrides, message", [
    ("train", ["+seeed=1"], f"unknown config key(s) ['seeed']; allowed keys: {TRAIN_KEYS}"),
    ("train", ["+eval.episode=3"], "unknown config key(s) ['eval.episode']; allowed keys: ['dream_episodes', 'env_id', 'episodes', 'max_gap', 'seed']"),
    ("train", ["+trace.steps=100"], "unknown config key(s) ['trace.steps']; allowed keys: ['env_id', 'explore', 'held_out_fraction', 'kind', 'path',"),
    ("train", ["+trace.columns.reward_column=r"], "unknown config key(s) ['trace.columns']"),
    ("train", ["+opsd.teacher.decay=0.5"], "unknown config key(s) ['opsd.teacher.decay']; allowed keys: ['ema_decay',"),
    ("write", [*WRITE, "+algo.num_envs=8"], "unknown config key(s) ['algo']; allowed keys: ['device', 'logger', 'pipeline', 'sandbox', 'seed', 'sim', 'trace', 'writer']"),
    ("train", ["~pipeline"], "missing config key(s) ['pipeline']"),
    ("train", ["~eval.seed"], "missing config key(s) ['eval.seed']"),
])
def test_an_unknown_or_missing_key_is_named_with_the_allowed_keys(name, overrides, message):
    refused(name, overrides, message)


def test_a_device_that_is_not_a_torch_device_is_named_with_the_allowed_forms():
    refused("train", ["device=gpu"], "device='gpu' is neither 'auto' nor a torch device string such as 'cpu', 'cuda'")
    refused("write", [*WRITE, "device=CPU"], "device='CPU' is neither 'auto' nor a torch device string")
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_cuda_device_the_machine_lacks_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    refused("train", ["device=cuda"], "device='cuda' but this machine has no CUDA device; use device=cpu or device=auto")
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    refused("train", ["device=cuda:1"], "device='cuda:1' but this machine has 1 CUDA device(s), cuda:0 to cuda:0")


def test_a_value_still_unset_is_named():
    refused("write", [], "config value(s) ['trace.path'] must be set, e.g. python -m dreamer.write trace.path=...")


@pytest.mark.parametrize("value, hint, problem", [
    (3, float, None),
    (True, float, "k=True is not a float"),
    (True, int, "k=True is not an int"),
    (0, bool, "k=0 is not a bool"),
    ([1, 2], tuple[int, ...], None),
    ((1, "a"), tuple[int, ...], "k[1]='a' is not an int"),
    ({"a": 1.0, "b": "x"}, dict[str, float], "k.b='x' is not a float"),
    ({"a": 1}, dict | None, None),
    ("b", Literal["a", "b"], None),
    (1, Literal["1"], "k=1 is not one of ['1']"),
    ("x", list[str] | str | None, None),
    ({"a": 1}, str | list[str], "k={'a': 1} is not a str or a list of str"),
])
def test_values_are_checked_against_the_annotation(value, hint, problem):
    assert type_error(value, hint, "k") == problem


@pytest.mark.parametrize("overrides, message", [
    (["sandbox.workers=0", "logger=none"], "sandbox.workers must be at least 1, got 0"),
    (["logger.kind=wandbb"], "logger.kind='wandbb' is not one of"),
    (["sim.name=../outside"], "sim: name must be a Python identifier"),
])
def test_an_impossible_value_stops_the_run_before_any_work(tmp_path, overrides, message):
    from dreamer.pipelines import run

    with pytest.raises(ValueError, match=re.escape(message)):
        run(compose_config("train", overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("module, overrides, message", [
    ("dreamer.train", ["seed=1.5"], "seed=1.5 is not an int"),
    ("dreamer.train", ["policy=sequence"], "pipeline=dream trains policy.kind in ['mlp'], got policy.kind='sequence'"),
    ("dreamer.write", ["trace.path=no_such_session.jsonl"], "trace.path=no_such_session.jsonl: no such file"),
    ("dreamer.train", ["trace.env_id=NoSuchEnv-v0"], "trace: env_id='NoSuchEnv-v0' is not an env Gymnasium can make: "
                                                   "Environment `NoSuchEnv` doesn't exist."),
    # a key the config lacks, without `+` (Hydra alone would only suggest `+algo.learnin_rate=...`) and with it
    ("dreamer.train", ["algo.learnin_rate=1e-3"], "unknown config key 'algo.learnin_rate'; allowed keys under algo: "
                                                  "['anneal_lr', 'checkpoint_every',"),
    ("dreamer.train", ["+algo.learnin_rate=1e-3"], "unknown config key(s) ['algo.learnin_rate']; allowed keys: ['anneal_lr',"),
    ("dreamer.write", ["trace.path=x.jsonl", "sandbox.memry_mb=1"], "unknown config key 'sandbox.memry_mb'; allowed keys "
                                                                     "under sandbox: ['batch_check_size',"),
    ("dreamer.train", ["writer=gpt"], "Could not find 'writer/gpt'\n\nAvailable options in 'writer':\n\tauto"),
])
def test_a_user_error_on_the_command_line_exits_2_with_its_message_before_any_run_dir(tmp_path, module, overrides, message):
    run_dir = tmp_path / "run"
    done = run_module(module, *overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr and "Traceback" not in done.stderr and "DREAMER_DEBUG=1" in done.stderr
    assert not run_dir.exists()


def broken_trace(folder, corrupt) -> None:
    """`folder/bad.jsonl`: a 30-step CartPole session whose third line is `corrupt(line)`."""
    import gymnasium

    from dreamer.traces import collect_trace, save_trace

    save_trace(collect_trace(gymnasium.make("CartPole-v1"), 30, seed=0), folder / "good.jsonl")
    lines = (folder / "good.jsonl").read_text().splitlines()
    lines[2] = corrupt(lines[2])
    (folder / "bad.jsonl").write_text("\n".join(lines) + "\n")


def test_a_malformed_trace_file_exits_2_naming_its_line_before_any_run_dir(tmp_path):
    """The trace is read whole by the start-up check: a broken line is not found after the run dir exists."""
    broken_trace(tmp_path, lambda line: line[:40])
    run_dir = tmp_path / "run"
    done = run_module("dreamer.train", "+experiment=from_trace", "trace.path=bad.jsonl", f"hydra.run.dir={run_dir}",
                      cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "bad.jsonl:3: invalid JSON" in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert not run_dir.exists()


def test_the_start_up_check_reads_every_line_of_the_trace(tmp_path, capsys):
    from dreamer.pipelines.runner import ConfigCheck

    broken_trace(tmp_path, lambda line: line.replace('"obs": [', '"obs": [0.5, '))
    with pytest.raises(SystemExit) as stopped:
        ConfigCheck("train").on_run_start(compose_config("train", ["+experiment=from_trace",
                                                                    f"trace.path={tmp_path / 'bad.jsonl'}"]))
    assert stopped.value.code == 2
    assert 'bad.jsonl:3: field "obs": expected a list of 4 numbers' in capsys.readouterr().err


def test_an_env_id_gymnasium_cannot_make_is_named_with_the_reason():
    with pytest.raises(ValueError, match=re.escape("eval: env_id='no_such_module:Cart-v0' is not an env Gymnasium can "
                                                   "make: No module named 'no_such_module'")):
        check_run_config(compose_config("train", ["eval.env_id=no_such_module:Cart-v0"]), "train")
    with pytest.raises(ValueError, match=re.escape("trace: env_id='CartPole-v9' is not an env Gymnasium can make: "
                                                   "Environment version `v9` for environment `CartPole` doesn't exist")):
        check_run_config(compose_config("train", ["trace.env_id=CartPole-v9"]), "train")


def test_dreamer_debug_shows_the_traceback_of_a_user_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dreamer.train", "seed=1.5", f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "DREAMER_DEBUG": "1"})
    assert done.returncode != 0 and "Traceback" in done.stderr and "seed=1.5 is not an int" in done.stderr
