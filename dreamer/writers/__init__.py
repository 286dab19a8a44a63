"""Writers: a session in, the source of a sim (see `dreamer.sim.contract`) that the sandbox accepts out."""

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from dreamer.config import build, to_plain
from dreamer.writers.backends import BackendConfig, make_backend
from dreamer.writers.llm import LLMWriter, LLMWriterConfig
from dreamer.writers.protocol import Writer, Written, WriteTask, verdict_line
from dreamer.writers.stage import write_sim
from dreamer.writers.symbolic import SymbolicWriter, SymbolicWriterConfig


def make_writer(section: Mapping[str, Any]) -> Writer:
    """The writer the Hydra `writer` section names (`name: symbolic | llm`)."""
    values = to_plain(section)
    kind = values.get("name")
    if kind == "symbolic":
        return SymbolicWriter(build(SymbolicWriterConfig, values, "writer", ignore=("name",)))
    if kind == "llm":
        if isinstance(values.get("draft"), dict):
            values["draft"].pop("name", None)  # the composed `writer/symbolic` group's own name
        backend_keys = tuple(f.name for f in fields(BackendConfig))
        search_keys = tuple(f.name for f in fields(LLMWriterConfig))
        backend = make_backend(build(BackendConfig, values, "writer", ignore=("name", *search_keys)))
        return LLMWriter(build(LLMWriterConfig, values, "writer", ignore=("name", *backend_keys)), backend)
    raise ValueError(f"writer.name must be 'symbolic' or 'llm', got {kind!r}")


__all__ = ["LLMWriter", "LLMWriterConfig", "SymbolicWriter", "SymbolicWriterConfig", "WriteTask", "Writer",
           "Written", "make_writer", "verdict_line", "write_sim"]
