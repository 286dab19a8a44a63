"""When an episode ends: a rule on the next state fitted to the trace's terminal steps, shared by the offline writers.

Two kinds of rule, each learned from a handful of terminations far better than by a net:

- a shallow decision tree on the next state's coordinate magnitudes, or on the signed coordinates too where the
  magnitudes cannot tell the terminal states apart (a cart leaving the track, a pole past an angle, a goal line);
- a sparse linear threshold on the monomials (up to `degree`) of the next observation, for a boundary no box
  holds (Acrobot's tip height, -cos θ1 - cos(θ1 + θ2) > 1, is linear in the products of its observed cos/sin):
  a class-balanced logistic regression on every monomial, its support pruned to the largest coefficients and
  refitted, the threshold put midway between the classes where they separate.

The linear rule is used only where it gets fewer of the trace's steps wrong than the tree: a box is the rule a
reader checks at a glance, and the tree keeps a bound on the side the session never met (`|x| > b`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from dreamer.writers.coordinates import Coordinates

NEVER = "torch.zeros(state.shape[0], dtype=torch.bool, device=state.device)"
ALWAYS = "torch.ones(state.shape[0], dtype=torch.bool, device=state.device)"


@dataclass(frozen=True)
class TerminationConfig:
    max_depth: int              # depth of the decision tree
    degree: int                 # highest monomial degree of the next observation in the linear rule (0: no linear rule)
    prune: list[float]          # support cut-offs tried, as fractions of the largest |coefficient| (standardized terms)
    regularization: float       # the logistic regression's inverse L2 strength (sklearn's C)

    def __post_init__(self):
        if self.max_depth < 1:
            raise ValueError(f"max_depth must be an int >= 1, got {self.max_depth}")
        if self.degree < 0:
            raise ValueError(f"degree must be an int >= 0, got {self.degree}")
        if not self.prune or not all(0 <= cut < 1 for cut in self.prune):
            raise ValueError(f"prune must be a non-empty list of fractions in [0, 1), got {self.prune}")
        if not self.regularization > 0:
            raise ValueError(f"regularization must be > 0, got {self.regularization}")


@dataclass(frozen=True)
class Rule:
    """A torch boolean expression for `terminal`'s body, over `state` and the coordinate names (and `abs_*`)."""

    expression: str
    errors: int  # steps of the trace it was fitted to that it gets wrong


def fit_termination(coords: Coordinates, next_obs: np.ndarray, terminated: np.ndarray, config: TerminationConfig,
                    seed: int) -> str:
    """The expression of `terminal`, fitted to (N, O) next observations and their (N,) terminal flags."""
    if not terminated.any():
        return NEVER
    if terminated.all():
        return ALWAYS
    rule = tree_rule(coords, next_obs, terminated, config.max_depth, seed)
    if rule.errors and config.degree:
        linear = linear_rule(next_obs, terminated, config)
        rule = linear if linear is not None and linear.errors < rule.errors else rule
    return rule.expression


def tree_rule(coords: Coordinates, next_obs: np.ndarray, terminated: np.ndarray, max_depth: int, seed: int) -> Rule:
    """A decision tree of depth `max_depth` (seeded with `seed`) on the coordinates' magnitudes, or signed too."""
    from sklearn.tree import DecisionTreeClassifier  # here: scikit-learn takes a second to import, and most runs
                                                     # of `dreamer.train` that stop early never need it

    q = coords.from_obs(next_obs)
    names = [name for name, _ in coords.layout]
    magnitudes, signed = np.abs(q), np.concatenate([np.abs(q), q], axis=1)
    trees = [DecisionTreeClassifier(max_depth=max_depth, random_state=seed).fit(X, terminated)
             for X in (magnitudes, signed)]
    # Symmetric bounds first: a session that met a bound on one side only (a cart leaving right, never left)
    # cannot tell |x| > b from x > b, and the magnitude tree keeps the bound on the side it never saw.
    symmetric = trees[0].score(magnitudes, terminated) >= trees[1].score(signed, terminated)
    tree, X = (trees[0], magnitudes) if symmetric else (trees[1], signed)
    feature_names = [f"abs_{n}" for n in names] + ([] if symmetric else names)
    t = tree.tree_
    leaves = []

    def walk(node: int, path: list[str]) -> None:
        if t.children_left[node] == -1:
            if tree.classes_[np.argmax(t.value[node][0])]:
                leaves.append(" & ".join(path) if path else "True")
            return
        name, threshold = feature_names[t.feature[node]], f"{t.threshold[node]:.9g}"
        walk(t.children_left[node], path + [f"({name} <= {threshold})"])
        walk(t.children_right[node], path + [f"({name} > {threshold})"])

    walk(0, [])
    errors = int((tree.predict(X) != terminated).sum())
    if not leaves:
        return Rule(NEVER, errors)
    return Rule(" | ".join(f"({leaf})" if " & " in leaf and len(leaves) > 1 else leaf for leaf in leaves), errors)


def linear_rule(next_obs: np.ndarray, terminated: np.ndarray, config: TerminationConfig) -> Rule | None:
    """The sparsest linear threshold on the next observation's monomials among those with the fewest errors
    (None where every monomial is constant)."""
    from sklearn.exceptions import ConvergenceWarning  # here, as in tree_rule
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import PolynomialFeatures

    poly = PolynomialFeatures(config.degree, include_bias=False)
    X = poly.fit_transform(next_obs.astype(np.float64))
    mean, std = X.mean(0), X.std(0)
    varying = std > 1e-12
    if not varying.any():
        return None
    Z = np.zeros_like(X)
    Z[:, varying] = (X[:, varying] - mean[varying]) / std[varying]

    def fit(support: np.ndarray) -> tuple[np.ndarray, float, int]:
        """Coefficients on the standardized terms, threshold, errors."""
        with warnings.catch_warnings():  # separable classes never converge to a finite optimum: fine
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = LogisticRegression(C=config.regularization, class_weight="balanced", max_iter=1000)
            model.fit(Z[:, support], terminated)
        coef = np.zeros(X.shape[1])
        coef[support] = model.coef_[0]
        score = Z @ coef
        lowest_terminal, highest_other = score[terminated].min(), score[~terminated].max()
        threshold = (lowest_terminal + highest_other) / 2 if highest_other < lowest_terminal else -float(model.intercept_[0])
        return coef, threshold, int(((score > threshold) != terminated).sum())

    full, _, _ = fit(varying)
    fits = []
    for cut in config.prune:
        support = varying & (np.abs(full) >= cut * np.abs(full).max())
        fits.append(fit(support))
    coef, threshold, errors = min(fits, key=lambda f: (f[2], np.count_nonzero(f[0])))
    # Back to the raw terms: sum_j c_j (x_j - m_j) / s_j > t  <=>  sum_j (c_j / s_j) x_j > t + sum_j c_j m_j / s_j.
    raw = np.where(varying, coef / np.where(varying, std, 1.0), 0.0)
    offset = threshold + float(np.sum(raw * mean))
    terms = [(c, monomial_code(powers)) for c, powers in zip(raw, poly.powers_) if c != 0.0]
    total = " ".join(f"{'-' if c < 0 else '+'} {abs(c):.9g} * {code}" for c, code in terms)
    return Rule(f"({total.removeprefix('+ ')} > {offset:.9g})", errors)


def monomial_code(powers: np.ndarray) -> str:
    """`state[:, 0] * state[:, 2]` for the exponents (1, 0, 1)."""
    return " * ".join(f"state[:, {i}]" for i, power in enumerate(powers) for _ in range(int(power)))
