"""Validate untrusted sim source: the static check here, then the suite in a limited subprocess.

The sim never runs in the calling process. The worker (`dreamer.sandbox.worker`) runs in its own
session (process group) with a minimal environment (no inherited secrets), a fresh temporary
directory as cwd and HOME, and rlimits on address space, CPU time, file size and core dumps; it is
killed with its whole group after `timeout_s` of wall clock or when it writes more than
`max_output_mb` to stdout. RLIMIT_NPROC is not set: it counts every process of the user
system-wide (so a cap would fail on a busy machine) and root ignores it; the static check leaves
no way to start a process anyway.
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

import dreamer
from dreamer.artifacts import write_json
from dreamer.sandbox.config import SandboxConfig
from dreamer.sandbox.static import check_source
from dreamer.sim.contract import space_to_dict
from dreamer.traces import Trace

ISOLATION = "subprocess+rlimits (new session, minimal env, temp cwd; RLIMIT_AS, RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_CORE)"
STDERR_TAIL_LINES = 12
SIGNAL_HINTS = {
    signal.SIGXCPU: "CPU time limit (cpu_s) exceeded",
    signal.SIGXFSZ: "file size limit (max_output_mb) exceeded",
    signal.SIGKILL: "killed, e.g. by the kernel's out-of-memory killer",
    signal.SIGSEGV: "crashed in native code",
}


@dataclass
class SandboxReport:
    """The verdict on one sim: accepted iff every check passed; `reasons` lists every failure."""

    accepted: bool
    reasons: list[str]
    checks: dict[str, dict]  # check name -> {"passed": bool, "detail": str}
    fidelity: dict  # held-out figures (see dreamer.sandbox.worker.fidelity_figures), {} if not run
    isolation: str
    seconds: float
    name: str
    # The worst-predicted held-out transitions, worst first: {"index", "obs", "action", "next_obs",
    # "predicted_next_obs", "reward", "predicted_reward", "terminated", "predicted_terminated", "error"}
    counterexamples: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write JSON atomically (NaN/inf as null)."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> SandboxReport:
        return cls(**json.loads(Path(path).read_text()))


def validate(source: str, held_out: Trace, config: SandboxConfig, name: str = "sim") -> SandboxReport:
    """Statically check `source`, then run the worker's suite on it against `held_out`."""
    start = time.monotonic()
    violations = check_source(source, name)
    lines = [f"{name}:{v.line}:{v.col}: {v.message}" for v in violations]
    static = {"passed": not violations, "detail": "\n".join(lines) or "the source passes the allowlist"}
    if violations:
        return SandboxReport(False, [f"unsafe source: {line}" for line in lines], {"static": static}, {},
                             "static check only (no process started)", time.monotonic() - start, name)
    with tempfile.TemporaryDirectory(prefix="dreamer-sandbox-") as workdir:
        arrays = {key: getattr(held_out, key) for key in
                  ("obs", "action", "reward", "next_obs", "terminated", "episode")}
        np.savez(Path(workdir) / "held_out.npz", **arrays)
        request = {
            "name": name,
            "source": source,
            "held_out": str(Path(workdir) / "held_out.npz"),
            "observation_shape": list(held_out.observation_space.shape),
            "action_space": space_to_dict(held_out.action_space),
            "config": config.to_dict(),
        }
        result, failure = _run_worker(json.dumps(request).encode(), workdir, config)
    if failure is not None:
        return SandboxReport(False, [failure], {"static": static}, {}, ISOLATION, time.monotonic() - start, name)
    checks = {"static": static, **result["checks"]}
    reasons = list(result["reasons"])
    accepted = not reasons and all(check["passed"] for check in checks.values())
    return SandboxReport(accepted, reasons, checks, result["fidelity"], ISOLATION, time.monotonic() - start, name,
                         result.get("counterexamples", []))


