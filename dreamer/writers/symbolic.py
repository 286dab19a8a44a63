"""The offline writer: equation discovery from a trace to readable sim source, no language model.

What it fits, on the trace's transitions, assuming nothing about which environment they came from:

- coordinates: each observation dimension, except that adjacent dimensions lying on the unit circle
  (`cos θ, sin θ`, Gymnasium's convention) are read as one angle θ;
- dynamics: each coordinate's one-step change as a sparse sum of candidate terms (monomials up to
  `degree` of the coordinates, their sines and cosines, and the action), fitted by sequentially
  thresholded least squares (pysindy's STLSQ): per coordinate, the sparsest equation whose error on
  held-back episodes is within `selection_tolerance` of the best (the polynomial library first, the
  trigonometric one only when needed), its terms then refitted on every row; rows where the env
  clipped an observation to its bound are left out, and the sim clips to the same bounds; where a
  coordinate met a bound and another always took one value then (a velocity stopped at a wall), so does the sim;
- reward: the same regression on the state before the step, the action and (where the trace has terminal
  steps) whether the step ended the episode;
- termination: a shallow decision tree on the next state's coordinates, or a sparse linear threshold on the
  monomials of the next observation where no box holds the terminal states (`dreamer.writers.termination`);
- initial states: uniform over the box the episode starts span, per coordinate;
- horizon: the trace's `max_episode_steps`, else the longest truncated episode, else the default.

Its trail in the task's `audit_dir` has the layout of the language-model writer's, with one candidate:
`symbolic/{sim.py, report.json}` and `selection.json`.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from gymnasium import spaces

from dreamer.artifacts import write_json
from dreamer.progress import progress
from dreamer.sim.contract import space_to_dict
from dreamer.traces import Trace
from dreamer.writers.coordinates import Coordinates
from dreamer.writers.protocol import Written, WriteTask, candidate_summary, save_candidate
from dreamer.writers.termination import TerminationConfig, fit_termination


@dataclass(frozen=True)
class SymbolicWriterConfig:
    degree: int                       # highest monomial degree of the dynamics library
    reward_degree: int                # highest monomial degree of the reward library
    thresholds: list[float]           # STLSQ thresholds tried (on unit-norm columns)
    ridge_alpha: float                # STLSQ ridge penalty
    selection_tolerance: float        # keep the sparsest model with error <= tolerance * best ...
    target_nrmse: float               # ... or with error <= this validation NRMSE
    max_terms: int                    # largest equation considered (the sparsest, if every candidate is larger)
    validation_fraction: float        # share of the trace's episodes held back to pick a threshold
    termination: TerminationConfig    # when an episode ends (`dreamer.writers.termination`)
    wall_min_rows: int                # steps at a bound that make a wall rule (`wall_rules`)
    angle_tolerance: float            # max |cos² + sin² - 1| for a pair to count as an angle
    default_max_episode_steps: int    # horizon when the trace does not tell
    seed: int

    def __post_init__(self):
        for key, low in (("degree", 0), ("reward_degree", 0), ("max_terms", 1), ("wall_min_rows", 1),
                         ("default_max_episode_steps", 1)):
            if getattr(self, key) < low:
                raise ValueError(f"{key} must be an int >= {low}, got {getattr(self, key)}")
        if not self.thresholds or min(self.thresholds) < 0:
            raise ValueError(f"thresholds must be a non-empty list of numbers >= 0, got {self.thresholds}")
        for key in ("ridge_alpha", "target_nrmse", "angle_tolerance"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not self.selection_tolerance >= 1:
            raise ValueError(f"selection_tolerance must be >= 1 (a multiple of the best error), "
                             f"got {self.selection_tolerance}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")


@dataclass(frozen=True)
class Feature:
    """A base feature: its name in the emitted code, how to compute it there, and its values."""

    name: str
    code: str
    values: np.ndarray   # (N,) float64
    indicator: bool = False   # a 0/1 action indicator: its powers equal itself


@dataclass(frozen=True)
class Library:
    """Candidate terms: base features and the monomials built from them, with their values."""

    name: str
    features: list[Feature]
    term_names: list[str]
    X: np.ndarray   # (N, F) term values

    @classmethod
    def build(cls, name: str, features: list[Feature], degree: int) -> "Library":
        terms = monomials(features, degree)
        return cls(name, features, [term_name(features, t) for t in terms], design_matrix(features, terms))


@dataclass(frozen=True)
class SparseFit:
    """One target's equation: `target ≈ X @ coef` over `library`'s terms."""

    library: Library
    coef: np.ndarray          # (F,)
    threshold: float
    validation_nrmse: float

    @property
    def num_terms(self) -> int:
        return int(np.count_nonzero(self.coef))

    def used_names(self) -> set[str]:
        return {part for name, c in zip(self.library.term_names, self.coef) if c for part in name.split("*")}

    def used_coordinates(self, names: list[str]) -> set[str]:
        """The coordinates among `names` that the equation reads, directly or through a sine or cosine."""
        used = self.used_names()
        codes = [feature.code for feature in self.library.features if feature.name in used]
        return {name for name in names if any(re.search(rf"\b{name}\b", code) for code in codes)}


@dataclass(frozen=True)
class Equations:
    """What the symbolic writer fitted to one trace: its coordinates, one equation per coordinate's change, the
    wall rules, the reward equation and the termination expression."""

    coords: Coordinates
    dynamics: list[SparseFit]
    walls: list[Wall]
    reward: SparseFit
    terminal: str

    def predicted_next_obs(self, trace: Trace) -> np.ndarray:
        """(N, O) the equations' next observation for each transition of the trace they were fitted to (wall rules
        left out)."""
        change = np.stack([fit.library.X @ fit.coef for fit in self.dynamics], axis=1)
        return self.coords.to_obs(self.coords.from_obs(trace.obs) + change, trace.observation_space)

    def predicted_reward(self) -> np.ndarray:
        """(N,) the reward equation on each transition of the trace it was fitted to."""
        return self.reward.library.X @ self.reward.coef


def base_features(coords: Coordinates, q: np.ndarray, action: np.ndarray, action_space: spaces.Space, trig: bool) -> list[Feature]:
    """Coordinates, (if `trig`) their sines and cosines, and action features."""
    feats = [Feature(name, name, q[:, d]) for d, (name, _) in enumerate(coords.layout)]
    if trig:
        for d, (name, _) in enumerate(coords.layout):
            feats.append(Feature(f"sin_{name}", f"torch.sin({name})", np.sin(q[:, d])))
            feats.append(Feature(f"cos_{name}", f"torch.cos({name})", np.cos(q[:, d])))
    return feats + action_features(action, action_space)


def action_features(action: np.ndarray, action_space: spaces.Space) -> list[Feature]:
    if isinstance(action_space, spaces.Discrete):
        return [
            Feature(f"a{k}", f"(action == {k}).float()", (action == k).astype(np.float64), indicator=True)
            for k in range(1, int(action_space.n))
        ]
    clipped = np.clip(action, action_space.low, action_space.high).reshape(len(action), -1)
    return [Feature(f"u{j}", f"action[:, {j}]", clipped[:, j].astype(np.float64)) for j in range(clipped.shape[1])]


def monomials(features: list[Feature], degree: int) -> list[tuple[int, ...]]:
    """Index tuples of every monomial up to `degree` (the empty tuple is the constant term).

    Redundant monomials are left out so the regression is well posed: an action indicator
    appears at most once (its powers equal itself), and a cosine at most once (cos² = 1 - sin²).
    """
    once = {i for i, f in enumerate(features) if f.indicator or f.name.startswith("cos_")}
    terms = [()]
    for k in range(1, degree + 1):
        for combo in itertools.combinations_with_replacement(range(len(features)), k):
            if sum(features[i].indicator for i in combo) <= 1 and all(combo.count(i) <= 1 for i in once & set(combo)):
                terms.append(combo)
    return terms


def design_matrix(features: list[Feature], terms: list[tuple[int, ...]]) -> np.ndarray:
    """(N, F) values of each monomial."""
    n = len(features[0].values)
    columns = [np.prod([features[i].values for i in term], axis=0) if term else np.ones(n) for term in terms]
    return np.stack(columns, axis=1)


def term_name(features: list[Feature], term: tuple[int, ...]) -> str:
    return "*".join(features[i].name for i in term) if term else "1"


def at_bounds(next_obs: np.ndarray, space: spaces.Box) -> tuple[np.ndarray, np.ndarray]:
    """(N, O) masks of the next observations that sit on a finite low / high bound of the observation space."""
    at_low = np.isfinite(space.low) & np.isclose(next_obs, space.low, rtol=0.0, atol=1e-6)
    at_high = np.isfinite(space.high) & np.isclose(next_obs, space.high, rtol=0.0, atol=1e-6)
    return at_low, at_high


def unsaturated(next_obs: np.ndarray, space: spaces.Box) -> np.ndarray:
    """(N,) False where some next observation sits on a finite bound of the observation space.

    Such values were clipped by the env, and the clipping feeds into the other coordinates too;
    the emitted sim clips to the same bounds, so the regression fits the law on the other rows.
    """
    at_low, at_high = at_bounds(next_obs, space)
    return ~(at_low | at_high).any(axis=1)


@dataclass(frozen=True)
class Wall:
    """Where the session's next state met a finite bound of a plain coordinate, another plain coordinate took one
    value in every such step (a velocity stopped at a wall): the sim sets that value there too."""

    bound: int                   # obs index of the coordinate that met the bound
    side: Literal["LOW", "HIGH"]
    other: int                   # obs index of the coordinate that took one value there
    value: float
    rows: int                    # steps of the session that met the bound

    def line(self, at: Callable[[int], str]) -> str:
        """The rule as a line of `transition`, where `at(i)` is the code of obs coordinate i (read and assigned)."""
        test = "<=" if self.side == "LOW" else ">="
        value = format_float(self.value)
        return (f"    {at(self.other)} = torch.where({at(self.bound)} {test} OBSERVATION_{self.side}[{self.bound}], "
                f"torch.full_like({at(self.other)}, {value}), {at(self.other)})"
                f"  # x{self.other} was {value} in all {self.rows} steps that met that bound")


def wall_rules(coords: Coordinates, next_obs: np.ndarray, space: spaces.Box, min_rows: int) -> list[Wall]:
    """The walls of the session: a bound met in at least `min_rows` steps, and another plain coordinate that took
    one value in all of them. The regression left those steps out (`unsaturated`)."""
    plain = [idx[0] for _, idx in coords.layout if len(idx) == 1]
    at_low, at_high = at_bounds(next_obs, space)
    walls = []
    for i in plain:
        for side, at in (("LOW", at_low[:, i]), ("HIGH", at_high[:, i])):
            if at.sum() < min_rows:
                continue
            for k in plain:
                values = next_obs[at, k]
                if k != i and np.ptp(values) <= 1e-9:
                    walls.append(Wall(i, side, k, float(values[0]), int(at.sum())))
    return walls


def fit_sparse(
    libraries: list[Callable[[], Library]],
    y: np.ndarray,
    train: np.ndarray,
    config: SymbolicWriterConfig,
    usable: np.ndarray | None = None,
) -> SparseFit:
    """STLSQ of `y` (N,) at each threshold, fitted on `train` rows and scored on the others.

    Libraries are tried from simplest to richest; a richer one only when no equation so far
    reaches `target_nrmse`. Only `usable` rows (default: all) enter the fit and the score (in sample when
    no usable row is on one side of the split). Among the equations of at most `max_terms` terms (or the
    sparsest, cut to its `max_terms` largest terms, if none is that small), picks the sparsest whose validation
    NRMSE is within `selection_tolerance` of their best (or under `target_nrmse`), then refits its terms by least
    squares on every usable row.
    """
    usable = np.ones(len(y), dtype=bool) if usable is None else usable
    train, val = train & usable, ~train & usable
    if not train.any() or not val.any():  # every usable row on one side: score in sample rather than not at all
        train = val = usable
    scale = max(float(y[train].std()), 1e-12)
    candidates: list[SparseFit] = []
    for make_library in libraries:
        library = make_library()
        for threshold in config.thresholds:
            coef = stlsq(library.X[train], y[train], threshold, config.ridge_alpha)
            nrmse = float(np.sqrt(np.mean((library.X[val] @ coef - y[val]) ** 2)) / scale)
            candidates.append(SparseFit(library, coef, threshold, nrmse))
        if min((c.validation_nrmse for c in candidates if c.num_terms <= config.max_terms), default=math.inf) <= config.target_nrmse:
            break
    small = [c for c in candidates if c.num_terms <= config.max_terms]
    candidates = small or [min(candidates, key=lambda c: (c.num_terms, c.validation_nrmse))]
    best = min(c.validation_nrmse for c in candidates)
    good_enough = max(config.selection_tolerance * best, config.target_nrmse)
    chosen = min((c for c in candidates if c.validation_nrmse <= good_enough), key=lambda c: (c.num_terms, c.validation_nrmse))
    support = chosen.coef != 0
    if support.sum() > config.max_terms:  # keep the terms that move the target most
        weight = np.abs(chosen.coef) * chosen.library.X[usable].std(0)
        support = np.zeros_like(support)
        support[np.argsort(-weight, kind="stable")[:config.max_terms]] = True
    coef = np.zeros_like(chosen.coef)
    if support.any():
        coef[support] = np.linalg.lstsq(chosen.library.X[usable][:, support], y[usable], rcond=None)[0]
    return SparseFit(chosen.library, coef, chosen.threshold, chosen.validation_nrmse)


def stlsq(X: np.ndarray, y: np.ndarray, threshold: float, alpha: float) -> np.ndarray:
    """(F,) coefficients by pysindy's STLSQ on unit-norm columns; all-zero columns (e.g. an action the
    session never took) get 0."""
    import pysindy  # here: it imports scikit-learn, a second that a run stopping on bad input need not wait

    coef = np.zeros(X.shape[1])
    nonzero = np.abs(X).max(0) > 0
    optimizer = pysindy.STLSQ(threshold=threshold, alpha=alpha, normalize_columns=True, max_iter=20)
    with warnings.catch_warnings():  # a threshold that removes every term is a fine candidate
        warnings.simplefilter("ignore", UserWarning)
        optimizer.fit(X[:, nonzero], y)
    coef[nonzero] = optimizer.coef_.reshape(-1)
    return coef


def training_rows(trace: Trace, fraction: float, seed: int) -> np.ndarray:
    """(N,) bool mask: True for transitions of the episodes kept for fitting (`Trace.split_episodes`); in a
    one-episode trace, all but its last `fraction` of transitions (at least one is held back)."""
    if trace.num_episodes < 2:
        keep = np.ones(len(trace), bool)
        keep[len(trace) - max(1, round(fraction * len(trace))):] = False
        return keep
    train, _ = trace.split_episodes(fraction, seed)
    return np.isin(trace.episode, train)


def format_sum(fit_row: np.ndarray, names: list[str]) -> str:
    """`c0 + c1 * term1 - c2 * term2 ...` of the nonzero coefficients."""
    parts = []
    for c, name in zip(fit_row, names):
        if c == 0.0:
            continue
        magnitude = f"{abs(c):.9g}"
        body = magnitude if name == "1" else f"{magnitude} * {name}"
        parts.append(("- " if c < 0 else "+ ") + body)
    if not parts:
        return "0.0"
    text = " ".join(parts)
    return text[2:] if text.startswith("+ ") else "-" + text[2:]


class SymbolicWriter:
    """Trace -> sim source by sparse regression (see module docstring)."""

    name = "symbolic"

    def __init__(self, config: SymbolicWriterConfig):
        self.config = config

    def write(self, task: WriteTask) -> Written:
        """One fit of the training episodes, judged by the sandbox (the previous round's sim is not
        needed: refitting on all the data is cheap)."""
        source = self.draft(task.train)
        [report] = task.judge([source])
        written = Written(source, report, self.name)
        save_candidate(task.audit_dir, written)
        write_json(task.audit_dir / "selection.json", {
            "config": asdict(self.config), "chosen": self.name, "accepted": report.accepted,
            "candidates": [candidate_summary(self.name, None, report)]})
        return written

    def draft(self, trace: Trace) -> str:
        """The sim source fitted to `trace`, not yet validated."""
        return render_source(trace, self.fit(trace), self.config)

    def fit(self, trace: Trace) -> Equations:
        """The equations of `trace`."""
        with progress(f"fitting equations to {len(trace):,} transitions"):
            return self._fit(trace)

    def _fit(self, trace: Trace) -> Equations:
        cfg = self.config
        coords = Coordinates.detect(trace.obs, cfg.angle_tolerance)
        q = coords.from_obs(trace.obs)
        rows = training_rows(trace, cfg.validation_fraction, cfg.seed)

        change = coords.change(trace.obs, trace.next_obs)
        inside = unsaturated(trace.next_obs, trace.observation_space)
        dynamics_libraries = libraries(coords, q, trace, cfg.degree)
        dynamics = [fit_sparse(dynamics_libraries, change[:, d], rows, cfg, inside) for d in range(change.shape[1])]
        reward = fit_sparse(libraries(coords, q, trace, cfg.reward_degree, ended(trace)), trace.reward.astype(np.float64), rows, cfg)
        terminal = fit_termination(coords, trace.next_obs, trace.terminated, cfg.termination, cfg.seed)
        walls = wall_rules(coords, trace.next_obs, trace.observation_space, cfg.wall_min_rows)
        return Equations(coords, dynamics, walls, reward, terminal)


def libraries(coords: Coordinates, q: np.ndarray, trace: Trace, degree: int,
              extra: list[Feature] | None = None) -> list[Callable[[], Library]]:
    """Polynomial, then trigonometric, over the (N, D) coordinates `q`, the action and `extra`; each built
    once, on first use."""
    return [functools.cache(lambda trig=trig: Library.build(
                "trigonometric" if trig else "polynomial",
                base_features(coords, q, trace.action, trace.action_space, trig=trig) + (extra or []), degree))
            for trig in (False, True)]


def ended(trace: Trace) -> list[Feature]:
    """Whether the step ended the episode, as a reward feature (a goal's bonus is paid there); none for a trace
    without terminal steps."""
    if not trace.terminated.any():
        return []
    return [Feature("done", "terminal(next_state, rng).float()", trace.terminated.astype(np.float64), indicator=True)]


def max_episode_steps(trace: Trace, default: int) -> int:
    if trace.max_episode_steps:
        return int(trace.max_episode_steps)
    lengths = np.diff(np.append(trace.episode_starts(), len(trace)))
    truncated = trace.truncated[np.append(trace.episode_starts()[1:], len(trace)) - 1]
    return int(lengths[truncated].max()) if truncated.any() else default


def signed(expression: str) -> str:
    """`a - b` -> `+ a - b`, `-a + b` -> `- a + b`: for appending to another expression."""
    return f"- {expression[1:]}" if expression.startswith("-") else f"+ {expression}"


def format_float(value: float) -> str:
    return f"{value:.9g}"


def helper_lines(fits: list[SparseFit]) -> list[str]:
    """Assignments of the sines, cosines and action indicators that `fits` use, each once."""
    used = set().union(*(fit.used_names() for fit in fits))
    lines, seen = [], set()
    for fit in fits:
        for feature in fit.library.features:
            if feature.name in used and feature.name not in seen and feature.code != feature.name:
                lines.append(f"    {feature.name} = {feature.code}")
                seen.add(feature.name)
    return lines


OBSERVATION_LINES = ("def observation(state, rng):", "    return state")  # the state is the observation


def unpack_lines(coords: Coordinates) -> list[str]:
    """One line per coordinate, reading it from `state`: `x{i} = state[:, i]`, `th{i} = torch.atan2(...)`."""
    return [f"    {name} = {code}" for (name, _), code in zip(coords.layout, coords.codes("state"))]


def terminal_lines(coords: Coordinates, terminal: str) -> list[str]:
    """The body of `terminal(state, rng)` for a `fit_termination` expression."""
    names = [name for name, _ in coords.layout]
    return [*[line for line, name in zip(unpack_lines(coords), names) if name in terminal],
            *[f"    abs_{name} = torch.abs({name})" for name in names if f"abs_{name}" in terminal],
            f"    return {terminal}"]


def space_lines(trace: Trace, default_max_episode_steps: int) -> list[str]:
    """The contract's constants: observation bounds (clipped to float32's range), action space, horizon."""
    obs_space = trace.observation_space
    return [f"OBSERVATION_LOW = {[float(np.clip(v, -3.0e38, 3.0e38)) for v in obs_space.low]}",
            f"OBSERVATION_HIGH = {[float(np.clip(v, -3.0e38, 3.0e38)) for v in obs_space.high]}",
            f"ACTION_SPACE = {space_to_dict(trace.action_space)!r}",
            f"MAX_EPISODE_STEPS = {max_episode_steps(trace, default_max_episode_steps)}"]


def start_lines(trace: Trace, coords: Coordinates) -> list[str]:
    """`INITIAL_LOW/HIGH`, `to_observation(<coordinates>)` and `initial(rng, n)`: episode starts drawn uniformly
    from the box the session's starts span, in coordinates."""
    names = [name for name, _ in coords.layout]
    q_start = coords.from_obs(trace.obs[trace.episode_starts()])
    obs_space = trace.observation_space
    to_obs = []
    for name, idx in coords.layout:
        if len(idx) == 2:
            to_obs += [f"torch.cos({name})", f"torch.sin({name})"]
        elif np.isfinite(obs_space.low[idx[0]]) or np.isfinite(obs_space.high[idx[0]]):
            to_obs.append(f"{name}.clamp(OBSERVATION_LOW[{idx[0]}], OBSERVATION_HIGH[{idx[0]}])")
        else:
            to_obs.append(name)
    starts = [f"INITIAL_LOW[{d}] + (INITIAL_HIGH[{d}] - INITIAL_LOW[{d}]) * u[:, {d}]" for d in range(len(names))]
    return [
        "# Episode starts are drawn uniformly from the box that the session's starts span (coordinates).",
        f"INITIAL_LOW = {[float(format_float(v)) for v in q_start.min(axis=0)]}",
        f"INITIAL_HIGH = {[float(format_float(v)) for v in q_start.max(axis=0)]}",
        "",
        "",
        f"def to_observation({', '.join(names)}):",
        '    """Coordinates (n,) each -> (n, O) observations, clipped to the observation space."""',
        f"    return torch.stack([{', '.join(to_obs)}], dim=-1)",
        "",
        "",
        "def initial(rng, n):",
        f"    u = torch.rand(n, {len(names)}, generator=rng, device=rng.device)",
        "    return to_observation(",
        *[f"        {start}," for start in starts],
        "    )",
    ]


