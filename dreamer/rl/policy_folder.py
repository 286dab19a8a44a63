"""A saved policy folder: `policy.json` (its kind, spaces and config) beside `policy.pt` (its weights)."""

from __future__ import annotations

import json
from pathlib import Path


def read_policy_meta(path: str | Path) -> tuple[Path, dict]:
    """A saved policy folder (or a run dir holding `policy/`) -> (the folder, its `policy.json`)."""
    folder = Path(path)
    if (folder / "policy").is_dir():
        folder = folder / "policy"
    meta_path = folder / "policy.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: expected a policy folder with policy.json and policy.pt")
    return folder, json.loads(meta_path.read_text())
