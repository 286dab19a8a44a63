"""Run one untrusted command away from this process and the machine: bubblewrap, or rlimits only.

Levels (`sandbox.isolation`; `auto` takes bwrap when a probe, run once per process, shows it works):

* ``bwrap``: bubblewrap with every namespace unshared (no network: a loopback of its own; its own
  pid namespace, torn down with all its processes when bwrap dies), no capabilities, a new session,
  a read-only view of only the system libraries, the Python installation(s) and the dreamer package,
  a private /tmp, /proc and /dev, and the fresh work dir as the only writable place (cwd and HOME).
* ``rlimits``: a plain subprocess in a new session, cwd and HOME in the work dir. The network is cut
  (unshare(CLONE_NEWNET) in the child) where the kernel permits it, e.g. as root; the filesystem is
  NOT isolated: the process reads what this user reads.

Both levels run with a minimal environment (no inherited variables: no API keys or tokens), the
rlimits AS, CPU, NPROC, NOFILE, FSIZE and CORE (bwrap is started under them), a cap on stdout, a
wall-clock kill of the process group (under bwrap: of the whole pid namespace), and SIGKILL when the
calling process dies. `Isolated.isolation` says exactly what was in force.

A process that dies of SIGKILL or SIGTERM which no limit of the run sent was killed from outside the
sandbox (the kernel's out-of-memory killer, an operator): `Isolated.killed_from_outside` says so,
since running it again may well succeed. A thread that called `cancel_on(event)` has each of its runs
killed, cleaned up and ended with `Cancelled` once `event` is set.
"""

from __future__ import annotations

import contextvars
import ctypes
import functools
import json
import os
import resource
import selectors
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import dreamer
from dreamer.sandbox.config import SandboxConfig

BWRAP = "bwrap"  # the bubblewrap binary, looked up on PATH
PACKAGE_DIR = Path(dreamer.__file__).resolve().parent
STDERR_TAIL_LINES = 12
STDERR_TAIL_BYTES = 1 << 16
POLL_S = 0.1  # how often a run looks at its cancel event
CLEANUP_S = 5.0  # most seconds to wait for killed processes to be gone
PROBE_TIMEOUT_S = 30.0
CLONE_NEWNET = 0x40000000  # unshare(2) flag: a new, empty network namespace
PR_SET_PDEATHSIG = 1  # prctl(2) option: the signal this process gets when its parent dies
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
LOADER_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d")
PROBE_MODULES = ("dreamer", "numpy", "torch", "gymnasium")  # what the worker imports, found in the view
SIGNAL_HINTS = {
    signal.SIGXCPU: "CPU time limit (sandbox.cpu_s) exceeded",
    signal.SIGXFSZ: "file size limit (sandbox.max_output_mb) exceeded",
    signal.SIGSEGV: "crashed in native code",
}
# What the out-of-memory killer and operators send. No limit of a run does: the wall clock and the
# stdout cap are reported as such, and RLIMIT_CPU's SIGKILL at cpu_s + 1 only follows a SIGXCPU the
# worker survived, which neither it nor an allowlisted sim can arrange.
OUTSIDE_SIGNALS = (signal.SIGKILL, signal.SIGTERM)
_LIBC = ctypes.CDLL(None, use_errno=True)  # resolved here: the child only calls what is already loaded
_UNSHARE, _PRCTL = getattr(_LIBC, "unshare", None), getattr(_LIBC, "prctl", None)
_PROBE_LOCK = threading.Lock()
_CANCEL: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("sandbox_cancel", default=None)


class Rlimit(NamedTuple):
    """One rlimit of the child: soft and hard values in the resource's units (bytes, s, count)."""

    resource: int
    soft: int
    hard: int
    label: str  # as the isolation string shows it, e.g. "AS 4096 MB"


@dataclass(frozen=True)
class Isolated:
    """One isolated run: `stdout` if the command exited 0 within every limit, else `failure` says why."""

    stdout: bytes | None
    failure: str | None  # what happened to the process, e.g. "timed out after 5 s (wall clock, ...) and was killed"
    stderr_tail: str  # the last STDERR_TAIL_LINES lines of its stderr
    isolation: str  # what was in force, e.g. "bwrap (no network, ...) + rlimits (...) + ..."
    killed_from_outside: bool  # died of OUTSIDE_SIGNALS that no limit sent: a retry may succeed


class Cancelled(Exception):
    """The run's cancel event (see `cancel_on`) was set; its process is killed and cleaned up."""


