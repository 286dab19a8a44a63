"""The write stage: a session in, a sim written and judged on held-out episodes, its artifacts in `env_dir`.

    env_dir/<sim name>.py     the writer's pick
    env_dir/<sim name>.safetensors   its weights, for a learned sim (`dreamer.sim.weights`)
    env_dir/report.json       its sandbox report on the held-out episodes
    env_dir/split.json        {"train_episodes": [id, ...], "held_out_episodes": [id, ...]}
    env_dir/search/           the writer's trail: every candidate and `selection.json`
"""

from __future__ import annotations

import json
from pathlib import Path

from dreamer.artifacts import write_json
from dreamer.sandbox import SandboxConfig, SandboxReport
from dreamer.sim.weights import read_weights_beside
from dreamer.traces import Trace
from dreamer.writers.protocol import Writer, Written, WriteTask

SPLIT = "split.json"


def write_sim(writer: Writer, train: Trace, held_out: Trace, sandbox: SandboxConfig, sim_name: str, env_dir: Path,
              previous: str | None = None) -> Written:
    """Have `writer` write a sim of `train` that the sandbox judges on `held_out` (episodes of one session
    split by `Trace.split`), and save the artifacts above."""
    write_json(env_dir / SPLIT, {"train_episodes": train.episode_ids, "held_out_episodes": held_out.episode_ids})
    written = writer.write(WriteTask(train, held_out, sandbox, sim_name, env_dir / "search", previous))
    written.save(env_dir / f"{sim_name}.py")
    written.report.save(env_dir / "report.json")  # last: its presence means the stage finished
    return written


def read_split(env_dir: Path, session: Trace) -> tuple[Trace, Trace] | None:
    """(train, held_out) of `session` as `env_dir/split.json` names them; None if it is missing or names
    episodes the session does not hold."""
    path = env_dir / SPLIT
    if not path.is_file():
        return None
    ids = json.loads(path.read_text())
    index = {episode_id: i for i, episode_id in enumerate(session.episode_ids)}
    parts = [ids["train_episodes"], ids["held_out_episodes"]]
    if not all(episode_id in index for part in parts for episode_id in part):
        return None
    return tuple(session.select_episodes([index[i] for i in part]) for part in parts)


def read_written(env_dir: Path, sim_name: str) -> Written | None:
    """The write stage's pick as saved in `env_dir` (None if the stage did not finish there)."""
    source, report, selection = env_dir / f"{sim_name}.py", env_dir / "report.json", env_dir / "search" / "selection.json"
    if not (source.is_file() and report.is_file() and selection.is_file()):
        return None
    chosen = json.loads(selection.read_text())
    return Written(source.read_text(), SandboxReport.load(report), chosen["chosen"], read_weights_beside(source),
                   tuple(chosen.get("tried", ())))
