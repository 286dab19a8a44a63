"""A task family with a hidden parameter: reach a goal on a plane that the observation does not show.

The agent moves on [-1, 1]^2 in steps of `STEP` (actions: 0 stay, 1 +x, 2 -x, 3 +y, 4 -y); an
episode starts near the origin and ends with reward 1 when the agent is within `GOAL_RADIUS` of
the goal, or is truncated after `MAX_EPISODE_STEPS` steps with reward 0. A *variant* is one goal
(optionally with a *cue*: a number the observation shows, as a task descriptor would). The reward is
sparse: nothing tells an agent without the goal where to go, which a session reveals by reaching it
(the real env then reports `info["goal"]`).

Two forms of the same dynamics:
- `HiddenGoalEnv`: a `gymnasium.Env` in numpy, the "real world" a session is recorded in;
- `family_source(...)`: the sim contract (batched torch) of one variant, of several, or of goals drawn
  on a circle, optionally revealing each episode's goal in the observation (the context) — the dreams.
"""

from __future__ import annotations

import math

import gymnasium
import numpy as np
from gymnasium import spaces

STEP = 0.1
GOAL_RADIUS = 0.15
START_HALF_WIDTH = 0.1
MAX_EPISODE_STEPS = 30
MOVES = np.array([[0.0, 0.0], [STEP, 0.0], [-STEP, 0.0], [0.0, STEP], [0.0, -STEP]], dtype=np.float32)


def goal_at(angle_deg: float, radius: float) -> tuple[float, float]:
    """The goal at `angle_deg` degrees on the circle of `radius` around the origin."""
    angle = math.radians(angle_deg)
    return radius * math.cos(angle), radius * math.sin(angle)


class HiddenGoalEnv(gymnasium.Env):
    """One variant in numpy: observation (x, y) [+ cue]; `info["goal"]` on the step that reaches it.
    `gymnasium.make("dreamer/HiddenGoal-v0", goal=(x, y), cue=None)` after `import envs`."""

    metadata = {"render_modes": []}

    def __init__(self, goal: tuple[float, float] = (0.6, 0.0), cue: float | None = None):
        self.goal = np.asarray(goal, dtype=np.float32)
        self.cue = cue
        dims = 2 if cue is None else 3
        self.observation_space = spaces.Box(-1.0, 1.0, (dims,), np.float32)
        self.action_space = spaces.Discrete(len(MOVES))
        self._pos = np.zeros(2, np.float32)
        self._steps = 0

    def _obs(self) -> np.ndarray:
        return self._pos.copy() if self.cue is None else np.append(self._pos, np.float32(self.cue))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._pos = self.np_random.uniform(-START_HALF_WIDTH, START_HALF_WIDTH, 2).astype(np.float32)
        self._steps = 0
        return self._obs(), {}

    def step(self, action):
        self._pos = np.clip(self._pos + MOVES[int(action)], -1.0, 1.0).astype(np.float32)
        self._steps += 1
        reached = bool(np.linalg.norm(self._pos - self.goal) < GOAL_RADIUS)
        info = {"goal": self.goal.tolist()} if reached else {}
        return self._obs(), float(reached), reached, self._steps >= MAX_EPISODE_STEPS and not reached, info


_SOURCE = '''"""Hidden-goal navigation (envs.hidden_goal): state = (goal_x, goal_y, cue, x, y)."""
import math
import torch

GOALS = {goals}          # variants drawn uniformly per episode; None: a goal on the circle of RADIUS
CUES = {cues}            # one per goal, shown in the observation; None: no cue
RADIUS = {radius}
REVEAL_GOAL = {reveal}   # the observation starts with the goal (the episode's context)
SHAPING = {shaping}      # reward per unit of distance gained towards the goal, on top of 1 at the goal
OBSERVATION_LOW = [-1.0] * {obs_dims}
OBSERVATION_HIGH = [1.0] * {obs_dims}
ACTION_SPACE = {{"type": "Discrete", "n": 5}}
MAX_EPISODE_STEPS = {max_steps}


def initial(rng, n):
    device = rng.device
    if GOALS is None:
        angle = torch.rand(n, generator=rng, device=device) * (2 * math.pi)
        goal = torch.stack([RADIUS * torch.cos(angle), RADIUS * torch.sin(angle)], 1)
        cue = torch.zeros(n, 1, device=device)
    else:
        which = torch.randint(len(GOALS), (n,), generator=rng, device=device)
        goal = torch.tensor(GOALS, dtype=torch.float32, device=device)[which]
        cue = torch.tensor(CUES or [0.0] * len(GOALS), dtype=torch.float32, device=device)[which][:, None]
    start = (torch.rand(n, 2, generator=rng, device=device) * 2 - 1) * {start}
    return torch.cat([goal, cue, start], 1)


def transition(state, action, rng):
    moves = torch.tensor({moves}, dtype=torch.float32, device=state.device)
    position = torch.clamp(state[:, 3:] + moves[action], -1.0, 1.0)
    return torch.cat([state[:, :3], position], 1)


def observation(state, rng):
    parts = [state[:, 0:2]] if REVEAL_GOAL else []
    parts.append(state[:, 3:])
    if CUES is not None:
        parts.append(state[:, 2:3])
    return torch.cat(parts, 1)


def distance(state):
    return torch.linalg.vector_norm(state[:, 3:] - state[:, 0:2], dim=1)


def reward(state, action, next_state, rng):
    return terminal(next_state, rng).float() + SHAPING * (distance(state) - distance(next_state))


def terminal(state, rng):
    return distance(state) < {goal_radius}
'''


def family_source(goals: list[tuple[float, float]] | None, cues: list[float] | None = None,
                  reveal_goal: bool = False, radius: float = 0.6, shaping: float = 0.0) -> str:
    """Sim source of the family: `goals` (a variant each, drawn per episode) or None (a goal drawn on
    the circle of `radius`); `cues` (one per goal) shown in the observation; with `reveal_goal`, each
    observation starts with its episode's goal (obs = [goal (2)] [x, y] [cue (1)]). `shaping` > 0 adds a
    dense reward, `shaping` per unit of distance gained towards the goal (0: the sparse task)."""
    if cues is not None and (goals is None or len(cues) != len(goals)):
        raise ValueError(f"cues need one value per goal, got {cues} for goals {goals}")
    goals = None if goals is None else [[float(x), float(y)] for x, y in goals]
    obs_dims = 2 * reveal_goal + (cues is not None) + 2
    return _SOURCE.format(goals=goals, cues=cues, radius=radius, reveal=reveal_goal, shaping=shaping, obs_dims=obs_dims,
                          max_steps=MAX_EPISODE_STEPS, start=START_HALF_WIDTH, moves=MOVES.tolist(),
                          goal_radius=GOAL_RADIUS)
