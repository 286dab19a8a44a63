"""Load a sim file for training: static check, the sandbox's verdict if one lies beside it, then exec (with the
weights file beside it, if any)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import torch

from dreamer.sandbox.static import UnsafeSourceError, check_source, parse
from dreamer.sim.contract import FuncSim
from dreamer.sim.weights import read_weights_beside, weights_path

REPORT_NAME = "report.json"


def load_sim(path: str | Path, device: str | torch.device = "cpu") -> FuncSim:
    """A sim from a `.py` file (and the `.safetensors` of its weights beside it, if any), or from a run dir
    holding exactly one `env/*.py`.

    Raises UnsafeSourceError if the source fails `check_source`, and ValueError if a
    `report.json` in the sim's folder says it was rejected. The returned functions are
    device-agnostic: pick the device when building `SimEnv`/`SimVectorEnv`; `device` is where the
    weights are loaded (the envs' device saves a copy per step).
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
    weights = read_weights_beside(path, device)
    if weights is None and reads_weights(source):
        raise ValueError(f"{path} reads WEIGHTS, but no weights file lies beside it (expected {weights_path(path)})")
    return FuncSim.from_source(source, name=path.stem, weights=weights)


def reads_weights(source: str) -> bool:
    """Whether statically checked `source` reads the name `WEIGHTS` (a learned sim's tensors)."""
    return any(isinstance(node, ast.Name) and node.id == "WEIGHTS" for node in ast.walk(parse(source, "sim")))
