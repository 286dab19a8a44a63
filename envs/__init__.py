"""Environments as ordinary Gymnasium modules: the ones dreamer ships, and the sims it wrote and exported.

`import envs` registers every one of them, so `gymnasium.make(ENV_ID)` builds it:

- `dreamer/HiddenGoal-v0` (`envs.hidden_goal`): the hidden-goal family the OPSD experiments run on,
  the "real world" their sessions are recorded in (a goal on the plane the observation does not show);
- `dreamer/<name>-v0` (`envs/<name>/`): each sim exported from a run by
  `python -m dreamer.export RUN_DIR envs/<name>`, its source as the sandbox accepted it, with the report.
"""

import importlib
import pkgutil

import gymnasium

gymnasium.register(id="dreamer/HiddenGoal-v0", entry_point="envs.hidden_goal:HiddenGoalEnv")

EXPORTED = [module.name for module in pkgutil.iter_modules(__path__) if module.ispkg]
for name in EXPORTED:  # each registers its own id on import
    importlib.import_module(f"{__name__}.{name}")
