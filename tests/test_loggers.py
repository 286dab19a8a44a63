import json
import re
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest
import wandb

from dreamer.loggers import HISTORY, WANDB_ID, LoggerConfig, WandbLogger, make_logger

TIMEOUT_S = 0.5  # each wandb call's bound in the fault tests
BOUND_S = 5  # what a run may take past a fault, generously


def steps(run_dir) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / HISTORY).read_text().splitlines()]


class FakeRun:
    """A wandb run that calls `log_fault` when logging step 2 on and `finish_fault` when finishing (if given)."""

    def __init__(self, log_fault=None, finish_fault=None):
        self.log_fault, self.finish_fault = log_fault, finish_fault
        self.logged, self.finished = [], False

    def log(self, row, step):
        if self.log_fault and step >= 2:
            self.log_fault()
        self.logged.append(step)

    def finish(self):
        if self.finish_fault:
            self.finish_fault()
        self.finished = True


@pytest.fixture
def faults():
    """Ways a wandb call goes wrong: it raises, or it blocks until the test ends (far past TIMEOUT_S)."""
    released = threading.Event()

    def raising(error):
        def call(*args, **kwargs):
            raise error
        return call

    yield {"broken pipe": raising(BrokenPipeError("service gone")),
           "wandb error": raising(wandb.errors.Error("internal service died")),
           "hang": lambda *args, **kwargs: released.wait(60)}
    released.set()


NAMED = {"broken pipe": r"BrokenPipeError: service gone", "wandb error": r"Error: internal service died",
         "hang": rf"TimeoutError: no answer within {TIMEOUT_S:g} s"}


def wandb_logger(run, run_dir, monkeypatch):
    """`make_logger` for wandb whose `wandb.init` answers `run`."""
    monkeypatch.setattr(wandb, "init", lambda **kwargs: run)
    logger = make_logger(LoggerConfig("wandb", "dreamer-test", "offline", TIMEOUT_S), run_dir, {})
    assert [type(other) for other in logger.others] == [WandbLogger]
    return logger


def test_offline_wandb_writes_its_run_under_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    logger = make_logger(LoggerConfig("wandb", "dreamer-test", "offline", 30), tmp_path, {"seed": 0})
    assert [type(other) for other in logger.others] == [WandbLogger]
    logger.log({"return": 1.0, "unmeasured": None}, step=1)
    logger.finish()
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert steps(tmp_path) == [1]
    run_id = (tmp_path / WANDB_ID).read_text()
    resumed = make_logger(LoggerConfig("wandb", "dreamer-test", "offline", 30), tmp_path, {"seed": 0})  # a resumed run
    assert resumed.others[0].run.id == run_id
    resumed.finish()


def test_without_wandb_installed_the_run_keeps_its_history_file(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ModuleNotFoundError
    with pytest.warns(UserWarning, match=r"wandb could not start \(ModuleNotFoundError: import of wandb halted"):
        logger = make_logger(LoggerConfig("wandb", "dreamer-test", "offline", 30), tmp_path, {})
    assert logger.others == []
    logger.log({"return": 1.0}, step=1)
    logger.finish()
    assert steps(tmp_path) == [1]


@pytest.mark.parametrize("project, mode, named", [("dreamer-test", "no-such-mode", "'no-such-mode'"),
                                                  ("bad/project", "offline", "Invalid project name")])
def test_a_misconfigured_wandb_falls_back_to_the_history_file(tmp_path, project, mode, named):
    with pytest.warns(UserWarning, match=rf"(?s)wandb could not start \(.*{named}"):
        logger = make_logger(LoggerConfig("wandb", project, mode, 5), tmp_path, {})
    assert logger.others == []


def test_a_hanging_wandb_init_is_given_up_at_its_timeout(tmp_path, monkeypatch, faults):
    monkeypatch.setattr(wandb, "init", faults["hang"])
    start = time.perf_counter()
    with pytest.warns(UserWarning, match=rf"wandb could not start \({NAMED['hang']}\)"):
        logger = make_logger(LoggerConfig("wandb", "dreamer-test", "offline", TIMEOUT_S), tmp_path, {})
    assert time.perf_counter() - start < BOUND_S
    assert logger.others == []


@pytest.mark.parametrize("fault", ["broken pipe", "wandb error", "hang"])
def test_a_wandb_that_fails_mid_run_warns_once_and_is_dropped(tmp_path, monkeypatch, faults, fault):
    run = FakeRun(log_fault=faults[fault])
    logger = wandb_logger(run, tmp_path, monkeypatch)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in (1, 2, 3):
            logger.log({"return": float(step)}, step)
        logger.finish()
    assert time.perf_counter() - start < BOUND_S
    [message] = [str(w.message) for w in caught if str(w.message).startswith("wandb ")]  # ours, once
    assert re.match(rf"wandb failed at step 2 \({NAMED[fault]}\) and is left out of the rest of the run; "
                    r"metrics go to history.jsonl", message)
    assert run.logged == [1] and not run.finished  # nothing after the failure reaches wandb
    assert steps(tmp_path) == [1, 2, 3]


@pytest.mark.parametrize("fault", ["broken pipe", "hang"])
def test_a_wandb_finish_that_fails_still_ends_the_run(tmp_path, monkeypatch, faults, fault):
    logger = wandb_logger(FakeRun(finish_fault=faults[fault]), tmp_path, monkeypatch)
    logger.log({"return": 1.0}, step=1)
    start = time.perf_counter()
    with pytest.warns(UserWarning, match=rf"wandb failed at finish \({NAMED[fault]}\)"):
        logger.finish()
    assert time.perf_counter() - start < BOUND_S
    assert logger.history.file.closed and steps(tmp_path) == [1]


def test_wandb_calls_left_hanging_do_not_keep_the_process_alive(tmp_path):
    script = textwrap.dedent("""
        import sys, threading, types
        from dreamer.loggers import LoggerConfig, make_logger

        class Run:
            def log(self, row, step): pass
            def finish(self): threading.Event().wait()

        hang = lambda **kwargs: threading.Event().wait()
        wandb = sys.modules["wandb"] = types.SimpleNamespace(Settings=dict, init=hang)
        make_logger(LoggerConfig("wandb", "p", "offline", 0.2), sys.argv[1], {})  # init hangs
        wandb.init = lambda **kwargs: Run()
        logger = make_logger(LoggerConfig("wandb", "p", "offline", 0.2), sys.argv[1], {})
        logger.log({"return": 1.0}, step=1)
        logger.finish()  # finish hangs
    """)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "wandb could not start (TimeoutError" in done.stderr
    assert "wandb failed at finish (TimeoutError" in done.stderr
    assert steps(tmp_path) == [1]


def test_every_row_reaches_the_history_file_as_it_is_logged(tmp_path):
    logger = make_logger(LoggerConfig("none", None, None, None), tmp_path, {})
    logger.log({"dream/return": 1.5, "loss": float("nan")}, step=10)
    rows = [json.loads(line) for line in (tmp_path / HISTORY).read_text().splitlines()]  # before finish()
    assert rows == [{"step": 10, "dream/return": 1.5, "loss": None}]
    logger.log({"dream/return": 2.0}, step=20)
    logger.finish()
    assert steps(tmp_path) == [10, 20]


def test_unknown_logger_kind_is_named():
    with pytest.raises(ValueError, match="kind must be 'wandb' or 'none', got 'tensorboard'"):
        LoggerConfig("tensorboard", "p", "offline", 5)
