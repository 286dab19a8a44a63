"""Prompts of the language-model writer, rendered from Markdown templates.

The templates live in `dreamer/writers/templates/` (or the directory `writer.prompts_dir` names):
`system.md` (the sim contract with a short example), `session.md` (what the session showed) and
`feedback.md` (a sandbox report). Placeholders are `string.Template` ones: `$name`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

import numpy as np
from gymnasium import spaces

from dreamer.sandbox import SandboxReport
from dreamer.traces import Trace

TEMPLATE_DIR = Path(__file__).parent / "templates"
DIGITS = 6  # significant digits of the numbers shown to the model
CODE_BLOCK = re.compile(r"```([\w+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
MAX_CHECK_DETAIL_CHARS = 2000


@dataclass(frozen=True)
class Templates:
    """The three prompt templates, as text."""

    system: str
    session: str
    feedback: str
    directory: Path

    @classmethod
    def load(cls, directory: str | Path | None) -> Templates:
        """From `directory` (None: the built-in ones); a missing file is named in the error."""
        root = TEMPLATE_DIR if directory is None else Path(directory).expanduser()
        texts = {}
        for name in ("system", "session", "feedback"):
            path = root / f"{name}.md"
            if not path.is_file():
                raise FileNotFoundError(f"prompt template {path} not found (writer.prompts_dir={directory!r} "
                                        f"must hold system.md, session.md and feedback.md)")
            texts[name] = path.read_text()
        return cls(**texts, directory=root)

    def render(self, name: str, values: dict[str, object]) -> str:
        """Template `name` with `values` substituted; an unknown placeholder is named with its file."""
        try:
            return Template(getattr(self, name)).substitute(values)
        except (KeyError, ValueError) as error:
            raise ValueError(f"prompt template {self.directory / (name + '.md')}: bad placeholder {error}; "
                             f"the placeholders it may use are {sorted('$' + key for key in values)}") from error


def number(value: float) -> str:
    return f"{value:.{DIGITS}g}"


def vector(values) -> str:
    return "[" + ", ".join(number(v) for v in np.asarray(values, dtype=np.float64).ravel()) + "]"


def describe_space(space: spaces.Space) -> str:
    if isinstance(space, spaces.Discrete):
        return f"Discrete({space.n}): integer actions 0..{space.n - 1}"
    if isinstance(space, spaces.Box):
        return f"Box(low={vector(space.low)}, high={vector(space.high)}, shape={space.shape}, float32)"
    return str(space)


def sample_rows(trace: Trace, count: int, seed: int) -> np.ndarray:
    """Up to `count` sorted rows: episode starts (a quarter), terminal and truncated steps (a
    quarter), and the rest uniformly at random."""
    rng = np.random.default_rng(seed)
    n = len(trace)
    ends = np.flatnonzero(trace.terminated | trace.truncated)
    chosen: set[int] = set()
    for pool, budget in ((trace.episode_starts(), count // 4), (ends, count // 4)):
        chosen.update(rng.choice(pool, min(budget, len(pool)), replace=False).tolist())
    rest = np.setdiff1d(np.arange(n), list(chosen))
    chosen.update(rng.choice(rest, min(count - len(chosen), len(rest)), replace=False).tolist())
    return np.array(sorted(chosen), dtype=np.int64)


def transition_line(trace: Trace, row: int) -> str:
    action = trace.action[row]
    shown = vector(action) if np.ndim(action) else str(int(action))
    return (f"{row} | {int(trace.episode[row])} | {vector(trace.obs[row])} | {shown} | {number(trace.reward[row])} | "
            f"{vector(trace.next_obs[row])} | {bool(trace.terminated[row])} | {bool(trace.truncated[row])}")


def obs_table(trace: Trace) -> str:
    delta = trace.next_obs.astype(np.float64) - trace.obs
    space = trace.observation_space
    lines = ["| dim | low | high | mean | std | min | max | mean of next - obs | std of next - obs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for d in range(trace.obs.shape[1]):
        column = trace.obs[:, d].astype(np.float64)
        cells = (space.low[d], space.high[d], column.mean(), column.std(), column.min(), column.max(),
                 delta[:, d].mean(), delta[:, d].std())
        lines.append(f"| {d} | " + " | ".join(number(c) for c in cells) + " |")
    return "\n".join(lines)


def reward_stats(trace: Trace) -> str:
    reward = trace.reward.astype(np.float64)
    text = (f"mean {number(reward.mean())}, std {number(reward.std())}, min {number(reward.min())}, "
            f"max {number(reward.max())}")
    values, counts = np.unique(reward, return_counts=True)
    if len(values) <= 10:
        text += "; the values taken: " + ", ".join(f"{number(v)} ({c} times)" for v, c in zip(values, counts))
    return text


def session_prompt(templates: Templates, trace: Trace, transitions: int, seed: int, draft: str | None) -> str:
    """The user message that describes the session (and the offline writer's draft, if any)."""
    summary = trace.summary()
    rows = sample_rows(trace, transitions, seed)
    feedback = ""
    lines = [f"- row {row} (episode {int(trace.episode[row])}): {text}" for row, text in sorted(trace.feedback.items())]
    lines += [f"- episode {episode}: {text}" for episode, text in sorted(trace.episode_feedback.items())]
    if lines:
        feedback = "\n## Feedback the user gave during the session\n\n" + "\n".join(lines) + "\n"
    draft_text = ""
    if draft is not None:
        draft_text = ("\n## A draft from offline equation discovery\n\nSparse regression on the same data wrote this "
                      "draft. It may be a good starting point; check it against the data before you trust it.\n\n"
                      f"```python\n{draft.strip()}\n```\n")
    return templates.render("session", {
        "name": trace.name or "unnamed",
        "notes": f"\nNotes: {trace.notes}\n" if trace.notes else "",
        "observation_space": describe_space(trace.observation_space),
        "obs_dim": trace.obs.shape[1],
        "action_space": describe_space(trace.action_space),
        "num_episodes": summary.num_episodes,
        "num_transitions": summary.num_transitions,
        "length_mean": number(summary.episode_length_mean),
        "length_min": summary.episode_length_min,
        "length_max": summary.episode_length_max,
        "num_terminated": summary.num_terminated,
        "num_truncated": summary.num_truncated,
        "max_episode_steps": trace.max_episode_steps if trace.max_episode_steps is not None else "unknown",
        "obs_stats": obs_table(trace),
        "reward_stats": reward_stats(trace),
        "transition_count": len(rows),
        "transitions": "\n".join(transition_line(trace, row) for row in rows),
        "feedback": feedback,
        "draft": draft_text,
    })


def shown(value: float | Sequence[float]) -> str:
    return vector(value) if isinstance(value, list | tuple) else number(value)


def counterexample_line(example: dict) -> str:
    return (f"- row {example['index']} (episode {example['episode']}), wrong in {', '.join(example['wrong'])}: "
            f"obs {shown(example['obs'])}, action {shown(example['action'])} -> next_obs {shown(example['next_obs'])}, "
            f"predicted {shown(example['predicted_next_obs'])}; reward {shown(example['reward'])}, predicted "
            f"{shown(example['predicted_reward'])}; terminated {example['terminated']}, predicted "
            f"{example['predicted_terminated']}")


def feedback_prompt(templates: Templates, report: SandboxReport) -> str:
    """The user message that answers a candidate with its sandbox report."""
    failed = [(name, check["detail"]) for name, check in report.checks.items() if not check["passed"]]
    failures = "\n".join(f"- {name}:\n```\n{detail.strip()[-MAX_CHECK_DETAIL_CHARS:]}\n```" for name, detail in failed)
    if not failed and report.reasons:  # the worker did not come back (timeout, memory, ...)
        failures = "\n".join(f"- {reason}" for reason in report.reasons)
    f = report.fidelity
    if f is not None:
        fidelity = "\n".join(f"- {key}: {'not measured' if value is None else shown(value)}" for key, value in (
            ("one-step next_obs NRMSE per dim (RMSE / std of next_obs - obs)", f.obs_nrmse),
            ("reward NRMSE", f.reward_nrmse), ("termination accuracy", f.termination_accuracy),
            ("real terminations in the held-out steps, and how many the simulator called terminal",
             None if f.terminations is None else (f.terminations, f.predicted_terminations)),
            ("termination recall (real terminations caught)", f.termination_recall),
            ("termination precision (called terminations that were real)", f.termination_precision),
            ("accuracy (state, reward and termination all right)", f.accuracy),
            (f"{f.kstep}-step open-loop NRMSE", f.kstep_nrmse)))
    else:
        fidelity = "not measured: the simulator did not get that far."
    if report.counterexamples:
        counterexamples = "\n".join(counterexample_line(example) for example in report.counterexamples)
    elif f is not None:
        counterexamples = "none: every held-out transition is within tolerance."
    else:
        counterexamples = "none available: the simulator did not get that far."
    return templates.render("feedback", {
        "verdict": "accepted" if report.accepted else "rejected",
        "failures": failures or "none",
        "fidelity": fidelity,
        "tolerances": (f"a transition is right when every next_obs dim is within {f.state_tolerance} std of "
                       f"next_obs - obs, the reward within {f.reward_tolerance} std, and the flag matches")
        if f is not None else "not measured",
        "counterexamples": counterexamples,
    })


def extract_code(completion: str) -> str:
    """The last ```python block of a completion (an unclosed one runs to the end), else the last
    fenced block, else the whole text."""
    blocks = CODE_BLOCK.findall(completion)
    python = [code for language, code in blocks if language.lower() in ("python", "py", "python3")]
    if python or blocks:
        return (python or [code for _, code in blocks])[-1].strip() + "\n"
    return completion.strip() + "\n"
