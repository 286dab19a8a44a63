"""Writers: a Trace in, the source of a sim (see `dreamer.sim.contract`) out."""

from dreamer.writers.symbolic import SymbolicWriter, SymbolicWriterConfig

__all__ = ["SymbolicWriter", "SymbolicWriterConfig"]