def transition_lines(function: str, equations: Equations, walls: bool = True) -> list[str]:
    """`def <function>(state, action, rng)`: the next state by the equations (and, if `walls`, the wall rules)."""
    coords, names = equations.coords, [name for name, _ in equations.coords.layout]
    lines = [
        f"    {name} = {name} {signed(format_sum(fit.coef, fit.library.term_names))}"
        + f"  # {fit.num_terms} term{'s' * (fit.num_terms != 1)}, {fit.library.name}, validation NRMSE {fit.validation_nrmse:.2g}"
        for name, fit in zip(names, equations.dynamics)
    ]
    return [f"def {function}(state, action, rng):", *unpack_lines(coords), *helper_lines(equations.dynamics), *lines,
            *(wall.line(lambda i: f"x{i}") for wall in (equations.walls if walls else [])),
            f"    return to_observation({', '.join(names)})"]


def reward_lines(function: str, equations: Equations) -> list[str]:
    """`def <function>(state, action, next_state, rng)`: the reward equation."""
    coords, reward, names = equations.coords, equations.reward, [name for name, _ in equations.coords.layout]
    return [f"def {function}(state, action, next_state, rng):",
            *[line for line, name in zip(unpack_lines(coords), names) if name in reward.used_coordinates(names)],
            *helper_lines([reward]),
            f"    value = {format_sum(reward.coef, reward.library.term_names)}",
            "    return value * torch.ones(state.shape[0], device=state.device)"]


