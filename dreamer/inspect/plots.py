"""Figures for notebooks (matplotlib): each function draws one question about a run and returns its Figure.

Observation units are the env's own; `dim_names` (default obs[0], obs[1], ...) label them.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from dreamer.inspect.fidelity import DreamRollout, OneStep, OpenLoop
from dreamer.sandbox import SandboxReport


def _names(dim_names: Sequence[str] | None, count: int) -> list[str]:
    return list(dim_names) if dim_names is not None else [f"obs[{d}]" for d in range(count)]


def _grid(count: int, width: float = 3.6, height: float = 3.2) -> tuple[Figure, np.ndarray]:
    columns = min(count, 4)
    rows = -(-count // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return figure, axes.flat


def plot_one_step(result: OneStep, dim_names: Sequence[str] | None = None) -> Figure:
    """Per observation dimension: the sim's predicted next obs against the real one on held-out transitions."""
    names = _names(dim_names, result.next_obs.shape[1])
    figure, axes = _grid(len(names))
    for d, (ax, name) in enumerate(zip(axes, names)):
        real, predicted = result.next_obs[:, d], result.predicted_next_obs[:, d]
        ax.scatter(real, predicted, s=6, alpha=0.5, label="held-out transition")
        low, high = np.nanmin([real.min(), predicted.min()]), np.nanmax([real.max(), predicted.max()])
        ax.plot([low, high], [low, high], "k--", lw=1, label="perfect prediction")
        ax.set(title=f"{name}  (NRMSE {result.nrmse[d]:.3g})", xlabel=f"real next {name}", ylabel=f"predicted next {name}")
    axes[0].legend(loc="upper left", fontsize="small")
    figure.suptitle(f"One-step predictions on {len(result.next_obs)} held-out transitions")
    figure.tight_layout()
    return figure


def plot_open_loop(rollouts: Sequence[OpenLoop], dim_names: Sequence[str] | None = None) -> Figure:
    """Per dimension: real episodes (solid) and the sim replaying their actions open loop (dashed)."""
    names = _names(dim_names, rollouts[0].obs.shape[1])
    figure, axes = _grid(len(names) + 1)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(rollouts):
        color = colors[i % len(colors)]
        for d, ax in enumerate(axes[:len(names)]):
            ax.plot(run.obs[:, d], color=color, lw=1.5, label=f"episode {run.episode_id}: real")
            ax.plot(run.predicted_obs[:, d], color=color, lw=1.5, ls="--", label=f"episode {run.episode_id}: sim")
        steps = np.arange(1, len(run.reward) + 1)
        axes[len(names)].plot(steps, np.cumsum(run.reward), color=color, lw=1.5)
        axes[len(names)].plot(steps, np.cumsum(run.predicted_reward), color=color, lw=1.5, ls="--")
    for ax, name in zip(axes, names + ["return so far"]):
        ax.set(title=name, xlabel="step", ylabel=name)
    axes[0].legend(fontsize="x-small")
    figure.suptitle(f"Open-loop replay of {len(rollouts)} real episodes (solid: real, dashed: sim)")
    figure.tight_layout()
    return figure


def plot_reward_termination(result: OneStep) -> Figure:
    """Reward predicted vs real, its error distribution, and the termination confusion matrix."""
    figure, (scatter, histogram, matrix) = plt.subplots(1, 3, figsize=(13, 3.8))
    scatter.scatter(result.reward, result.predicted_reward, s=6, alpha=0.5)
    low, high = float(min(result.reward.min(), result.predicted_reward.min())), float(max(result.reward.max(), result.predicted_reward.max()))
    scatter.plot([low, high], [low, high], "k--", lw=1, label="perfect prediction")
    scatter.set(title="reward", xlabel="real reward", ylabel="predicted reward")
    scatter.legend(fontsize="small")
    histogram.hist(result.predicted_reward - result.reward, bins=40)
    histogram.set(title="reward error", xlabel="predicted - real reward", ylabel="transitions")
    counts = result.confusion()
    matrix.imshow(counts, cmap="Blues")
    for (r, p), count in np.ndenumerate(counts):
        matrix.text(p, r, str(count), ha="center", va="center", fontsize=12,
                    color="white" if count > counts.max() / 2 else "black")
    matrix.set(title=f"termination (accuracy {np.trace(counts) / counts.sum():.3f})", xticks=[0, 1], yticks=[0, 1],
               xticklabels=["goes on", "terminated"], yticklabels=["goes on", "terminated"],
               xlabel="predicted", ylabel="real")
    figure.tight_layout()
    return figure


