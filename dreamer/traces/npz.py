"""NPZ traces: the Trace arrays under their field names, plus `episode_ids` (E,) str and `meta`.

`meta` is a 0-d str array holding JSON: the JSONL meta object (name, notes, max_episode_steps,
observation_space, action_space; see `dreamer.traces.jsonl`) plus `feedback` ({"row": text}),
`episode_feedback` ({"episode id": text}) and `info` (a list of N dicts, or null). Loading checks
the arrays as `Trace` does, and errors name the file, the array ("field") and the row, e.g.
`run.npz: row 7: field "reward": expected finite numbers, got nan`.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from dreamer.traces.jsonl import episode_feedback_from_json, episode_feedback_to_json, meta_from_dict, meta_to_dict
from dreamer.traces.trace import ARRAYS, Trace, TraceError


def write_npz(trace: Trace, path: Path) -> None:
    """Write `trace` to `path` (compressed)."""
    meta = {**meta_to_dict(trace), "feedback": {str(k): v for k, v in trace.feedback.items()},
            "episode_feedback": episode_feedback_to_json(trace), "info": trace.info}
    with open(path, "wb") as file:
        np.savez_compressed(
            file,
            **{name: getattr(trace, name) for name in ARRAYS},
            episode_ids=np.array(trace.episode_ids, dtype=str),
            meta=np.array(json.dumps(meta)),
        )


def read_npz(path: Path) -> Trace:
    """Read and validate an NPZ trace."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise TraceError(f"expected an .npz archive without pickled objects ({error})", str(path)) from None
    missing = [name for name in (*ARRAYS, "episode_ids", "meta") if name not in arrays]
    if missing:
        raise TraceError(f"missing arrays {missing} (has {sorted(arrays)})", str(path))
    try:
        meta = json.loads(str(arrays["meta"]))
        feedback, info = meta.pop("feedback", {}), meta.pop("info", None)
        episode_feedback = meta.pop("episode_feedback", {})
    except (json.JSONDecodeError, AttributeError, TypeError):
        raise TraceError("expected a JSON object with the metadata", str(path), "meta") from None
    kwargs = meta_from_dict(meta, str(path))
    for key in ("observation_space", "action_space"):
        if key not in kwargs:
            raise TraceError(f"missing {key}", str(path), "meta")
    if isinstance(feedback, dict):  # JSON object keys are strings; Trace rejects those that are not rows
        feedback = {int(k) if k.isdigit() else k: v for k, v in feedback.items()}
    episode_ids = [str(i) for i in arrays["episode_ids"].reshape(-1).tolist()]
    episode_feedback = episode_feedback_from_json(episode_feedback, episode_ids, str(path))
    try:
        return Trace(
            **{name: arrays[name] for name in ARRAYS},
            episode_ids=episode_ids,
            feedback=feedback,
            info=info,
            episode_feedback=episode_feedback,
            **kwargs,
        )
    except TraceError as error:
        raise error.at(str(path) if error.row is None else f"{path}: row {error.row}") from None
