"""Rich tables of a run's artifacts, shared by `python -m dreamer.inspect` and the notebooks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields

from rich.table import Table

from dreamer.sandbox import SandboxReport
from dreamer.sim.fidelity import Fidelity
from dreamer.traces import Trace

SPARKS = "▁▂▃▄▅▆▇█"


def number(value) -> str:
    """A figure for a table or a docstring: ints with thousands separators, floats to 4 significant digits, None as —."""
    if value is None:
        return "—"
    if isinstance(value, bool) or isinstance(value, int):
        return f"{value:,}" if not isinstance(value, bool) else str(value)
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _first_line(text: str, width: int = 100) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    line = lines[-1] if lines and lines[0].startswith("Traceback") else (lines[0] if lines else "")
    return line if len(line) <= width else line[:width - 1] + "…"


def trace_table(trace: Trace) -> Table:
    """The session's size, episodes, returns and per-dimension observation statistics."""
    s = trace.summary()
    table = Table(title=f"Trace {trace.name!r}", show_header=False)
    rows = [
        ("transitions / episodes", f"{s.num_transitions:,} / {s.num_episodes:,}"),
        ("episode length", f"{s.episode_length_mean:.1f} (min {s.episode_length_min}, max {s.episode_length_max})"),
        ("episode return", f"{s.episode_return_mean:.4g} ± {s.episode_return_std:.4g} "
                           f"(min {s.episode_return_min:.4g}, max {s.episode_return_max:.4g})"),
        ("terminated / truncated", f"{s.num_terminated} / {s.num_truncated}"),
        ("observation space", str(trace.observation_space)),
        ("action space", str(trace.action_space)),
        ("feedback", f"{len(trace.feedback)} on steps, {len(trace.episode_feedback)} on episodes"),
    ]
    rows += [(f"obs[{d}]", f"mean {m:.4g}, std {sd:.4g}, range [{lo:.4g}, {hi:.4g}]")
             for d, (m, sd, lo, hi) in enumerate(zip(s.obs_mean, s.obs_std, s.obs_min, s.obs_max))]
    for key, value in rows:
        table.add_row(key, value)
    return table


def report_table(report: SandboxReport) -> Table:
    """Every sandbox check: passed or failed, and its detail (a traceback's last line)."""
    verdict = "[green]accepted[/]" if report.accepted else "[red]rejected[/]"
    table = Table(title=f"Sandbox report on {report.name!r}: {verdict} ({report.seconds:.1f} s; {report.isolation})")
    table.add_column("check")
    table.add_column("passed")
    table.add_column("detail", overflow="fold")
    for name, check in report.checks.items():
        table.add_row(name, "[green]yes[/]" if check["passed"] else "[red]no[/]", _first_line(check["detail"], 160))
    return table


def fidelity_table(report: SandboxReport) -> Table:
    """The held-out figures the sandbox measured (NRMSE: RMSE over the std of the real change), one
    row per `Fidelity` field; none when it measured none."""
    table = Table(title="Held-out fidelity", show_header=False)
    for field in fields(Fidelity) if report.fidelity is not None else ():
        value = getattr(report.fidelity, field.name)
        table.add_row(field.name, ", ".join(map(number, value)) if isinstance(value, tuple) else number(value))
    return table


def candidates_table(candidates: Sequence[dict], chosen: str | None = None) -> Table:
    """The writer's candidates in the order written: verdict, figures, and why each was rejected."""
    table = Table(title="Writer candidates")
    for column in ("candidate", "parent", "verdict", "accuracy", "one-step NRMSE", "k-step NRMSE", "why rejected"):
        table.add_column(column, overflow="fold")
    for c in candidates:
        mark = " ←" if c["label"] == chosen else ""
        table.add_row(c["label"] + mark, c["parent"] or "", "[green]accepted[/]" if c["accepted"] else "[red]rejected[/]",
                      number(c.get("accuracy")), number(c.get("obs_nrmse_mean")), number(c.get("kstep_nrmse")),
                      "; ".join(_first_line(reason, 120) for reason in c["reasons"][:2]))
    return table


