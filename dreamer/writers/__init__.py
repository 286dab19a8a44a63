"""Writers: a session in, the source of a sim (see `dreamer.sim.contract`) that the sandbox accepts out."""

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from dreamer.config import build, choose, to_plain
from dreamer.writers.backends import BackendConfig, make_backend
from dreamer.writers.fallback import AutoWriterConfig, FallbackWriter
from dreamer.writers.hybrid import HybridWriter, HybridWriterConfig
from dreamer.writers.llm import LLMWriter, LLMWriterConfig
from dreamer.writers.neural import NeuralWriter, NeuralWriterConfig
from dreamer.writers.protocol import Writer, Written, WriteTask, verdict_line
from dreamer.writers.stage import write_sim
from dreamer.writers.symbolic import SymbolicWriter, SymbolicWriterConfig


def symbolic_writer(values: dict) -> SymbolicWriter:
    return SymbolicWriter(build(SymbolicWriterConfig, values, "writer", ignore=("kind",)))


def neural_writer(values: dict) -> NeuralWriter:
    return NeuralWriter(build(NeuralWriterConfig, values, "writer", ignore=("kind",)))


def drop_group_kinds(values: dict, parts: tuple[str, ...]) -> dict:
    """`values` without the `kind` that each composed `writer/<part>` group brings along."""
    for part in parts:
        if isinstance(values.get(part), dict):
            values[part].pop("kind", None)
    return values


def hybrid_writer(values: dict) -> HybridWriter:
    return HybridWriter(build(HybridWriterConfig, drop_group_kinds(values, ("symbolic", "neural")), "writer",
                              ignore=("kind",)))


def auto_writer(values: dict) -> FallbackWriter:
    """`writer.order`'s writers from the shared sections (the hybrid from both): see `dreamer.writers.fallback`."""
    cfg = build(AutoWriterConfig, drop_group_kinds(values, ("symbolic", "neural")), "writer", ignore=("kind",))
    makers = {"symbolic": lambda: SymbolicWriter(cfg.symbolic), "neural": lambda: NeuralWriter(cfg.neural),
              "hybrid": lambda: HybridWriter(HybridWriterConfig(cfg.symbolic, cfg.neural, cfg.max_equation_nrmse))}
    return FallbackWriter([makers[kind]() for kind in cfg.order])


def llm_writer(values: dict) -> LLMWriter:
    drop_group_kinds(values, ("draft",))
    backend_keys = tuple(f.name for f in fields(BackendConfig))
    search_keys = tuple(f.name for f in fields(LLMWriterConfig))
    backend = make_backend(build(BackendConfig, values, "writer", ignore=("kind", *search_keys)))
    return LLMWriter(build(LLMWriterConfig, values, "writer", ignore=("kind", *backend_keys)), backend)


WRITERS = {"symbolic": symbolic_writer, "hybrid": hybrid_writer, "neural": neural_writer, "auto": auto_writer,
           "llm": llm_writer}  # writer.kind -> the writer from its section


def make_writer(section: Mapping[str, Any]) -> Writer:
    """The writer the Hydra `writer` section names (`kind`: a key of `WRITERS`)."""
    values = to_plain(section)
    return choose(WRITERS, values.get("kind"), "writer.kind")(values)


__all__ = ["FallbackWriter", "HybridWriter", "HybridWriterConfig", "LLMWriter", "LLMWriterConfig", "NeuralWriter",
           "NeuralWriterConfig", "SymbolicWriter", "SymbolicWriterConfig", "WriteTask", "Writer",
           "Written", "make_writer", "verdict_line", "write_sim"]