def validate_many(sources: list[str], held_out: Trace, config: SandboxConfig, names: list[str]) -> list[SandboxReport]:
    """`validate` of each source, up to `config.workers` worker processes at once; reports in order."""
    with ThreadPoolExecutor(max_workers=config.workers) as pool:
        return list(pool.map(lambda pair: validate(pair[0], held_out, config, pair[1]), zip(sources, names)))


def _worker_env(home: str) -> dict[str, str]:
    """Only what the worker needs: no inherited variables (API keys, tokens, proxies)."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "PYTHONPATH": str(Path(dreamer.__file__).resolve().parent.parent),
        "HOME": home,
        "TMPDIR": home,
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        # One thread and few malloc arenas keep the address space (RLIMIT_AS) near 1 GB.
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MALLOC_ARENA_MAX": "2",
    }


def _set_limits(config: SandboxConfig) -> None:
    """Runs in the forked child before exec; never raises the hard limits already in force."""
    output_bytes = int(config.max_output_mb * 2**20)
    for limit, value, hard in ((resource.RLIMIT_AS, config.memory_mb * 2**20, config.memory_mb * 2**20),
                               (resource.RLIMIT_CPU, config.cpu_s, config.cpu_s + 1),
                               (resource.RLIMIT_FSIZE, output_bytes, output_bytes),
                               (resource.RLIMIT_CORE, 0, 0)):
        current = resource.getrlimit(limit)[1]
        if current != resource.RLIM_INFINITY:
            value, hard = min(value, current), min(hard, current)
        resource.setrlimit(limit, (value, hard))


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _exited(pid: int, deadline: float) -> bool:
    """Wait until `pid` exits or `deadline`, leaving it unreaped so its group id stays its own."""
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        time.sleep(0.01)
    return False


def _feed(stdin, data: bytes) -> None:
    try:
        stdin.write(data)
        stdin.close()
    except (BrokenPipeError, ValueError):  # the worker died or was killed first
        pass


def _run_worker(request: bytes, workdir: str, config: SandboxConfig) -> tuple[dict | None, str | None]:
    """(the worker's result, None) or (None, why it did not come back)."""
    stderr_path = Path(workdir) / "stderr.log"
    cap = int(config.max_output_mb * 2**20)
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "dreamer.sandbox.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, cwd=workdir,
            env=_worker_env(workdir), start_new_session=True, preexec_fn=lambda: _set_limits(config),
        )
    deadline = time.monotonic() + config.timeout_s
    threading.Thread(target=_feed, args=(process.stdin, request), daemon=True).start()
    output, failure = bytearray(), None
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while failure is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    failure = f"worker timed out after {config.timeout_s} s (wall clock) and was killed"
                elif selector.select(remaining):
                    chunk = os.read(process.stdout.fileno(), 1 << 16)
                    if not chunk:
                        break
                    output += chunk
                    if len(output) > cap:
                        failure = (f"worker wrote more than max_output_mb={config.max_output_mb} MB to stdout "
                                   f"and was killed")
        if failure is None and not _exited(process.pid, deadline):
            failure = f"worker timed out after {config.timeout_s} s (wall clock) and was killed"
    finally:
        _kill_group(process.pid)  # the leader is not reaped yet, so this group is still the worker's
        process.wait()
        process.stdout.close()
    stderr_tail = "\n".join(stderr_path.read_text(errors="replace").strip().splitlines()[-STDERR_TAIL_LINES:])
    if failure is None and process.returncode != 0:
        if process.returncode < 0:
            number = -process.returncode
            failure = f"worker killed by signal {signal.Signals(number).name}"
            if number in SIGNAL_HINTS:
                failure += f" ({SIGNAL_HINTS[number]})"
        else:
            failure = f"worker exited with code {process.returncode}"
    if failure is None:
        try:
            result = json.loads(output)
            if not (isinstance(result, dict) and {"checks", "fidelity", "reasons"} <= result.keys()):
                raise ValueError("not a worker result object")
            return result, None
        except ValueError as error:
            failure = f"worker output is not a JSON result ({error}): {bytes(output[:200])!r}"
    return None, failure + (f"; stderr ends:\n{stderr_tail}" if stderr_tail else "")
