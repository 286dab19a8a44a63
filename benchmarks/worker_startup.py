"""Sandbox worker start-up: what each candidate pays before its first check runs, in one run.

Each sandbox worker is a fresh interpreter that imports `dreamer.sandbox.worker`. This times that import
(`python -c "import dreamer.sandbox.worker"`, the median of `--repeats` runs) in this checkout and, when
`--before REV` is given, in a git worktree of that revision, against a floor measured in the same run: an
interpreter that imports only what a sim needs (torch, numpy, gymnasium). The ratios are the figures.

    python benchmarks/worker_startup.py                   # this checkout against the floor
    python benchmarks/worker_startup.py --before c551c7a  # ... and the revision before the lean worker
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOOR = "import torch, numpy, gymnasium"
WORKER = "import dreamer.sandbox.worker"
HEAVY = ("hydra", "omegaconf", "pyarrow", "minari", "pandas", "wandb", "transformers", "sklearn", "pysindy", "rich")


def seconds(code: str, root: Path, repeats: int) -> float:
    """Median wall time (s) of a fresh `python -c code` with `root` first on sys.path, one thread."""
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=root, env=env, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def heavy_modules(root: Path) -> list[str]:
    """The heavy packages (not needed by a sim) that importing the worker loads."""
    probe = f"{WORKER}; import sys; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))"
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", probe], cwd=root, env=env, check=True, capture_output=True,
                          text=True).stdout.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="a git revision to measure beside this checkout")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; "
          f"median of {args.repeats} fresh interpreters each")
    seconds(FLOOR, ROOT, 1)  # warm the file cache
    floor = seconds(FLOOR, ROOT, args.repeats)
    rows = [("floor: " + FLOOR, floor, [])]
    with tempfile.TemporaryDirectory() as scratch:
        if args.before:
            before = Path(scratch) / "before"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(before), args.before], check=True)
            try:
                rows.append((f"worker at {args.before}", seconds(WORKER, before, args.repeats), heavy_modules(before)))
            finally:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], check=True)
        rows.append(("worker, this checkout", seconds(WORKER, ROOT, args.repeats), heavy_modules(ROOT)))
    for label, value, heavy in rows:
        print(f"{label:<45} {value:6.2f} s  {value / floor:5.2f}x the floor  heavy imports: {', '.join(heavy) or 'none'}")
    if args.before:
        print(f"start-up before / after: {rows[1][1] / rows[2][1]:.2f}x")


if __name__ == "__main__":
    main()