def render_source(trace: Trace, equations: Equations, cfg: SymbolicWriterConfig) -> str:
    coords, names = equations.coords, [name for name, _ in equations.coords.layout]
    angles = f"; obs dims {list(coords.angle_starts)} and the next are (cos, sin) of an angle" if coords.angle_starts else ""
    header = f'''"""Dream sim of {trace.name}, written by the symbolic writer from {len(trace):,} transitions ({trace.num_episodes} episodes).

Coordinates {", ".join(names)}{angles}.
Dynamics: each coordinate's one-step change, by sparse regression (STLSQ) over candidate terms.
Reward: the same regression on the state before the step, the action and (`done`) whether the step ended the episode.
Termination: a rule on the next state (a decision tree on its coordinates, or a linear threshold on its monomials).
"""
'''
    lines = [
        header,
        "import torch",
        "",
        *space_lines(trace, cfg.default_max_episode_steps),
        "",
        *start_lines(trace, coords),
        "",
        "",
        *transition_lines("transition", equations),
        "",
        "",
        *OBSERVATION_LINES,
        "",
        "",
        *reward_lines("reward", equations),
        "",
        "",
        "def terminal(state, rng):",
        *terminal_lines(coords, equations.terminal),
        "",
    ]
    return "\n".join(lines)
