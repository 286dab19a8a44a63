"""Progress on stderr for the steps that take more than a second or two (recording real steps, fitting a
writer's models, judging candidates in the sandbox, PPO, scoring and evaluating the policy): a live line with a
spinner or a bar and the time elapsed where stderr is a terminal, nothing in a log (rich draws live displays
on terminals only; the steps print their own result lines)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

console = Console(stderr=True)
_showing = False  # rich allows one live display at a time: a step inside another shows only the outer one

Advance = Callable[[int, str], None]  # (steps done, a short status) -> None


@contextmanager
def progress(description: str, total: int | None = None) -> Iterator[Advance]:
    """A transient progress line for the `with` block: a spinner, or a bar of `total` steps moved by the yielded
    `advance(done, status)`."""
    global _showing
    if _showing or not console.is_terminal:  # off a terminal, rich would still leave an empty line behind
        yield lambda done, status: None
        return
    columns = [SpinnerColumn(), TextColumn(f"  {description}")]
    if total is not None:
        columns += [BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn("{task.fields[status]}"), TimeElapsedColumn()]
    _showing = True
    try:
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(description, total=total, status="")
            yield lambda done, status: bar.update(task, completed=done, status=status)
    finally:
        _showing = False
