"""OPSD: on-policy self-distillation of what a session taught, mixed with PPO's policy updates.

A teacher that has the session (the same model with the session context, or a veteran checkpoint)
supervises a student that does not, per token / per step, on the student's own samples.
"""

from dreamer.opsd.context import ContextConfig, build_context
from dreamer.opsd.distill import AnchorConfig, Anchors, Distillation, OPSDConfig, collect_states
from dreamer.opsd.divergences import DivergenceConfig, token_divergence
from dreamer.opsd.schedules import ScheduleConfig
from dreamer.opsd.teachers import Teacher, TeacherConfig

__all__ = ["AnchorConfig", "Anchors", "ContextConfig", "DivergenceConfig", "Distillation", "OPSDConfig", "ScheduleConfig",
           "Teacher", "TeacherConfig", "build_context", "collect_states", "token_divergence"]
