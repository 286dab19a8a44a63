"""Validate untrusted sim source: the static check here, then the suite in an isolated worker process.

The sim never runs in the calling process. The worker (`dreamer.sandbox.worker`) runs through
`dreamer.sandbox.isolation.run_isolated` (bubblewrap or rlimits, see there; the report's `isolation`
says which level and limits were in force) in a fresh temporary directory, gets its request as JSON
on stdin and answers with JSON on stdout: nothing is ever unpickled. A worker killed from outside the
sandbox (the out-of-memory killer, an operator) is run once more; the report's `attempts` counts the runs.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from dreamer.artifacts import write_json
from dreamer.sandbox.config import SandboxConfig
from dreamer.sandbox.isolation import Isolated, cancel_on, run_isolated
from dreamer.sandbox.static import check_source
from dreamer.sim.contract import space_to_dict
from dreamer.sim.fidelity import HELD_OUT_ARRAYS, Fidelity
from dreamer.sim.weights import save_weights

if TYPE_CHECKING:  # the worker imports this package: it must not pay for the trace readers
    from dreamer.traces import Trace

# The worker's command line after the interpreter. Not `-m dreamer.sandbox.worker`: this package imports the
# worker module, and runpy would then run a second copy of it as __main__ (with a RuntimeWarning).
WORKER_ARGS = ("-c", "from dreamer.sandbox.worker import main; main()")

ATTEMPTS = 2  # worker runs at most: a worker killed from outside the sandbox is retried once
STATIC_ONLY = "static check only (no process started)"  # the isolation of a report the static check decided


@dataclass
class SandboxReport:
    """The verdict on one sim: accepted iff every check passed; `reasons` lists every failure."""

    accepted: bool
    reasons: list[str]
    checks: dict[str, dict]  # check name -> {"passed": bool, "detail": str}
    fidelity: Fidelity | None  # the held-out figures, None if the fidelity check did not get that far
    isolation: str
    seconds: float
    name: str
    attempts: int  # worker runs: 0 if the static check decided, 2 if the first was killed from outside
    # The worst-predicted held-out transitions, worst first: {"index", "obs", "action", "next_obs",
    # "predicted_next_obs", "reward", "predicted_reward", "terminated", "predicted_terminated", "error"}
    counterexamples: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**asdict(self), "fidelity": None if self.fidelity is None else self.fidelity.to_dict()}

    def save(self, path: str | Path) -> Path:
        """Write JSON atomically (NaN/inf as null)."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> SandboxReport:
        values = json.loads(Path(path).read_text())
        values.setdefault("attempts", 0 if values["isolation"] == STATIC_ONLY else 1)  # saved before `attempts`
        fidelity = None if values["fidelity"] is None else Fidelity.from_dict(values["fidelity"])
        return cls(**{**values, "fidelity": fidelity})


def validate(source: str, held_out: Trace, config: SandboxConfig, name: str = "sim",
             weights: Mapping[str, torch.Tensor] | None = None) -> SandboxReport:
    """Statically check `source`, then run the worker's suite on it (and its `weights`, if any) against
    `held_out`; a worker killed from outside the sandbox is retried once, one that failed any limit or check
    is not."""
    start = time.monotonic()
    size_kb = len(source.encode()) / 1024
    if size_kb > config.max_source_kb:
        reason = f"source too long to check: {size_kb:,.0f} KB, more than sandbox.max_source_kb = {config.max_source_kb:g}"
        return SandboxReport(False, [reason], {"static": {"passed": False, "detail": reason}}, None, STATIC_ONLY,
                             time.monotonic() - start, name, attempts=0)
    violations = check_source(source, name)
    lines = [f"{name}:{v.line}:{v.col}: {v.message}" for v in violations]
    static = {"passed": not violations, "detail": "\n".join(lines) or "the source passes the allowlist"}
    if violations:
        return SandboxReport(False, [f"unsafe source: {line}" for line in lines], {"static": static}, None,
                             STATIC_ONLY, time.monotonic() - start, name, attempts=0)
    for attempt in range(1, ATTEMPTS + 1):
        run = _run_worker(source, weights, held_out, config, name)
        if not run.killed_from_outside:
            break
    result, failure = _worker_result(run.stdout, run.failure)
    if failure is not None:
        if run.killed_from_outside:
            failure += f"; retried, and each of the {attempt} attempts was killed that way"
        failure += f"; stderr ends:\n{run.stderr_tail}" if run.stderr_tail else ""
        return SandboxReport(False, [failure], {"static": static}, None, run.isolation, time.monotonic() - start, name,
                             attempts=attempt)
    checks = {"static": static, **result["checks"]}
    reasons = list(result["reasons"])
    accepted = not reasons and all(check["passed"] for check in checks.values())
    fidelity = None if result["fidelity"] is None else Fidelity.from_dict(result["fidelity"])
    return SandboxReport(accepted, reasons, checks, fidelity, run.isolation, time.monotonic() - start, name,
                         attempts=attempt, counterexamples=result.get("counterexamples", []))


def validate_many(sources: list[str], held_out: Trace, config: SandboxConfig, names: list[str],
                  weights: list[Mapping[str, torch.Tensor] | None] | None = None) -> list[SandboxReport]:
    """`validate` of each source (with its `weights`, default none), reports in order, with up to `config.workers` worker processes at
    once: at most `workers` x `memory_mb` of worker address space in all (RLIMIT_AS of each; the
    allowlist keeps sims from forking more processes). If one raises or the caller is interrupted
    (KeyboardInterrupt), the running workers are killed and cleaned up, and the rest never start,
    before the exception propagates."""
    cancel = threading.Event()
    with ThreadPoolExecutor(max_workers=config.workers, initializer=cancel_on, initargs=(cancel,)) as pool:
        try:
            futures = [pool.submit(validate, source, held_out, config, name, tensors)
                       for source, name, tensors in zip(sources, names, weights or [None] * len(sources))]
            return [future.result() for future in futures]
        except BaseException:
            cancel.set()
            pool.shutdown(cancel_futures=True)
            raise


def _run_worker(source: str, weights: Mapping[str, torch.Tensor] | None, held_out: Trace, config: SandboxConfig,
                name: str) -> Isolated:
    """One run of the worker on `source`, in a fresh temporary directory removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="dreamer-sandbox-") as workdir:
        np.savez(Path(workdir) / "held_out.npz", **{key: getattr(held_out, key) for key in HELD_OUT_ARRAYS})
        if weights is not None:
            save_weights(Path(workdir) / "weights.safetensors", weights)
        request = {
            "name": name,
            "source": source,
            "weights": None if weights is None else str(Path(workdir) / "weights.safetensors"),
            "held_out": str(Path(workdir) / "held_out.npz"),
            "observation_shape": list(held_out.observation_space.shape),
            "action_space": space_to_dict(held_out.action_space),
            "config": config.to_dict(),
        }
        return run_isolated([sys.executable, *WORKER_ARGS], json.dumps(request).encode(),
                            Path(workdir), config)


def _worker_result(stdout: bytes | None, failure: str | None) -> tuple[dict | None, str | None]:
    """(the worker's JSON result, None) or (None, why there is none)."""
    if failure is not None:
        return None, f"worker {failure}"
    try:
        result = json.loads(stdout)
    except ValueError as error:
        return None, f"worker output is not JSON ({error}): {stdout[:200]!r}"
    if not (isinstance(result, dict) and {"checks", "fidelity", "reasons"} <= result.keys()):
        return None, f"worker output is not a result object: {stdout[:200]!r}"
    return result, None
