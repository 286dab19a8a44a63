"""Minari datasets (https://minari.farama.org) as traces: `load_minari` reads a local dataset and
`save_minari` creates one. Nothing is downloaded: fetch a remote dataset first with
`minari download ID`. Datasets live in MINARI_DATASETS_PATH (default ~/.minari/datasets).

A Minari episode holds T+1 observations and T steps; its transitions are (observations[t],
actions[t], rewards[t], observations[t+1], terminations[t], truncations[t]) and its id is the
episode id. Only 1-d Box observation spaces and Discrete (from 0) or 1-d Box action spaces fit a
Trace; infos are not loaded. The trace's name, notes and max_episode_steps are kept under the
dataset metadata key "trace_meta" (a dataset without it: the dataset id, its description, its env
spec's max_episode_steps). Minari has no place for feedback, info, or episode ids other than
"0", "1", ...: saving drops them with a TraceWarning, and refuses a trace whose next_obs is not its
episode's next obs.
"""

from __future__ import annotations

import shutil
import warnings

import minari
import numpy as np
from gymnasium import spaces
from minari.data_collector.episode_buffer import EpisodeBuffer
from minari.dataset.minari_dataset import parse_dataset_id
from minari.storage.datasets_root_dir import get_dataset_path

from dreamer.traces.jsonl import meta_from_dict, space_from_json, space_to_json
from dreamer.traces.trace import Trace, TraceChunks, TraceError, TraceWarning, check_spaces

MINARI_PREFIX = "minari:"
META_KEY = "trace_meta"


def load_minari(dataset_id: str) -> Trace:
    """The local Minari dataset `dataset_id` as a Trace; TraceError if it is not local."""
    where = f"{MINARI_PREFIX}{dataset_id}"
    path = get_dataset_path(dataset_id)
    if not (path / "data").is_dir():
        raise TraceError(f"no local Minari dataset at {path} (nothing is downloaded): get it with `minari download "
                         f"{dataset_id}`, or set MINARI_DATASETS_PATH to the folder that holds it", where)
    try:
        dataset = minari.load_dataset(dataset_id)
    except (ImportError, OSError, ValueError) as error:
        raise TraceError(f"Minari could not open it: {error}", where) from None
    try:
        check_spaces(dataset.observation_space, dataset.action_space)
    except TraceError as error:
        raise error.at(where) from None
    observation_space, action_space = (space_from_json(space_to_json(space), where, key) for key, space in
                                       (("observation_space", dataset.observation_space),
                                        ("action_space", dataset.action_space)))
    action_dtype = np.int64 if isinstance(action_space, spaces.Discrete) else np.float32
    chunks, ids = TraceChunks(), []
    for episode in dataset.iterate_episodes():
        steps = len(episode.rewards)
        if not steps:  # no transitions
            continue
        observations = np.asarray(episode.observations, dtype=np.float32)
        chunks.add(
            obs=observations[:-1],
            action=np.asarray(episode.actions, dtype=action_dtype).reshape(steps, *action_space.shape),
            reward=np.asarray(episode.rewards, dtype=np.float32),
            next_obs=observations[1:],
            terminated=np.asarray(episode.terminations, dtype=bool),
            truncated=np.asarray(episode.truncations, dtype=bool),
            episode=np.full(steps, len(ids), dtype=np.int64),
        )
        ids.append(str(episode.id))
    if not ids:
        raise TraceError("no transitions (every episode is empty)", where)
    metadata = dataset.storage.metadata
    if META_KEY in metadata:
        meta = meta_from_dict(metadata[META_KEY], where)
    else:
        env_spec = dataset.env_spec
        meta = dict(name=dataset_id, notes=metadata.get("description") or "",
                    max_episode_steps=None if env_spec is None else env_spec.max_episode_steps)
    try:
        return chunks.trace(chunks.concatenate(), episode_ids=ids, observation_space=observation_space,
                            action_space=action_space, **meta)
    except TraceError as error:
        raise error.at(where if error.row is None else f"{where}: row {error.row}") from None


def save_minari(trace: Trace, dataset_id: str) -> None:
    """Create the local Minari dataset `dataset_id` from `trace` (see the module docstring);
    TraceError if it exists already, or if the trace does not fit Minari."""
    where = f"{MINARI_PREFIX}{dataset_id}"
    try:
        parse_dataset_id(dataset_id)
    except ValueError as error:
        raise TraceError(str(error), where) from None
    path = get_dataset_path(dataset_id)
    if path.exists():
        raise TraceError(f"a Minari dataset already exists at {path}: pick another id, or delete it first with "
                         f"`minari delete {dataset_id}`", where)
    same_episode = trace.episode[1:] == trace.episode[:-1]
    differs = np.flatnonzero(same_episode & (trace.next_obs[:-1] != trace.obs[1:]).any(1))
    if differs.size:
        raise TraceError("differs from the next transition's obs in the same episode; Minari stores an episode as "
                         "one sequence of observations and cannot keep it", f"{where}: row {differs[0]}", "next_obs")
    dropped = [f"{what} ({count})" for what, count in (
        ("feedback on transitions", len(trace.feedback)),
        ("feedback on episodes", len(trace.episode_feedback)),
        ("info dicts", 0 if trace.info is None else sum(map(bool, trace.info))),
        ("episode ids other than 0, 1, ...", sum(i != str(e) for e, i in enumerate(trace.episode_ids))),
    ) if count]
    if dropped:
        warnings.warn(f"{where}: Minari has no place for the trace's {', '.join(dropped)}; they are not saved",
                      TraceWarning, stacklevel=3)
    buffers = [
        EpisodeBuffer(
            id=e,
            observations=np.concatenate([trace.obs[rows], trace.next_obs[rows.stop - 1][None]]),
            actions=trace.action[rows],
            rewards=trace.reward[rows],
            terminations=trace.terminated[rows],
            truncations=trace.truncated[rows],
        )
        for e, rows in enumerate(trace.episode_slices())
    ]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Minari's advice to name an author, a code link, ...
            dataset = minari.create_dataset_from_buffers(dataset_id, buffers, observation_space=trace.observation_space,
                                                         action_space=trace.action_space, data_format="arrow")
        dataset.storage.update_metadata(
            {META_KEY: {"name": trace.name, "notes": trace.notes, "max_episode_steps": trace.max_episode_steps}})
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)  # no half-written dataset
        raise
