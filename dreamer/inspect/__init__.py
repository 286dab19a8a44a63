"""Look inside a run: its artifacts (`Run`), the accepted sim next to the real session (`one_step`,
`open_loop`), the sim's own rollouts, and the figures and tables the notebooks and
`python -m dreamer.inspect RUN_DIR` show."""

from dreamer.inspect.fidelity import DreamRollout, OneStep, OpenLoop, dream_rollouts, one_step, open_loop, render_states
from dreamer.inspect.run import Run, latest_run, runs_root

__all__ = ["DreamRollout", "OneStep", "OpenLoop", "Run", "dream_rollouts", "latest_run", "one_step", "open_loop",
           "render_states", "runs_root"]
