"""dreamer: write simulators from a recorded session, train in the dream, act in the real world.

The names below load on first use, so that `import dreamer.<stage>` (the sandbox worker above all) pays
only for that stage's imports."""

import importlib

_HOMES = {"load_policy": "dreamer.rl", "load_sim": "dreamer.sandbox", "load_trace": "dreamer.traces",
          "save_trace": "dreamer.traces"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'dreamer' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
