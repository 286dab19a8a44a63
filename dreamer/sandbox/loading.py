"""Load a sim file for training: static check, the sandbox's verdict if one lies beside it, then exec."""

from __future__ import annotations

import json
from pathlib import Path

from dreamer.sandbox.static import UnsafeSourceError, check_source
from dreamer.sim.contract import FuncSim

REPORT_NAME = "report.json"


def load_sim(path: str | Path) -> FuncSim:
    """A sim from a `.py` file, or from a run dir holding exactly one `env/*.py`.

    Raises UnsafeSourceError if the source fails `check_source`, and ValueError if a
    `report.json` in the sim's folder says it was rejected. The returned functions are
    device-agnostic: pick the device when building `SimEnv`/`SimVectorEnv`.
    """
    path = Path(path)
    if path.is_dir():
        candidates = sorted((path / "env").glob("*.py"))
        if len(candidates) != 1:
            raise ValueError(f"{path}: expected exactly one env/*.py, found {[str(c) for c in candidates]}")
        path = candidates[0]
    source = path.read_text()
    violations = check_source(source, str(path))
    if violations:
        raise UnsafeSourceError(str(path), violations)
    report_path = path.parent / REPORT_NAME
    if report_path.exists():
        report = json.loads(report_path.read_text())
        if report.get("accepted") is not True:
            reasons = "\n".join(f"  - {reason}" for reason in report.get("reasons", []))
            raise ValueError(f"{report_path} rejected this sim (accepted={report.get('accepted')!r}):\n{reasons}")
    return FuncSim.from_source(source, name=path.stem)