def cancel_on(event: threading.Event) -> None:
    """Make every later `run_isolated` in the calling thread stop as soon as `event` is set: kill
    its process, clean up, raise `Cancelled` (e.g. as the initializer of a thread pool)."""
    _CANCEL.set(event)


def run_isolated(argv: list[str], stdin: bytes, workdir: Path, config: SandboxConfig) -> Isolated:
    """Run `argv` at the level `config.isolation` asks for, feeding it `stdin`, in `workdir` (which
    must be fresh: the command may write there). Nothing of the run survives the return or the
    `Cancelled` raised when the thread's cancel event (see `cancel_on`) is set."""
    level = isolation_level(config)
    workdir = Path(workdir).resolve()
    limits = child_limits(config)
    info_read, info_write = os.pipe()  # bwrap: its --info-fd; rlimits: b"1" once the network is cut
    try:
        with tempfile.TemporaryFile() as stderr:
            try:
                process = subprocess.Popen(
                    _bwrap_argv(argv, workdir, info_write) if level == "bwrap" else argv,
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, cwd=workdir,
                    env=minimal_env(workdir), start_new_session=True,
                    pass_fds=(info_write,) if level == "bwrap" else (),
                    # Safe with threads here: the child only calls setrlimit and libc functions resolved before.
                    preexec_fn=functools.partial(_enter_limits, limits, info_write if level == "rlimits" else None),
                )
            finally:
                os.close(info_write)
            try:
                stdout, failure = _communicate(process, stdin, config)
            finally:
                _kill_group(process.pid)  # the leader is not reaped yet, so the group is still its own
                process.wait()
                process.stdout.close()
                info = _read_available(info_read)
                _wait_gone(process.pid, _namespace_init(info) if level == "bwrap" else None)
            stderr.seek(max(0, stderr.seek(0, os.SEEK_END) - STDERR_TAIL_BYTES))
            lines = stderr.read().decode(errors="replace").strip().splitlines()
    finally:
        os.close(info_read)
    outside = False
    if failure is None and process.returncode != 0:
        failure, outside = _exit_failure(process.returncode, level)
    return Isolated(None if failure else bytes(stdout), failure, "\n".join(lines[-STDERR_TAIL_LINES:]),
                    describe(level, config, limits, network_cut=level == "bwrap" or info == b"1"), outside)


def isolation_level(config: SandboxConfig) -> str:
    """The level `config.isolation` means on this machine: "bwrap" or "rlimits"."""
    if config.isolation == "rlimits":
        return "rlimits"
    problem = bwrap_problem()
    if problem is None:
        return "bwrap"
    if config.isolation == "bwrap":
        raise RuntimeError(f"sandbox.isolation=bwrap, but bubblewrap does not work here: {problem}. Install "
                           f"bubblewrap (`apt-get install bubblewrap`) or set sandbox.isolation=auto or rlimits")
    return "rlimits"


def bwrap_problem() -> str | None:
    """Why bubblewrap cannot run the worker here, or None when it can (probed once per process)."""
    with _PROBE_LOCK:
        return _probe_bwrap()


def describe(level: str, config: SandboxConfig, limits: list[Rlimit], network_cut: bool) -> str:
    """The isolation string of the report: every layer in force, with the limits as set."""
    rlimits = ", ".join(limit.label for limit in limits)
    if level == "bwrap":
        head = ("bwrap (no network, read-only system view, private /tmp, own pid namespace, no capabilities, "
                "minimal env)")
        killed = "the whole pid namespace"
    else:
        network = "no network" if network_cut else "network NOT cut"
        head = f"subprocess (new session, minimal env, temp cwd and HOME, {network}, filesystem NOT isolated)"
        killed = "the process group"
    return (f"{head} + rlimits ({rlimits}) + stdout cap {config.max_output_mb:g} MB + wall-clock kill of {killed} "
            f"after {config.timeout_s:g} s")


