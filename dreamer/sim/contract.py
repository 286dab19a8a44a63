"""The simulator contract: a batched, functional torch env.

A sim is a Python source file that defines, at module level, only plain data and functions
named as in `gymnasium.experimental.functional.FuncEnv`. Every function works on a batch of
`n` states at once, on the device of the tensors it is given:

    OBSERVATION_LOW:   list[float]             (O,) lower bounds of the observation space
    OBSERVATION_HIGH:  list[float]             (O,) upper bounds of the observation space
    ACTION_SPACE:      dict                    {"type": "Discrete", "n": int} or
                                               {"type": "Box", "low": [...], "high": [...]}
    MAX_EPISODE_STEPS: int                     truncation horizon (steps)

    initial(rng, n)                        -> state      (n, S) float32
    transition(state, action, rng)         -> state      (n, S) float32
    observation(state, rng)                -> obs        (n, O) float32
    reward(state, action, next_state, rng) -> reward     (n,)   float32
    terminal(state, rng)                   -> terminated (n,)   bool

and, optionally, for a learned model that knows where it is unsure:

    uncertainty(state, action, rng)        -> u          (n,)   float32 >= 0, the model's disagreement
                                                                about the transition (0: sure)

A sim may come with weights: a safetensors file beside its source (`dreamer.sim.weights`), whose tensors
the source reads, read-only, as the module-level mapping `WEIGHTS` (name -> tensor, on the device they were
loaded to; the source moves them to its inputs' device).

`rng` is a `torch.Generator` on the sims's device (`rng.device`); `action` is (n,) int64 for a
Discrete space and (n, A) float32, already clipped to the bounds, for a Box space. When the
trace's observation is the full state (the default), the state *is* the observation vector and
`observation` returns it unchanged.

The source is untrusted: `FuncSim.from_source` executes it, so call it only on source that the
sandbox's static check passed (see `dreamer.sandbox.load_sim`). It runs as a real module, registered in
`sys.modules` under a name derived from its text, so that `torch.compile` can trace its functions.
"""

from __future__ import annotations

import builtins
import hashlib
import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from gymnasium import spaces

FUNCTIONS = ("initial", "transition", "observation", "reward", "terminal")
OPTIONAL_FUNCTIONS = ("uncertainty",)
CONSTANTS = ("OBSERVATION_LOW", "OBSERVATION_HIGH", "ACTION_SPACE", "MAX_EPISODE_STEPS")

# The builtins a sim may call; everything else (open, eval, __import__, ...) is absent at run time.
SAFE_BUILTINS = (
    "abs", "all", "any", "bool", "dict", "enumerate", "float", "int", "len", "list", "max",
    "min", "pow", "range", "round", "sum", "tuple", "zip", "True", "False", "None",
    "ValueError", "isinstance",
)
IMPORTABLE_MODULES = ("math", "torch")


class SimContractError(ValueError):
    """The source does not define the contract (a missing function, a bad space, ...)."""


def space_from_dict(spec: dict) -> spaces.Space:
    """`{"type": "Discrete", "n": 2}` or `{"type": "Box", "low": [...], "high": [...]}` -> space."""
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "Discrete":
        return spaces.Discrete(int(spec["n"]))
    if kind == "Box":
        low = np.asarray(spec["low"], dtype=np.float32)
        high = np.asarray(spec["high"], dtype=np.float32)
        if low.shape != high.shape or low.ndim != 1:
            raise SimContractError(f"Box space needs 1-d low and high of one shape, got {spec!r}")
        return spaces.Box(low, high, dtype=np.float32)
    raise SimContractError(f"a space must be a Discrete or Box dict, got {spec!r}")


def space_to_dict(space: spaces.Space) -> dict:
    """Inverse of `space_from_dict` (infinite bounds become +-inf floats)."""
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n)}
    if isinstance(space, spaces.Box):
        return {"type": "Box", "low": space.low.tolist(), "high": space.high.tolist()}
    raise SimContractError(f"only Discrete and Box spaces are supported, got {space}")


