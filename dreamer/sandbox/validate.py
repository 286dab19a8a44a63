"""Validate untrusted sim source: the static check here, then the suite in an isolated worker process.

The sim never runs in the calling process. The worker (`dreamer.sandbox.worker`) runs through
`dreamer.sandbox.isolation.run_isolated` (bubblewrap or rlimits, see there; the report's `isolation`
says which level and limits were in force) in a fresh temporary directory, gets its request as JSON
on stdin and answers with JSON on stdout: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dreamer.artifacts import write_json
from dreamer.sandbox.config import SandboxConfig
from dreamer.sandbox.isolation import run_isolated
from dreamer.sandbox.static import check_source
from dreamer.sandbox.worker import HELD_OUT_ARRAYS
from dreamer.sim.contract import space_to_dict
from dreamer.traces import Trace


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
        np.savez(Path(workdir) / "held_out.npz", **{key: getattr(held_out, key) for key in HELD_OUT_ARRAYS})
        request = {
            "name": name,
            "source": source,
            "held_out": str(Path(workdir) / "held_out.npz"),
            "observation_shape": list(held_out.observation_space.shape),
            "action_space": space_to_dict(held_out.action_space),
            "config": config.to_dict(),
        }
        run = run_isolated([sys.executable, "-m", "dreamer.sandbox.worker"], json.dumps(request).encode(),
                           Path(workdir), config)
    result, failure = _worker_result(run.stdout, run.failure)
    if failure is not None:
        failure += f"; stderr ends:\n{run.stderr_tail}" if run.stderr_tail else ""
        return SandboxReport(False, [failure], {"static": static}, {}, run.isolation, time.monotonic() - start, name)
    checks = {"static": static, **result["checks"]}
    reasons = list(result["reasons"])
    accepted = not reasons and all(check["passed"] for check in checks.values())
    return SandboxReport(accepted, reasons, checks, result["fidelity"], run.isolation, time.monotonic() - start, name,
                         result.get("counterexamples", []))


def validate_many(sources: list[str], held_out: Trace, config: SandboxConfig, names: list[str]) -> list[SandboxReport]:
    """`validate` of each source, up to `config.workers` worker processes at once; reports in order."""
    with ThreadPoolExecutor(max_workers=config.workers) as pool:
        return list(pool.map(lambda pair: validate(pair[0], held_out, config, pair[1]), zip(sources, names)))


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
