"""The sim contract (a batched functional torch env) and its Gymnasium front ends."""

from dreamer.sim.contract import FuncSim, SimContractError, space_from_dict, space_to_dict
from dreamer.sim.env import SimEnv, SimVectorEnv
from dreamer.sim.registry import register_sim

__all__ = ["FuncSim", "SimContractError", "SimEnv", "SimVectorEnv", "register_sim", "space_from_dict", "space_to_dict"]