def minimal_env(home: Path) -> dict[str, str]:
    """Only what the worker needs: no inherited variables (API keys, tokens, proxies)."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "PYTHONPATH": str(PACKAGE_DIR.parent),
        "HOME": str(home),
        "TMPDIR": str(home),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        # One thread and few malloc arenas keep the address space (RLIMIT_AS) near 1 GB.
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MALLOC_ARENA_MAX": "2",
    }


# --- bubblewrap ----------------------------------------------------------------------------------


@functools.cache
def _probe_bwrap() -> str | None:
    """Run the interpreter in the read-only view (trusted code: no limits) and look for the worker's imports."""
    if shutil.which(BWRAP) is None:
        return f"`{BWRAP}` is not on PATH"
    script = (f"import importlib.util, sys; missing = [m for m in {PROBE_MODULES!r} if importlib.util.find_spec(m) "
              f"is None]; sys.exit(f'cannot import {{missing}} in the read-only view' if missing else 0)")
    with tempfile.TemporaryDirectory(prefix="dreamer-sandbox-probe-") as workdir:
        try:
            probe = subprocess.run(_bwrap_argv([sys.executable, "-c", script], Path(workdir).resolve(), None),
                                   check=False, capture_output=True, env=minimal_env(Path(workdir)),
                                   timeout=PROBE_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"`{BWRAP}` failed to start: {error}"
    if probe.returncode != 0:
        return f"`{BWRAP}` exited with code {probe.returncode}: {probe.stderr.decode(errors='replace').strip()[-500:]}"
    return None


def _bwrap_argv(argv: list[str], workdir: Path, info_fd: int | None) -> list[str]:
    """bwrap's command line: namespaces, the read-only view, the writable `workdir`, then `argv`."""
    args = [BWRAP, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in LOADER_FILES:
        args += ["--ro-bind-try", path, path]
    for path in _python_paths():
        args += ["--ro-bind", path, path]
    args += ["--bind", str(workdir), str(workdir), "--chdir", str(workdir)]
    if info_fd is not None:
        args += ["--info-fd", str(info_fd)]
    return [*args, "--", *argv]


def _python_paths() -> list[str]:
    """The interpreter's prefixes, its site dirs and their .pth entries, and the dreamer package dir:
    real paths outside the system dirs, nested ones dropped. The project dir holding the package (and
    its ancestors) stays out: only the package itself is shown."""
    candidates = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                  str(Path(sys.executable).resolve().parent.parent), str(PACKAGE_DIR)}
    site_dirs = [*site.getsitepackages(), site.getusersitepackages()]
    candidates.update(site_dirs)
    for site_dir in site_dirs:
        for pth in Path(site_dir).glob("*.pth"):
            for line in pth.read_text(errors="replace").splitlines():
                if line.strip() and not line.startswith(("#", "import ", "import\t")):
                    candidates.add(os.path.join(site_dir, line.strip()))
    project = PACKAGE_DIR.parent
    real = {Path(path).resolve() for path in candidates if os.path.exists(path)}
    real = {path for path in real if path != project and path not in project.parents} | {PACKAGE_DIR}
    system = [Path(path).resolve() for path in SYSTEM_DIRS if os.path.isdir(path)]
    kept = [path for path in real if not any(root in path.parents or root == path for root in system)]
    return sorted(str(path) for path in kept if not any(other in path.parents for other in kept))


def _namespace_init(info: bytes) -> int | None:
    """The host pid of the sandbox's pid-1 from bwrap's --info-fd JSON (None if bwrap wrote none)."""
    try:
        pid = json.loads(info.decode()).get("child-pid")
    except (ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) and pid > 1 else None


# --- the child: limits and the network cut -------------------------------------------------------


def child_limits(config: SandboxConfig) -> list[Rlimit]:
    """The child's rlimits from `config`, none above the hard limits this process already has."""
    output, memory = int(config.max_output_mb * 2**20), config.memory_mb * 2**20
    tasks = _user_task_count() + config.max_processes
    nproc = f"NPROC +{config.max_processes}" + (" (not enforced for root)" if os.getuid() == 0 else "")
    wanted = ((resource.RLIMIT_AS, memory, memory, f"AS {config.memory_mb} MB", 2**20, "MB"),
              (resource.RLIMIT_CPU, config.cpu_s, config.cpu_s + 1, f"CPU {config.cpu_s} s", 1, "s"),
              (resource.RLIMIT_NPROC, tasks, tasks, nproc, 1, "tasks"),
              (resource.RLIMIT_NOFILE, config.max_open_files, config.max_open_files,
               f"NOFILE {config.max_open_files}", 1, "files"),
              (resource.RLIMIT_FSIZE, output, output, f"FSIZE {config.max_output_mb:g} MB", 2**20, "MB"),
              (resource.RLIMIT_CORE, 0, 0, "CORE 0", 1, "bytes"))
    limits = []
    for limit, soft, hard, label, unit, unit_name in wanted:
        ceiling = resource.getrlimit(limit)[1]
        if ceiling != resource.RLIM_INFINITY and hard > ceiling:
            if soft > ceiling:
                label = f"{label.split()[0]} {ceiling / unit:g} {unit_name} (the hard limit here)"
            soft, hard = min(soft, ceiling), ceiling
        limits.append(Rlimit(limit, soft, hard, label))
    return limits


def _user_task_count() -> int:
    """Processes and threads of this real uid (what RLIMIT_NPROC counts); 0 without /proc."""
    uid, count = str(os.getuid()), 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("Uid", "").split()[:1] == [uid]:
            count += int(fields.get("Threads", "1"))
    return count


def _enter_limits(limits: list[Rlimit], network_fd: int | None) -> None:
    """Runs in the forked child before exec: die with the caller, set the rlimits; with `network_fd`,
    try to cut the network (a new, empty network namespace) and write b"1" there if that worked."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL)
    for limit in limits:
        resource.setrlimit(limit.resource, (limit.soft, limit.hard))
    if network_fd is not None and _UNSHARE is not None and _UNSHARE(CLONE_NEWNET) == 0:
        os.write(network_fd, b"1")


# --- the run -------------------------------------------------------------------------------------


def _communicate(process: subprocess.Popen, stdin: bytes, config: SandboxConfig) -> tuple[bytearray, str | None]:
    """Feed stdin, read stdout up to the cap, until exit or the wall clock: (stdout, failure or None);
    `Cancelled` once the thread's cancel event is set."""
    deadline = time.monotonic() + config.timeout_s
    cap = int(config.max_output_mb * 2**20)
    timed_out = f"timed out after {config.timeout_s:g} s (wall clock, sandbox.timeout_s) and was killed"
    threading.Thread(target=_feed, args=(process.stdin, stdin), daemon=True).start()
    output = bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return output, timed_out
            _raise_if_cancelled()
            if selector.select(min(remaining, POLL_S)):
                chunk = os.read(process.stdout.fileno(), 1 << 16)
                if not chunk:
                    break
                output += chunk
                if len(output) > cap:
                    return output, (f"wrote more than {config.max_output_mb:g} MB to stdout "
                                    f"(sandbox.max_output_mb) and was killed")
    return output, None if _exited(process.pid, deadline) else timed_out


def _feed(stdin, data: bytes) -> None:
    try:
        stdin.write(data)
        stdin.close()
    except (BrokenPipeError, ValueError):  # the process died or was killed first
        pass


def _exited(pid: int, deadline: float) -> bool:
    """Wait until `pid` exits or `deadline`, leaving it unreaped so its group id stays its own."""
    while time.monotonic() < deadline:
        _raise_if_cancelled()
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        time.sleep(0.01)
    return False


def _raise_if_cancelled() -> None:
    event = _CANCEL.get()
    if event is not None and event.is_set():
        raise Cancelled("the sandboxed run was cancelled by its caller")


def _exit_failure(returncode: int, level: str) -> tuple[str, bool]:
    """Why a nonzero exit, and whether it was a kill from outside the sandbox (OUTSIDE_SIGNALS);
    bwrap reports a command killed by signal N as exit code 128 + N."""
    number = -returncode if returncode < 0 else returncode - 128 if level == "bwrap" and returncode > 128 else 0
    if number not in set(signal.Signals):
        return f"exited with code {returncode}", False
    name = signal.Signals(number).name
    if number in OUTSIDE_SIGNALS:
        return f"was killed from outside the sandbox (signal {number}, {name}), not by a check", True
    return f"killed by signal {name}" + (f" ({SIGNAL_HINTS[number]})" if number in SIGNAL_HINTS else ""), False


def _read_available(fd: int) -> bytes:
    """What a pipe holds now, without waiting for its writers to close it."""
    os.set_blocking(fd, False)
    data = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


# --- cleanup: nothing of the run may survive -----------------------------------------------------


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_gone(pgid: int, namespace_init: int | None) -> None:
    """Kill the process group until none of it is alive, and wait for the sandbox's pid namespace
    (its pid 1 exits last, after the kernel killed the rest), both at most CLEANUP_S."""
    deadline = time.monotonic() + CLEANUP_S
    while time.monotonic() < deadline and (_group_alive(pgid) or _alive(namespace_init)):
        _kill_group(pgid)
        time.sleep(0.01)


def _stat(pid: str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, pgrp, ...); None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _alive(pid: int | None) -> bool:
    fields = None if pid is None else _stat(str(pid))
    return fields is not None and fields[0] not in "ZX"


def _group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` still runs (zombies do not count)."""
    for entry in os.listdir("/proc"):
        fields = _stat(entry) if entry.isdigit() else None
        if fields is not None and fields[2] == str(pgid) and fields[0] not in "ZX":
            return True
    return False
