"""Writers: a session in, the source of a sim (see `dreamer.sim.contract`) that the sandbox accepts out."""

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from dreamer.config import build, choose, to_plain
from dreamer.writers.backends import BackendConfig, make_backend
from dreamer.writers.llm import LLMWriter, LLMWriterConfig
from dreamer.writers.protocol import Writer, Written, WriteTask, verdict_line
from dreamer.writers.stage import write_sim
from dreamer.writers.symbolic import SymbolicWriter, SymbolicWriterConfig


def symbolic_writer(values: dict) -> SymbolicWriter:
    return SymbolicWriter(build(SymbolicWriterConfig, values, "writer", ignore=("kind",)))


def llm_writer(values: dict) -> LLMWriter:
    if isinstance(values.get("draft"), dict):
        values["draft"].pop("kind", None)  # the composed `writer/symbolic` group's own kind
    backend_keys = tuple(f.name for f in fields(BackendConfig))
    search_keys = tuple(f.name for f in fields(LLMWriterConfig))
    backend = make_backend(build(BackendConfig, values, "writer", ignore=("kind", *search_keys)))
    return LLMWriter(build(LLMWriterConfig, values, "writer", ignore=("kind", *backend_keys)), backend)


WRITERS = {"symbolic": symbolic_writer, "llm": llm_writer}  # writer.kind -> the writer from its section


def make_writer(section: Mapping[str, Any]) -> Writer:
    """The writer the Hydra `writer` section names (`kind`: a key of `WRITERS`)."""
    values = to_plain(section)
    return choose(WRITERS, values.get("kind"), "writer.kind")(values)


__all__ = ["LLMWriter", "LLMWriterConfig", "SymbolicWriter", "SymbolicWriterConfig", "WriteTask", "Writer",
           "Written", "make_writer", "verdict_line", "write_sim"]
