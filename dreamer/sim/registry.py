"""Register a loaded sim so `gymnasium.make("dreamer/NAME")` and `gymnasium.make_vec(...)` build it."""

from __future__ import annotations

import gymnasium

from dreamer.sim.contract import FuncSim
from dreamer.sim.env import SimEnv, SimVectorEnv


def register_sim(sim: FuncSim, name: str | None = None) -> str:
    """Register `sim` under `dreamer/<name>` (default: the sim's name); returns the env id.

    `gymnasium.make(id, device=...)` gives a `SimEnv`; `gymnasium.make_vec(id, num_envs, device=...,
    compile=...)` gives a `SimVectorEnv`. The sim truncates episodes itself, so no TimeLimit is added.
    """
    env_id = f"dreamer/{name or sim.name}"
    gymnasium.register(
        id=env_id,
        entry_point=lambda device="cpu": SimEnv(sim, device=device),
        vector_entry_point=lambda num_envs, device="cpu", compile=False: SimVectorEnv(sim, num_envs, device, compile),
        max_episode_steps=None,
        disable_env_checker=True,
    )
    return env_id
