"""dreamer: write simulators from a recorded session, train in the dream, act in the real world."""

from dreamer.rl import load_policy
from dreamer.sandbox import load_sim
from dreamer.traces import load_trace, save_trace

__all__ = ["load_policy", "load_sim", "load_trace", "save_trace"]
