"""Dream sim of CartPole-v1, written by the symbolic writer from 3,817 transitions (47 episodes).

Coordinates x0, x1, x2, x3.
Dynamics: each coordinate's one-step change, by sparse regression (STLSQ) over candidate terms.
Reward: the same regression on the state before the step, the action and (`done`) whether the step ended the episode.
Termination: a decision tree on the next state's coordinates and their magnitudes.
"""

import torch

OBSERVATION_LOW = [-4.800000190734863, -3.0000000054977558e+38, -0.41887903213500977, -3.0000000054977558e+38]
OBSERVATION_HIGH = [4.800000190734863, 3.0000000054977558e+38, 0.41887903213500977, 3.0000000054977558e+38]
ACTION_SPACE = {'type': 'Discrete', 'n': 2}
MAX_EPISODE_STEPS = 500

# Episode starts are drawn uniformly from the box that the session's starts span (coordinates).
INITIAL_LOW = [-0.0485293679, -0.0484008268, -0.0490045436, -0.0483472347]
INITIAL_HIGH = [0.0443801433, 0.049509652, 0.0497209951, 0.0480835326]


def to_observation(x0, x1, x2, x3):
    """Coordinates (n,) each -> (n, O) observations, clipped to the observation space."""
    return torch.stack([x0.clamp(OBSERVATION_LOW[0], OBSERVATION_HIGH[0]), x1, x2.clamp(OBSERVATION_LOW[2], OBSERVATION_HIGH[2]), x3], dim=-1)


def initial(rng, n):
    u = torch.rand(n, 4, generator=rng, device=rng.device)
    return to_observation(
        INITIAL_LOW[0] + (INITIAL_HIGH[0] - INITIAL_LOW[0]) * u[:, 0],
        INITIAL_LOW[1] + (INITIAL_HIGH[1] - INITIAL_LOW[1]) * u[:, 1],
        INITIAL_LOW[2] + (INITIAL_HIGH[2] - INITIAL_LOW[2]) * u[:, 2],
        INITIAL_LOW[3] + (INITIAL_HIGH[3] - INITIAL_LOW[3]) * u[:, 3],
    )


def transition(state, action, rng):
    x0 = state[:, 0]
    x1 = state[:, 1]
    x2 = state[:, 2]
    x3 = state[:, 3]
    a1 = (action == 1).float()
    x0 = x0 + 0.0200000004 * x1  # 1 term, polynomial, validation NRMSE 4.2e-07
    x1 = x1 - 0.19512391 - 0.0141888153 * x2 + 0.390243859 * a1 + 0.0140651345 * x2*x2 - 0.028236098 * x2*x2*a1 + 0.00101846361 * x2*x3*x3  # 6 terms, polynomial, validation NRMSE 7.5e-05
    x2 = x2 + 0.0200000001 * x3  # 1 term, polynomial, validation NRMSE 5.4e-07
    x3 = x3 + 0.292682374 + 0.315492562 * x2 - 0.585364186 * a1 - 0.166793234 * x2*x2 - 0.0742189281 * x2*x2*x2 + 0.33358156 * x2*x2*a1 - 0.00143578949 * x2*x3*x3  # 7 terms, polynomial, validation NRMSE 1.8e-05
    return to_observation(x0, x1, x2, x3)


def observation(state, rng):
    return state


def reward(state, action, next_state, rng):
    value = 1
    return value * torch.ones(state.shape[0], device=state.device)


def terminal(state, rng):
    x0 = state[:, 0]
    x2 = state[:, 2]
    abs_x0 = torch.abs(x0)
    abs_x2 = torch.abs(x2)
    return ((abs_x2 <= 0.209647745) & (abs_x0 > 2.39981711)) | (abs_x2 > 0.209647745)