def _restricted_import(name, globals=None, locals=None, fromlist=(), level=0):
    if name.split(".")[0] not in IMPORTABLE_MODULES or level != 0:
        raise ImportError(f"a sim may import only {IMPORTABLE_MODULES}, not {name!r}")
    return builtins.__import__(name, globals, locals, fromlist, level)


@dataclass(frozen=True)
class FuncSim:
    """A loaded sim: the five batched functions plus its spaces and horizon."""

    name: str
    source: str
    observation_space: spaces.Box
    action_space: spaces.Space
    max_episode_steps: int
    initial: Callable[[torch.Generator, int], torch.Tensor]
    transition: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
    observation: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    reward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
    terminal: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    uncertainty: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor] | None = None

    @classmethod
    def from_source(cls, source: str, name: str = "sim", weights: Mapping[str, torch.Tensor] | None = None) -> "FuncSim":
        """Execute vetted sim source with only safe builtins and imports and bind its contract; `weights`
        (name -> tensor) become its read-only `WEIGHTS`."""
        safe = {key: getattr(builtins, key) for key in SAFE_BUILTINS}
        safe["__import__"] = _restricted_import
        digest = hashlib.sha256(f"{name}\0{source}".encode())
        for key, tensor in sorted((weights or {}).items()):  # a sim's module name names its weights too
            digest.update(f"\0{key}\0{tuple(tensor.shape)}\0{tensor.dtype}\0{tensor.device}".encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        module = types.ModuleType(f"dreamer_sim_{name}_{digest.hexdigest()[:16]}")  # one name per sim
        module.__builtins__ = safe
        if weights is not None:
            module.WEIGHTS = types.MappingProxyType({key: tensor.detach().clone() for key, tensor in weights.items()})
        exec(compile(source, f"<sim {name}>", "exec"), module.__dict__)
        namespace = module.__dict__
        missing = [key for key in FUNCTIONS + CONSTANTS if key not in namespace]
        if missing:
            raise SimContractError(f"sim {name!r} does not define {missing}; the contract needs {FUNCTIONS + CONSTANTS}")
        not_callable = [key for key in FUNCTIONS if not callable(namespace[key])]
        if not_callable:
            raise SimContractError(f"sim {name!r}: {not_callable} must be functions")
        optional = {key: namespace[key] for key in OPTIONAL_FUNCTIONS if key in namespace}
        if not all(callable(function) for function in optional.values()):
            raise SimContractError(f"sim {name!r}: {sorted(optional)} must be functions")
        low = np.asarray(namespace["OBSERVATION_LOW"], dtype=np.float32)
        high = np.asarray(namespace["OBSERVATION_HIGH"], dtype=np.float32)
        if low.ndim != 1 or low.shape != high.shape:
            raise SimContractError(f"sim {name!r}: OBSERVATION_LOW/HIGH must be flat lists of one length")
        horizon = namespace["MAX_EPISODE_STEPS"]
        if not isinstance(horizon, int) or horizon < 1:
            raise SimContractError(f"sim {name!r}: MAX_EPISODE_STEPS must be a positive int, got {horizon!r}")
        sys.modules[module.__name__] = module  # dynamo resolves a function's globals through its module
        return cls(
            name=name,
            source=source,
            observation_space=spaces.Box(low, high, dtype=np.float32),
            action_space=space_from_dict(namespace["ACTION_SPACE"]),
            max_episode_steps=horizon,
            **{key: namespace[key] for key in FUNCTIONS},
            **optional,
        )

    def action_tensor(self, action, device: torch.device) -> torch.Tensor:
        """Any action batch (numpy, list, tensor) -> the contract's dtype, Box actions clipped."""
        if isinstance(self.action_space, spaces.Discrete):
            return torch.as_tensor(action, device=device).long().reshape(-1)
        low = torch.as_tensor(self.action_space.low, device=device)
        high = torch.as_tensor(self.action_space.high, device=device)
        action = torch.as_tensor(action, dtype=torch.float32, device=device).reshape(-1, low.numel())
        return torch.clamp(action, low, high)
