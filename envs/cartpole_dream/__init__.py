"""cartpole_dream: a sim dreamer wrote from a session, exported from runs/cartpole_default.

The sandbox accepted it on 1183 held-out transitions of the real session:
- one-step NRMSE 0.00206 (per obs dim: 4.52e-06, 3.19e-05, 2.86e-07, 0.00819);
- termination accuracy 1; state, reward and termination all right: 1.
report.json is the sandbox's report, config.yaml the run's config (its seed included).

    import gymnasium, envs
    env = gymnasium.make("dreamer/cartpole_dream-v0")  # a SimEnv, numpy I/O; device="cuda" steps it on a GPU
    vector_env = gymnasium.make_vec("dreamer/cartpole_dream-v0", num_envs=1024)  # a SimVectorEnv, torch tensors
"""

from pathlib import Path

import gymnasium

ENV_ID = "dreamer/cartpole_dream-v0"
SIM = Path(__file__).with_name("sim.py")

gymnasium.register(id=ENV_ID, entry_point="dreamer.export:sim_env", vector_entry_point="dreamer.export:sim_vector_env",
                   kwargs={"path": str(SIM)})
