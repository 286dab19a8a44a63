"""The write stage: a session in, a sim written and judged on held-out episodes, its artifacts in `env_dir`.

    env_dir/<sim name>.py     the writer's pick
    env_dir/report.json       its sandbox report on the held-out episodes
    env_dir/split.json        {"train_episodes": [id, ...], "held_out_episodes": [id, ...]}
    env_dir/search/           the writer's trail: every candidate and `selection.json`
"""

from __future__ import annotations

from pathlib import Path

from dreamer.artifacts import write_json, write_text
from dreamer.sandbox import SandboxConfig
from dreamer.traces import Trace
from dreamer.writers.protocol import Writer, Written, WriteTask

SPLIT = "split.json"


def write_sim(writer: Writer, train: Trace, held_out: Trace, sandbox: SandboxConfig, sim_name: str, env_dir: Path,
              previous: str | None = None) -> Written:
    """Have `writer` write a sim of `train` that the sandbox judges on `held_out` (episodes of one session
    split by `Trace.split`), and save the artifacts above."""
    write_json(env_dir / SPLIT, {"train_episodes": train.episode_ids, "held_out_episodes": held_out.episode_ids})
    written = writer.write(WriteTask(train, held_out, sandbox, sim_name, env_dir / "search", previous))
    write_text(env_dir / f"{sim_name}.py", written.source)
    written.report.save(env_dir / "report.json")
    return written
