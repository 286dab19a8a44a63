"""How OPSD is mixed with the PPO policy loss over a consolidation: `w_ppo * PPO + λ(t) * OPSD`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Schedule = Literal["constant", "linear", "alternating"]
SCHEDULES = get_args(Schedule)


@dataclass(frozen=True)
class ScheduleConfig:
    kind: Schedule
    coef: float          # constant, alternating: λ
    start: float         # linear: λ at the first update ...
    end: float           # ... and at the last one
    opsd_updates: int    # alternating: updates of OPSD alone (w_ppo = 0, λ = coef) ...
    ppo_updates: int     # ... then updates of PPO alone (w_ppo = 1, λ = 0), and again

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule.kind must be one of {SCHEDULES}, got {self.kind!r}")
        for key in ("coef", "start", "end"):
            if getattr(self, key) < 0:
                raise ValueError(f"schedule.{key} must be >= 0, got {getattr(self, key)}")
        if self.kind == "alternating" and (self.opsd_updates < 1 or self.ppo_updates < 0):
            raise ValueError(f"schedule.opsd_updates must be >= 1 and schedule.ppo_updates >= 0, "
                             f"got {self.opsd_updates} and {self.ppo_updates}")

    def weights(self, update: int, num_updates: int) -> tuple[float, float]:
        """(w_ppo, λ) for update `update` (0-based) of `num_updates`."""
        if self.kind == "constant":
            return 1.0, self.coef
        if self.kind == "linear":
            progress = update / max(1, num_updates - 1)
            return 1.0, self.start + (self.end - self.start) * progress
        opsd_phase = update % (self.opsd_updates + self.ppo_updates) < self.opsd_updates
        return (0.0, self.coef) if opsd_phase else (1.0, 0.0)
