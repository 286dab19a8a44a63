"""The sandbox under load: 64 candidates at once, faults injected, nothing left behind.

One `validate_many` run of a mix of good, hanging, memory-hogging, forking and raising sims is watched
from threads in this process (its workers in /proc, a 10 ms ticker); then workers are killed from
outside, and `validate_many` is interrupted, and each must be reported or cleaned up as such.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dreamer.sandbox import SandboxConfig, SandboxReport, validate, validate_many
from dreamer.sandbox.isolation import Isolated, run_isolated
from dreamer.sandbox.validate import WORKER_ARGS

validate_module = importlib.import_module("dreamer.sandbox.validate")  # the package's `validate` is the function

WORKER_CMDLINE = b"\0".join(arg.encode() for arg in (sys.executable, *WORKER_ARGS)) + b"\0"
TRANSITION_BODY = "    x, x_dot, theta, theta_dot = state.unbind(-1)\n"
KILLED = "worker was killed from outside the sandbox (signal 9, SIGKILL), not by a check"
# Small rollouts keep each worker's run near its import cost; the limits stay as configured.
LIGHT = {"rollout_envs": 8, "rollout_steps": 20, "batch_check_size": 16}


# --- watching this process's workers -------------------------------------------------------------


def our_workers(cmdline: bytes = WORKER_CMDLINE) -> list[int]:
    """Live processes running exactly `cmdline` (the sandbox worker's) that descend from
    this one (bwrap puts two between), so that other test sessions' sandboxes are never touched."""
    parents, workers = {}, []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = (Path("/proc") / entry / "stat").read_text().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
            if fields[0] not in "ZX" and (Path("/proc") / entry / "cmdline").read_bytes() == cmdline:
                workers.append(int(entry))
        except (OSError, IndexError):  # gone meanwhile
            continue
    return [pid for pid in workers if _descends(pid, parents)]


def _descends(pid: int, parents: dict[int, int]) -> bool:
    for _ in range(16):
        pid = parents.get(pid, 0)
        if pid == os.getpid():
            return True
        if pid <= 1:
            return False
    return False


def peak_mb(pid: int) -> float:
    """The most address space `pid` has held so far (VmPeak, what RLIMIT_AS bounds), in MB; 0 once gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields.get("VmPeak", "0 kB").split()[0]) / 1024


def sandbox_dirs(tmp: Path) -> list[str]:
    return sorted(path.name for path in tmp.glob("dreamer-sandbox-*"))


@contextmanager
def in_background(step: Callable[[], None], every_s: float) -> Iterator[None]:
    """Run `step` every `every_s` in a thread while the block runs."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            step()
            time.sleep(every_s)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextmanager
def temp_dir_at(tmp: Path) -> Iterator[Path]:
    """`tempfile` makes its directories under `tmp` while the block runs."""
    before, tempfile.tempdir = tempfile.tempdir, str(tmp)
    try:
        yield tmp
    finally:
        tempfile.tempdir = before


@contextmanager
def killing_workers(times: int, signum: int = signal.SIGKILL, cmdline: bytes = WORKER_CMDLINE) -> Iterator[list[int]]:
    """Kill each new worker (see `our_workers`) with `signum` as soon as it shows up, the first `times`
    of them, as an operator or the out-of-memory killer would; yields the pids killed so far."""
    killed: list[int] = []

    def step() -> None:
        for pid in our_workers(cmdline):
            if len(killed) < times and pid not in killed:
                os.kill(pid, signum)
                killed.append(pid)

    with in_background(step, 0.02):
        yield killed


# --- the mix -------------------------------------------------------------------------------------


def sim(cartpole: str, kind: str) -> str:
    """The fixture sim as `kind` of candidate."""
    code = {
        "good": "",
        "hang": "    while True:\n        pass\n",
        # HOARD keeps what it got between calls: the first transition fills memory up to RLIMIT_AS.
        "hog": "    while True:\n        HOARD.append(torch.ones(2**24))\n",
        "fork": "    os.fork()\n",
        "raise": "    raise ValueError('boom')\n",
    }[kind]
    source = cartpole.replace(TRANSITION_BODY, code + TRANSITION_BODY)
    if kind == "hog":
        source = source.replace("GRAVITY = 9.8\n", "HOARD = []\nGRAVITY = 9.8\n")
    if kind == "fork":  # the allowlist stops it before any process starts
        source = source.replace("import math\n", "import os\nimport math\n")
    return source


# 64 candidates, 20 of which start a worker (good: accepted; hang: killed at the wall clock; hog: fails
# its checks at RLIMIT_AS; raise: fails its checks), each kind spread evenly over the list.
COUNTS = {"good": 10, "fork": 44, "raise": 4, "hog": 4, "hang": 2}
ORDER = [kind for _, kind in sorted(((i + 0.5) / n, kind) for kind, n in COUNTS.items() for i in range(n))]


@dataclasses.dataclass
class LoadRun:
    """What threads of this process saw while `validate_many` ran the mix."""

    config: SandboxConfig
    reports: list[SandboxReport]
    most_workers: int  # live worker processes at once, the most seen
    largest_mb: float  # peak address space of one worker, the most seen
    most_total_mb: float  # peak address spaces of the live workers summed, the most seen
    longest_tick_s: float  # the longest gap between ticks of a 10 ms sleep loop
    workers_after: list[int]
    dirs_after: list[str]


@pytest.fixture(scope="module")
def load_run(cartpole_source, held_out, config, tmp_path_factory) -> LoadRun:
    run_config = dataclasses.replace(config, **LIGHT, memory_mb=1536, timeout_s=30)
    sources = [sim(cartpole_source, kind) for kind in ORDER]
    seen = {"workers": 0, "largest": 0.0, "total": 0.0}
    ticks = [time.monotonic()]

    def sample() -> None:
        peaks = [peak_mb(pid) for pid in our_workers()]
        seen["workers"] = max(seen["workers"], len(peaks))
        seen["largest"] = max([seen["largest"], *peaks])
        seen["total"] = max(seen["total"], sum(peaks))

    with temp_dir_at(tmp_path_factory.mktemp("tmp")) as tmp:
        with in_background(sample, 0.02), in_background(lambda: ticks.append(time.monotonic()), 0.01):
            reports = validate_many(sources, held_out, run_config, [f"{kind}_{i}" for i, kind in enumerate(ORDER)])
        return LoadRun(run_config, reports, seen["workers"], seen["largest"], seen["total"],
                       max(b - a for a, b in itertools.pairwise(ticks)), our_workers(), sandbox_dirs(tmp))


@pytest.mark.slow
def test_64_candidates_come_back_in_order_with_their_verdicts(load_run):
    assert len(load_run.reports) == 64
    for i, (kind, report) in enumerate(zip(ORDER, load_run.reports, strict=True)):
        assert report.name == f"{kind}_{i}"
        assert report.accepted == (kind == "good"), (kind, report.reasons)
        joined = "\n".join(report.reasons)
        if kind == "hang":
            timed_out = f"worker timed out after {load_run.config.timeout_s:g} s (wall clock, sandbox.timeout_s)"
            assert timed_out in joined, joined
        if kind == "hog":
            assert "can't allocate memory" in joined, joined
        if kind == "fork":
            assert "import of `os`" in joined and report.attempts == 0, joined
        if kind == "raise":
            assert "ValueError: boom" in joined, joined
        if kind != "fork":
            assert report.attempts == 1, (kind, report.reasons)  # a timeout or limit is never retried


@pytest.mark.slow
def test_at_most_workers_processes_and_workers_x_memory_mb_at_once(load_run):
    assert 1 <= load_run.most_workers <= load_run.config.workers
    limit_mb = load_run.config.memory_mb
    assert 0.9 * limit_mb <= load_run.largest_mb <= limit_mb  # the hogs reached RLIMIT_AS, and no further
    assert load_run.most_total_mb <= load_run.config.workers * limit_mb


@pytest.mark.slow
def test_the_parent_keeps_ticking(load_run):
    assert load_run.longest_tick_s < 2.0, load_run


@pytest.mark.slow
def test_nothing_is_left_behind(load_run):
    assert load_run.workers_after == []
    assert load_run.dirs_after == []


# --- a worker killed from outside the sandbox: reported as such, retried once --------------------


def test_a_worker_killed_from_outside_once_is_retried_and_accepted(level, cartpole_source, held_out, config,
                                                                    tmp_path):
    with killing_workers(times=1) as killed:
        report = validate(cartpole_source, held_out, dataclasses.replace(config, **LIGHT, isolation=level),
                          name="cartpole")
    assert len(killed) == 1
    assert report.accepted, report.reasons
    assert report.attempts == 2
    report.save(tmp_path / "report.json")
    assert json.loads((tmp_path / "report.json").read_text())["attempts"] == 2
    assert SandboxReport.load(tmp_path / "report.json") == report


def test_a_worker_killed_from_outside_every_time_is_rejected_after_one_retry(level, cartpole_source, held_out,
                                                                             config):
    with killing_workers(times=3) as killed:
        report = validate(cartpole_source, held_out, dataclasses.replace(config, **LIGHT, isolation=level),
                          name="cartpole")
    assert len(killed) == 2
    assert not report.accepted and report.attempts == 2
    assert report.reasons[0].startswith(f"{KILLED}; retried, and each of the 2 attempts was killed that way"), \
        report.reasons


def test_a_kill_from_outside_is_told_apart_from_the_limits(level, config, tmp_path):
    """SIGTERM from an operator counts as from outside the sandbox; the wall clock and RLIMIT_CPU do not."""
    argv = [sys.executable, "-c", f"# {tmp_path}\nwhile True:\n    pass\n"]
    config = dataclasses.replace(config, isolation=level)

    def run(name: str, **limits) -> Isolated:
        (tmp_path / name).mkdir()
        return run_isolated(argv, b"", tmp_path / name, dataclasses.replace(config, **limits))

    with killing_workers(times=1, signum=signal.SIGTERM, cmdline=b"\0".join(map(str.encode, argv)) + b"\0") as killed:
        killed_run = run("killed", timeout_s=60)
    assert len(killed) == 1 and killed_run.killed_from_outside
    assert killed_run.failure == "was killed from outside the sandbox (signal 15, SIGTERM), not by a check"
    timed_out = run("timed_out", timeout_s=2)
    assert timed_out.failure.startswith("timed out after 2 s") and not timed_out.killed_from_outside
    over_cpu = run("over_cpu", cpu_s=1, timeout_s=30)
    assert over_cpu.failure.startswith("killed by signal SIGXCPU") and not over_cpu.killed_from_outside


def test_a_sim_over_the_cpu_limit_is_not_retried(cartpole_source, held_out, config):
    report = validate(sim(cartpole_source, "hang"), held_out, dataclasses.replace(config, cpu_s=3, timeout_s=60),
                      name="spin")
    assert not report.accepted and report.attempts == 1
    assert report.reasons[0].startswith("worker killed by signal SIGXCPU (CPU time limit (sandbox.cpu_s) exceeded)")


# --- validate_many stopped midway: the running workers are killed, nothing is left ---------------

HANGS = 8  # hanging candidates, twice the default workers: some run, some wait, when validate_many stops


def test_an_interrupted_validate_many_kills_its_workers_and_leaves_nothing(cartpole_source, held_out, config,
                                                                        tmp_path):
    interrupted: list[float] = []

    def interrupt() -> None:  # Ctrl-C, once every worker slot is busy
        if not interrupted and len(our_workers()) == config.workers:
            interrupted.append(time.monotonic())
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with temp_dir_at(tmp_path), pytest.raises(KeyboardInterrupt), in_background(interrupt, 0.05):
            validate_many([sim(cartpole_source, "hang")] * HANGS, held_out, config, [f"hang_{i}" for i in range(HANGS)])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - interrupted[0] < config.timeout_s / 4  # the hangs were killed, not waited for
    assert our_workers() == []
    assert sandbox_dirs(tmp_path) == []


def test_a_validation_that_raises_stops_the_others_and_leaves_nothing(cartpole_source, held_out, config, tmp_path,
                                                                      monkeypatch):
    raised: list[float] = []

    def disk_full_for_one(argv, stdin, workdir, run_config) -> Isolated:
        if json.loads(stdin)["name"] == "broken":  # once the other slots run workers
            deadline = time.monotonic() + 60
            while len(our_workers()) < config.workers - 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            raised.append(time.monotonic())
            raise OSError("injected: no space left on device")
        return run_isolated(argv, stdin, workdir, run_config)

    monkeypatch.setattr(validate_module, "run_isolated", disk_full_for_one)
    with temp_dir_at(tmp_path), pytest.raises(OSError, match="injected: no space left on device"):
        validate_many([cartpole_source] + [sim(cartpole_source, "hang")] * HANGS, held_out, config,
                      ["broken"] + [f"hang_{i}" for i in range(HANGS)])
    assert time.monotonic() - raised[0] < config.timeout_s / 4  # the hangs were killed, not waited for
    assert our_workers() == []
    assert sandbox_dirs(tmp_path) == []