def sparkline(values: Sequence[float]) -> str:
    """Values as a row of block characters (min to max)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return ""
    low, high = min(values), max(values)
    return "".join(SPARKS[0 if high == low else round((v - low) / (high - low) * (len(SPARKS) - 1))] for v in values)


def curves_table(history: Sequence[dict], keys: Sequence[str], points: int = 6) -> Table:
    """Each metric's curve: first, evenly spaced middle and last values, with a sparkline of all."""
    table = Table(title="Training curves (logged history)")
    table.add_column("metric")
    table.add_column("updates")
    table.add_column(f"values at {points} evenly spaced updates (env step: value)", overflow="fold")
    table.add_column("curve")
    for key in keys:
        rows = [row for row in history if row.get(key) is not None]
        if not rows:
            continue
        picks = sorted({round(i * (len(rows) - 1) / max(points - 1, 1)) for i in range(points)})
        table.add_row(key, str(len(rows)), ", ".join(f"{rows[i]['step']:,}: {number(rows[i][key])}" for i in picks),
                      sparkline([row[key] for row in rows]))
    return table


def gap_text(metrics: dict) -> str:
    """A dream run's dream-minus-real return, its share of the gain over random play, and the warning when large
    (`metrics.json`'s `dream_real_gap`, `dream_real_gap_fraction`, `large_gap`)."""
    fraction = metrics["dream_real_gap_fraction"]
    text = f"{metrics['dream_real_gap']:+.1f}" + ("" if fraction is None else f" ({fraction:.0%} of the gain over random)")
    return text + (": LARGE, the policy may exploit the sim" if metrics["large_gap"] else "")


def leaving_text(metrics: dict) -> str:
    """How often the kept policy leaves the session's support in the last sim as written (`metrics.json`'s
    `support_leaving_share`; `sim.support`)."""
    return (f"in {metrics['support_leaving_share']:.1%} of the kept policy's dream episodes in the sim as written "
            "(the dream ends them there)")


def returns_table(metrics: dict, history: Sequence[dict]) -> Table:
    """The dream loop's returns: in the dream (last PPO update) and in the real env."""
    dream = [row["dream/episode_return_mean"] for row in history if row.get("dream/episode_return_mean") is not None]
    table = Table(title="Real vs dream returns", show_header=False)
    real = metrics.get("real_return_mean")
    table.add_row("dream return (last PPO update)", number(dream[-1]) if dream else "—")
    if metrics.get("dream_return_mean") is not None:
        table.add_row(f"dream return of the kept policy (round {metrics['picked_round']}, last sim)",
                      f"{metrics['dream_return_mean']:.4g} (random: {metrics['random_return_dream']:.4g})")
    if metrics.get("support_leaving_share") is not None:  # absent from runs before sim.support
        table.add_row("leaves the session's support", leaving_text(metrics))
    table.add_row("real return", "not evaluated" if real is None else
                  f"{real:.4g} ± {metrics['real_return_std']:.4g} over {metrics['real_eval_episodes']} episodes "
                  f"of {metrics['real_eval_env']}")
    if metrics.get("dream_real_gap") is not None:
        table.add_row("dream - real return", gap_text(metrics))
    table.add_row("real / dream env steps", f"{metrics.get('real_env_steps', 0):,} / {metrics.get('dream_env_steps', 0):,}")
    return table


def nonfinite_table(nonfinite: dict) -> Table:
    """What stopped a run with bad numbers (`Run.nonfinite`): the message, then each detail."""
    table = Table(title=f"Bad numbers stopped the run (in the {nonfinite['where']})", show_header=False)
    table.add_row("message", nonfinite["message"])
    for key, value in nonfinite["details"].items():
        table.add_row(key, str(value))
    return table


def metrics_table(metrics: dict, title: str = "metrics.json") -> Table:
    """The scalar entries of a metrics dict (nested dicts flattened with "/"), and its lists of text (the
    sandbox's reasons, the writers tried, the coverage warnings) joined by "; "."""
    table = Table(title=title, show_header=False)

    def rows(prefix: str, value):
        if isinstance(value, dict):
            for key, inner in value.items():
                yield from rows(f"{prefix}/{key}" if prefix else key, inner)
        elif value is None or isinstance(value, bool | int | float | str):
            yield prefix, value
        elif isinstance(value, list) and value and all(isinstance(item, str) for item in value):
            yield prefix, "; ".join(value)

    for key, value in rows("", metrics):
        table.add_row(key, value if isinstance(value, str) else number(value))
    return table
