"""Hostile sims and hostile processes: each is stopped with its reason, and nothing of it survives.

Two layers are attacked. `validate` on CartPole variants: most hostile sims never get past the static
check; the rest run and fail in the worker. Then the runtime isolation alone, with the static check
bypassed: `run_isolated` on arbitrary Python, under every isolation level this machine offers.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch

from dreamer.sandbox import SandboxConfig, SandboxReport, isolation, validate
from dreamer.sandbox.isolation import Isolated, bwrap_problem, child_limits, describe, run_isolated

validate_module = importlib.import_module("dreamer.sandbox.validate")  # the package's `validate` is the function

ROOT = Path(__file__).resolve().parent.parent
CARTPOLE = (ROOT / "tests" / "fixtures" / "cartpole_sim.py").read_text()
TRANSITION_BODY = "    x, x_dot, theta, theta_dot = state.unbind(-1)\n"
OBSERVATION_BODY = "    return state\n"
LIMITS = (resource.RLIMIT_AS, resource.RLIMIT_CPU, resource.RLIMIT_FSIZE, resource.RLIMIT_NPROC,
          resource.RLIMIT_NOFILE, resource.RLIMIT_CORE)


def edit(old: str, new: str) -> str:
    """The fixture sim with `old` (which must occur exactly once) replaced by `new`."""
    assert CARTPOLE.count(old) == 1, old
    return CARTPOLE.replace(old, new)


def in_transition(code: str) -> str:
    """The fixture sim with `code` (4-space indented lines) run first in `transition`."""
    return edit(TRANSITION_BODY, code + TRANSITION_BODY)


def live_processes(predicate) -> list[int]:
    """Pids of live (not zombie) processes, other than this one, whose /proc entry satisfies `predicate`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            state = (Path("/proc") / entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state not in "ZX" and predicate(Path("/proc") / entry):
                found.append(int(entry))
        except (OSError, IndexError):  # gone meanwhile
            continue
    return found


def with_marker(marker: str) -> list[int]:
    return live_processes(lambda proc: marker.encode() in (proc / "cmdline").read_bytes())


def inside(directory: Path) -> list[int]:
    return live_processes(lambda proc: os.readlink(proc / "cwd").startswith(str(directory)))


@pytest.fixture(autouse=True)
def parent_unharmed():
    """Every test: this process keeps its own limits, and its torch still works."""
    before = [resource.getrlimit(limit) for limit in LIMITS]
    yield
    assert [resource.getrlimit(limit) for limit in LIMITS] == before
    assert torch.ones(1000).sum().item() == 1000.0


# --- validate: stopped by the static check, no process started -----------------------------------

STATIC_CASES = {
    "import os": (edit("import math\n", "import os\nimport math\n"), "import of `os`"),
    "import subprocess": (edit("import math\n", "import subprocess\nimport math\n"), "import of `subprocess`"),
    "import socket": (edit("import math\n", "import socket\nimport math\n"), "import of `socket`"),
    "import ctypes": (edit("import math\n", "import ctypes\nimport math\n"), "import of `ctypes`"),
    "torch.multiprocessing": (edit("import math\n", "from torch import multiprocessing\nimport math\n"),
                              "`torch.multiprocessing` is forbidden"),
    "open": (in_transition("    open('/etc/passwd').read()\n"), "name `open` is forbidden"),
    "eval": (in_transition("    eval('1 + 1')\n"), "name `eval` is forbidden"),
    "exec": (in_transition("    exec('x = 1')\n"), "name `exec` is forbidden"),
    "compile": (in_transition("    compile('1', 'f', 'eval')\n"), "name `compile` is forbidden"),
    "__import__": (in_transition("    __import__('os').system('true')\n"), "name `__import__` is forbidden"),
    "getattr dunder": (in_transition("    getattr(state, '__' + 'class__')\n"), "name `getattr` is forbidden"),
    "subclasses walk": (in_transition("    ().__class__.__bases__[0].__subclasses__()\n"),
                        "attribute `.__class__` starts with `_`"),
    "function globals": (in_transition("    transition.__globals__['math']\n"),
                         "attribute `.__globals__` starts with `_`"),
    # Passed the static check and the restricted builtins before: a running generator's frame walks
    # up to the worker's module globals, which hold `os`.
    "generator frame walk": (in_transition(
        "    box = []\n    walker = (box[0].gi_frame.f_back for _ in [0])\n    box.append(walker)\n"
        "    frame = list(walker)[0]\n    while 'os' not in frame.f_globals:\n        frame = frame.f_back\n"
        "    frame.f_globals['os'].system('touch /tmp/escaped')\n"), "attribute `.gi_frame` is forbidden"),
    "torch.os": (in_transition("    torch.os.system('true')\n"), "reaches forbidden module `os`"),
    "fork bomb": (edit("import math\n", "import os\nimport math\n").replace(
        TRANSITION_BODY, "    while True:\n        os.fork()\n" + TRANSITION_BODY), "import of `os`"),
    "large file": (in_transition("    open('big', 'w').write('x' * 10**9)\n"), "name `open` is forbidden"),
    "read outside": (in_transition("    open('/root/.ssh/id_rsa').read()\n"), "name `open` is forbidden"),
    "network": (edit("import math\n", "import socket\nimport math\n").replace(
        TRANSITION_BODY, "    socket.create_connection(('example.com', 80))\n" + TRANSITION_BODY),
        "import of `socket`"),
    "torch.load": (in_transition("    torch.load('/etc/passwd')\n"), "attribute `.load` is forbidden"),
    "tofile": (in_transition("    state.numpy().tofile('big')\n"), "attribute `.numpy` is forbidden"),
}


@pytest.mark.parametrize("case", STATIC_CASES)
def test_hostile_source_is_rejected_statically(case, held_out, config, monkeypatch):
    source, message = STATIC_CASES[case]

    def no_process(*args, **kwargs):
        raise AssertionError("validate ran statically unsafe source")

    monkeypatch.setattr(validate_module, "run_isolated", no_process)
    report = validate(source, held_out, config, name="hostile")
    assert not report.accepted
    assert report.checks["static"]["passed"] is False
    assert any(message in reason for reason in report.reasons), report.reasons
    assert report.isolation == "static check only (no process started)"
    assert not Path("/tmp/escaped").exists()


# --- validate: passes the static check, stopped in the worker ------------------------------------


@pytest.fixture
def workdirs(monkeypatch) -> list[Path]:
    """The work dirs of the `validate` calls in a test; no process may be left running in one."""
    dirs: list[Path] = []

    def spy(argv, stdin, workdir, config) -> Isolated:
        dirs.append(Path(workdir).resolve())
        return run_isolated(argv, stdin, workdir, config)

    monkeypatch.setattr(validate_module, "run_isolated", spy)
    yield dirs
    for directory in dirs:
        assert not directory.exists()
        assert inside(directory) == []


def test_accepted_sim_reports_the_isolation_in_force(level, held_out, config, workdirs):
    report = validate(CARTPOLE, held_out, dataclasses.replace(config, isolation=level), name="cartpole")
    assert report.accepted, report.reasons
    network_cut = "no network" in report.isolation
    assert report.isolation == describe(level, config, child_limits(config), network_cut=network_cut)
    assert report.isolation.startswith("bwrap (" if level == "bwrap" else "subprocess (")


def test_infinite_loop_is_killed_at_the_wall_clock(held_out, config, workdirs):
    source = in_transition("    while True:\n        state = state + 0\n")
    start = time.monotonic()
    report = validate(source, held_out, dataclasses.replace(config, timeout_s=6), name="loop")
    assert not report.accepted
    timed_out = "worker timed out after 6 s (wall clock, sandbox.timeout_s) and was killed"
    assert any(timed_out in reason for reason in report.reasons), report.reasons
    assert time.monotonic() - start < 6 + 5
    assert not any("Warning" in reason for reason in report.reasons), "the stderr tail shown is the sim's, not noise"


def test_50_gb_allocation_fails_in_the_worker(held_out, config, workdirs):
    report = validate(in_transition("    big = torch.empty(50 * 2**30, dtype=torch.uint8)\n"), held_out, config,
                      name="hog")
    assert not report.accepted
    assert any("allocate 53687091200 bytes" in reason for reason in report.reasons), report.reasons


def test_print_is_not_a_builtin_and_a_huge_message_is_truncated(held_out, config, workdirs):
    report = validate(in_transition("    print('x' * 100_000_000)\n"), held_out, config, name="printer")
    assert not report.accepted
    assert any("name 'print' is not defined" in reason for reason in report.reasons), report.reasons
    report = validate(in_transition("    raise ValueError('x' * 100_000_000)\n"), held_out, config, name="shouter")
    assert not report.accepted
    assert any(reason.endswith("x" * 100) for reason in report.reasons), report.reasons
    assert len(json.dumps(report.to_dict())) < 2**20


def test_wrong_shapes_and_dtypes_fail_with_what_was_returned(held_out, config, workdirs):
    source = edit("    return torch.ones(state.shape[0], device=state.device)\n",
                  "    return torch.ones(state.shape[0], 1, device=state.device)\n")
    source = source.replace("    return state\n", "    return state.double()\n")
    report: SandboxReport = validate(source, held_out, config, name="shapes")
    assert not report.accepted
    assert report.checks["shapes_and_dtypes"]["passed"] is False
    detail = report.checks["shapes_and_dtypes"]["detail"]
    assert "reward returned shape (64, 1)" in detail and "observation returned shape (64, 4) torch.float64" in detail


# --- the runtime isolation alone: arbitrary code, no static check --------------------------------


def run_python(code: str, workdir: Path, config: SandboxConfig) -> Isolated:
    workdir.mkdir(exist_ok=True)
    return run_isolated([sys.executable, "-c", code], b"", workdir, config)


def test_isolation_strings_say_what_is_in_force(config):
    root = " (not enforced for root)" if os.getuid() == 0 else ""
    limits = (f"rlimits (AS 4096 MB, CPU 120 s, NPROC +64{root}, NOFILE 256, FSIZE 8 MB, CORE 0) + stdout cap 8 MB + "
              f"wall-clock kill of ")
    assert describe("bwrap", config, child_limits(config), network_cut=True) == (
        "bwrap (no network, read-only system view, private /tmp, own pid namespace, no capabilities, minimal env) + "
        + limits + "the whole pid namespace after 120 s")
    assert describe("rlimits", config, child_limits(config), network_cut=False) == (
        "subprocess (new session, minimal env, temp cwd and HOME, network NOT cut, filesystem NOT isolated) + "
        + limits + "the process group after 120 s")


def test_limits_never_exceed_the_parents_hard_limits(config, monkeypatch):
    real = resource.getrlimit
    monkeypatch.setattr(resource, "getrlimit",
                        lambda limit: (128, 128) if limit == resource.RLIMIT_NOFILE else real(limit))
    nofile = next(limit for limit in child_limits(config) if limit.resource == resource.RLIMIT_NOFILE)
    assert (nofile.soft, nofile.hard, nofile.label) == (128, 128, "NOFILE 128 files (the hard limit here)")


@pytest.fixture
def fresh_probe():
    isolation._probe_bwrap.cache_clear()
    yield
    isolation._probe_bwrap.cache_clear()


def test_bwrap_that_does_not_work_is_an_error_naming_the_key(config, tmp_path, monkeypatch, fresh_probe):
    monkeypatch.setattr(isolation, "BWRAP", "no-such-bwrap-binary")
    with pytest.raises(RuntimeError, match=r"sandbox.isolation=bwrap, but bubblewrap does not work here: "
                                           r"`no-such-bwrap-binary` is not on PATH"):
        run_python("print(1)", tmp_path / "work", dataclasses.replace(config, isolation="bwrap"))
    run = run_python("print(1)", tmp_path / "work", dataclasses.replace(config, isolation="auto"))
    assert run.stdout == b"1\n" and run.isolation.startswith("subprocess (")


def test_parent_environment_is_not_visible(level, config, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    run = run_python("import json, os; print(json.dumps(dict(os.environ)))", tmp_path / "work",
                     dataclasses.replace(config, isolation=level))
    env = json.loads(run.stdout)
    assert "OPENAI_API_KEY" not in env and b"secret-value" not in run.stdout
    assert env["HOME"] == str((tmp_path / "work").resolve())


def test_infinite_loop_is_killed(level, config, tmp_path):
    marker = uuid.uuid4().hex
    start = time.monotonic()
    run = run_python(f"# {marker}\nwhile True:\n    pass\n", tmp_path / "work",
                     dataclasses.replace(config, isolation=level, timeout_s=2))
    assert run.stdout is None
    assert run.failure == "timed out after 2 s (wall clock, sandbox.timeout_s) and was killed"
    assert time.monotonic() - start < 2 + 3
    assert with_marker(marker) == []


def test_cpu_limit_kills(level, config, tmp_path):
    run = run_python("while True:\n    pass\n", tmp_path / "work",
                     dataclasses.replace(config, isolation=level, cpu_s=1, timeout_s=10))
    assert run.failure == "killed by signal SIGXCPU (CPU time limit (sandbox.cpu_s) exceeded)"


# A bounded bomb (4 levels of 4 children: 341 processes, all sleeping forever) keeps the shared test
# machine usable; the containment is the same for an unbounded one, which RLIMIT_NPROC also stops
# for users other than root.
FORK_BOMB = """# {marker}
import os, time
for depth in range(4):
    for _ in range(4):
        if os.fork() == 0:
            break
    else:
        break
print(os.getpid(), flush=True)
while True:
    time.sleep(1)
"""


def test_fork_bomb_is_contained_and_leaves_nothing(level, config, tmp_path):
    marker, counts = uuid.uuid4().hex, []
    running = threading.Event()
    running.set()

    def count() -> None:
        while running.is_set():
            counts.append(len(with_marker(marker)))
            time.sleep(0.2)

    counter = threading.Thread(target=count)
    counter.start()
    try:
        run = run_python(FORK_BOMB.format(marker=marker), tmp_path / "work",
                         dataclasses.replace(config, isolation=level, timeout_s=4))
    finally:
        running.clear()
        counter.join()
    assert max(counts) >= 341  # the bomb went off (under bwrap, bwrap and its init carry the marker too)
    assert run.failure == "timed out after 4 s (wall clock, sandbox.timeout_s) and was killed"
    assert with_marker(marker) == []


def test_killing_the_caller_kills_the_sandboxed_process(level, config, tmp_path):
    marker = uuid.uuid4().hex
    caller = (f"import dataclasses, sys\nfrom pathlib import Path\nfrom dreamer.sandbox import SandboxConfig\n"
              f"from dreamer.sandbox.isolation import run_isolated\n"
              f"config = SandboxConfig.from_dict({config.to_dict()!r})\n"
              f"run_isolated([sys.executable, '-c', '# {marker}\\nimport time\\ntime.sleep(60)'], b'', "
              f"Path({str(tmp_path)!r}), dataclasses.replace(config, isolation={level!r}, timeout_s=60))\n")
    process = subprocess.Popen([sys.executable, "-c", caller], env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 30
        while not live_processes(lambda proc: f"# {marker}\n".encode() in (proc / "cmdline").read_bytes()):
            assert time.monotonic() < deadline and process.poll() is None, "the sandboxed process never started"
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    deadline = time.monotonic() + 5
    while with_marker(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert with_marker(marker) == []


def test_a_process_that_leaves_the_session_is_killed_under_bwrap(config, tmp_path):
    if bwrap_problem() is not None:
        pytest.skip(f"bubblewrap does not work on this machine: {bwrap_problem()}")
    # The rlimits fallback's process-group kill cannot reach this one; bwrap's pid namespace can.
    marker = uuid.uuid4().hex
    code = (f"# {marker}\nimport os, time\nif os.fork() == 0:\n    os.setsid()\n    os.close(1)\n"
            f"    while True:\n        time.sleep(1)\nprint('leader done')\n")
    run = run_python(code, tmp_path / "work", dataclasses.replace(config, isolation="bwrap", timeout_s=4))
    assert run.stdout == b"leader done\n"
    assert with_marker(marker) == []


def test_50_gb_and_8_gb_allocations_fail(level, config, tmp_path):
    # 8 GB of untouched address space is granted without a limit (the machine overcommits); RLIMIT_AS refuses it.
    code = ("import mmap\ntry:\n    bytearray(50 * 2**30)\nexcept MemoryError:\n    print('50 GB: MemoryError')\n"
            "try:\n    mmap.mmap(-1, 8 * 2**30)\nexcept OSError as error:\n    print('8 GB:', error.strerror)\n")
    run = run_python(code, tmp_path / "work", dataclasses.replace(config, isolation=level))
    assert run.stdout == b"50 GB: MemoryError\n8 GB: Cannot allocate memory\n", run


def test_writing_100_mb_fails_at_the_file_size_limit(level, config, tmp_path):
    run = run_python("open('big', 'wb').write(b'x' * 100 * 2**20)", tmp_path / "work",
                     dataclasses.replace(config, isolation=level))
    assert run.failure == "exited with code 1"
    assert "File too large" in run.stderr_tail
    assert (tmp_path / "work" / "big").stat().st_size <= 8 * 2**20


def test_too_many_open_files_fail(level, config, tmp_path):
    code = "files = [open('/dev/null') for _ in range(300)]"
    run = run_python(code, tmp_path / "work", dataclasses.replace(config, isolation=level))
    assert run.failure == "exited with code 1" and "Too many open files" in run.stderr_tail


def test_100_mb_on_stdout_is_cut_at_the_cap(level, config, tmp_path):
    run = run_python("import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 2**20)\n", tmp_path / "work",
                     dataclasses.replace(config, isolation=level))
    assert run.stdout is None
    assert run.failure == "wrote more than 8 MB to stdout (sandbox.max_output_mb) and was killed"


def test_network_is_cut(level, config, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                f"    print('connected')\nexcept OSError as error:\n    print('refused:', error)\n")
        run = run_python(code, tmp_path / "work", dataclasses.replace(config, isolation=level))
        server.setblocking(False)
        try:
            server.accept()[0].close()
            accepted = True
        except BlockingIOError:
            accepted = False
    if level == "bwrap" or "no network" in run.isolation:
        assert run.stdout.startswith(b"refused:") and not accepted, run
    else:  # honesty: the fallback says so when it could not cut the network
        assert "network NOT cut" in run.isolation


def test_files_outside_the_workdir(level, config, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("sk-secret-value")
    escape = tmp_path / "escaped.txt"
    attempts = {"secret": f"open({str(secret)!r}).read()", "project": f"open({str(ROOT / 'README.md')!r}).read()",
                "home": "os.listdir('/home')", "escape": f"open({str(escape)!r}, 'w').write('x')",
                "project dir": f"os.listdir({str(ROOT)!r})"}
    code = "import json, os\nseen = {}\n" + "".join(
        f"try:\n    seen[{name!r}] = {action}\nexcept OSError as error:\n    seen[{name!r}] = error.strerror\n"
        for name, action in attempts.items()) + "print(json.dumps(seen))\n"
    run = run_python(code, tmp_path / "work", dataclasses.replace(config, isolation=level))
    seen = json.loads(run.stdout)
    if level == "bwrap":
        missing = "No such file or directory"
        del seen["escape"]  # a write into the private /tmp, gone with it
        assert seen == {"secret": missing, "project": missing, "home": missing, "project dir": ["dreamer"]}, seen
        assert not escape.exists()
    else:  # honesty: the fallback does not hide the filesystem, and says so
        assert "filesystem NOT isolated" in run.isolation
        assert seen["secret"] == "sk-secret-value"


def test_source_that_nests_past_the_recursion_limit_is_refused_not_crashed_on():
    """A symbolic fit of thousands of terms (or a hostile file) once crashed the checker with RecursionError."""
    from dreamer.sandbox import check_source

    deep = "def f(x):\n    return " + " + ".join(["x"] * 3000) + "\n"
    [violation] = check_source(deep, "deep.py")
    assert "nests too deeply" in violation.message


def test_source_longer_than_the_limit_is_rejected_unread(config, held_out):
    """A generated file of megabytes (a writer gone wrong, or a way to stall the checker) is refused by its size."""
    long = "X = [" + ", ".join(["1.0"] * 200_000) + "]\n"
    report = validate(long, held_out, dataclasses.replace(config, max_source_kb=100), "long")
    assert not report.accepted and report.attempts == 0
    assert report.reasons == ["source too long to check: 977 KB, more than sandbox.max_source_kb = 100"]