def plot_dream(rollout: DreamRollout, dim_names: Sequence[str] | None = None, episodes: int = 8) -> Figure:
    """State trajectories of the first `episodes` dream episodes, one panel per dimension."""
    names = _names(dim_names, rollout.obs.shape[2])
    figure, axes = _grid(len(names))
    for d, (ax, name) in enumerate(zip(axes, names)):
        for env in range(min(episodes, rollout.obs.shape[1])):
            ax.plot(rollout.obs[:, env, d], lw=1, alpha=0.8, label=f"dream episode {env}")
        ax.set(title=name, xlabel="step", ylabel=name)
    axes[0].legend(fontsize="x-small")
    returns = rollout.returns()
    figure.suptitle(f"Dream rollouts: return {returns.mean():.1f} ± {returns.std():.1f} over {len(returns)} episodes")
    figure.tight_layout()
    return figure


def plot_frames(frames: np.ndarray, count: int = 6, title: str = "") -> Figure:
    """`count` frames evenly spaced through `frames` (T, H, W, 3), labelled with their step."""
    steps = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    figure, axes = plt.subplots(1, len(steps), figsize=(2.6 * len(steps), 2.2), squeeze=False)
    for ax, step in zip(axes.flat, steps):
        ax.imshow(frames[step])
        ax.set(title=f"step {step}", xticks=[], yticks=[])
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_curves(history: Sequence[dict], keys: Sequence[str], title: str = "", xlabel: str = "env steps") -> Figure:
    """One panel per metric key of the logged history, against the logged step."""
    figure, axes = _grid(len(keys), width=4.2)
    for ax, key in zip(axes, keys):
        rows = [row for row in history if row.get(key) is not None]
        ax.plot([row["step"] for row in rows], [row[key] for row in rows], marker=".", lw=1.2)
        ax.set(title=key, xlabel=xlabel, ylabel=key.rsplit("/", 1)[-1])
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_consolidation(run: dict) -> Figure:
    """One seed of the self-context experiment (`metrics.json["opsd"]["runs"][i]`): student and teacher
    return, teacher-student gap and retention per evaluation, OPSD against PPO alone."""
    figure, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    styles = {"opsd": dict(color="C0", label="PPO + OPSD"), "ppo": dict(color="C1", label="PPO alone")}
    for method, curve in run["curves"].items():
        steps = [row["env_steps"] for row in curve]
        axes[0].plot(steps, [row["student_return"] for row in curve], marker=".", **styles[method])
        axes[1].plot(steps, [row["teacher_student_gap"] for row in curve], marker=".", **styles[method])
        axes[2].plot(steps, [row["retention_return"] for row in curve], marker=".", **styles[method])
    teacher = run["teacher_return_dream"]
    axes[0].axhline(teacher, color="k", ls="--", lw=1, label=f"teacher ({teacher:.2f})")
    axes[0].axhline(run["level"], color="gray", ls=":", lw=1, label="level (claim)")
    axes[2].axhline(run["retention_return_before"], color="k", ls="--", lw=1, label="before")
    for ax, title in zip(axes, ("student return on the new variant", "teacher − student return",
                                "return on the other variants (retention)")):
        ax.set(title=title, xlabel="student env steps", ylabel="return per episode")
        ax.legend(fontsize="small")
    figure.suptitle(f"Seed {run['seed']}: consolidating a goal at {run['goal_angle_deg']:.0f}°")
    figure.tight_layout()
    return figure


def plot_nrmse_by_writer(reports: dict[str, SandboxReport], dim_names: Sequence[str] | None = None) -> Figure:
    """Held-out one-step NRMSE per observation dimension, one bar per writer (log scale: lower is better)."""
    figure, ax = plt.subplots(figsize=(8, 3.6))
    count = max(len(report.fidelity.obs_nrmse) if report.fidelity else 0 for report in reports.values())
    names = _names(dim_names, count)
    width = 0.8 / len(reports)
    for i, (writer, report) in enumerate(reports.items()):
        values = [np.nan if v is None else v for v in (report.fidelity.obs_nrmse if report.fidelity else [np.nan] * count)]
        verdict = "accepted" if report.accepted else "rejected"
        ax.bar(np.arange(count) + i * width, values, width, label=f"{writer} ({verdict})")
    ax.set(xticks=np.arange(count) + width * (len(reports) - 1) / 2, xticklabels=names, yscale="log",
           ylabel="one-step NRMSE (held out)", title="Writers side by side: lower is better")
    ax.legend(fontsize="small")
    figure.tight_layout()
    return figure
