"""Reference "real world" environments that sessions are recorded in, with their dreams as sim sources."""

from dreamer.envs.hidden_goal import HiddenGoalEnv, family_source, goal_at

__all__ = ["HiddenGoalEnv", "family_source", "goal_at"]
