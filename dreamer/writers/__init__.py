"""Writers: a session in, the source of a sim (see `dreamer.sim.contract`) that the sandbox accepts out."""

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from dreamer.config import build, choose, to_plain
from dreamer.writers.backends import BackendConfig, make_backend
from dreamer.writers.fallback import FallbackWriter
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


def hybrid_writer(values: dict) -> HybridWriter:
    for part in ("symbolic", "neural"):
        if isinstance(values.get(part), dict):
            values[part].pop("kind", None)  # the composed `writer/<part>` group's own kind
    return HybridWriter(build(HybridWriterConfig, values, "writer", ignore=("kind",)))


def auto_writer(values: dict) -> FallbackWriter:
    """`writer.order`'s writers, each from its section (hybrid from both): see `dreamer.writers.fallback`."""
    order = values.get("order")
    allowed = ("symbolic", "hybrid", "neural")
    if not (isinstance(order, list) and order and all(kind in allowed for kind in order)):
        raise ValueError(f"writer.order must be a non-empty list of {list(allowed)}, got {order!r}")
    allowed_keys = ["kind", "max_equation_nrmse", "neural", "order", "symbolic"]
    unknown = sorted(set(values) - set(allowed_keys))
    if unknown:
        raise ValueError(f"unknown config key(s) {[f'writer.{k}' for k in unknown]}; allowed keys: {allowed_keys}")
    makers = {"symbolic": lambda: symbolic_writer(dict(values["symbolic"])),
              "neural": lambda: neural_writer(dict(values["neural"])),
              "hybrid": lambda: hybrid_writer({"symbolic": dict(values["symbolic"]), "neural": dict(values["neural"]),
                                               "max_equation_nrmse": values.get("max_equation_nrmse")})}
    return FallbackWriter([makers[kind]() for kind in order])


def llm_writer(values: dict) -> LLMWriter:
    if isinstance(values.get("draft"), dict):
        values["draft"].pop("kind", None)  # the composed `writer/symbolic` group's own kind
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
