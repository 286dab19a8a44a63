"""`python -m dreamer.export RUN_DIR envs/NAME`: an accepted sim as an ordinary, importable Gymnasium env module.

The folder it makes holds the sim's source as the sandbox accepted it (`sim.py`, with `sim.safetensors`
beside it for a learned sim's weights), the sandbox's report
(`report.json`), the run's config (`config.yaml`) and an `__init__.py` that registers `dreamer/NAME-v0`.
Under `envs/`, `import envs` registers it with the rest; anywhere else, `import NAME` (its parent on
`sys.path`). `gymnasium.make(id, device=...)` builds a `SimEnv`, `gymnasium.make_vec(id, num_envs,
device=...)` a `SimVectorEnv`; both load the source through `load_sim`, which checks it statically again
and refuses it if the report beside it is not an acceptance. A rejected sim is never exported, and an
existing folder is never overwritten.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import warnings
from pathlib import Path

import gymnasium
from gymnasium.utils.env_checker import check_env

from dreamer.artifacts import atomic_dir
from dreamer.inspect.run import Run
from dreamer.inspect.tables import number
from dreamer.sandbox import load_sim
from dreamer.sandbox.loading import REPORT_NAME
from dreamer.sim.env import SimEnv, SimVectorEnv
from dreamer.sim.weights import weights_path

SIM_FILE = "sim.py"

MODULE = '''"""{name}: a sim dreamer wrote from a session, exported from {run_dir}.

The sandbox accepted it on {held_out} held-out transitions of the real session:
- one-step NRMSE {nrmse} (per obs dim: {per_dim});
- termination accuracy {termination}; state, reward and termination all right: {accuracy}.
report.json is the sandbox's report, config.yaml the run's config (its seed included).

    import gymnasium, {package}
    env = gymnasium.make("{env_id}")  # a SimEnv, numpy I/O; device="cuda" steps it on a GPU
    vector_env = gymnasium.make_vec("{env_id}", num_envs=1024)  # a SimVectorEnv, torch tensors
"""

from pathlib import Path

import gymnasium

ENV_ID = "{env_id}"
SIM = Path(__file__).with_name("{sim_file}")

gymnasium.register(id=ENV_ID, entry_point="dreamer.export:sim_env", vector_entry_point="dreamer.export:sim_vector_env",
                   kwargs={{"path": str(SIM)}})
'''


class ExportError(ValueError):
    """What makes a run unexportable, or a target unusable, in one sentence that names the file."""


def sim_env(path: str, device: str = "cpu") -> SimEnv:
    """The registered entry point of an exported sim: one env with numpy I/O."""
    return SimEnv(load_sim(path, device), device=device)


def sim_vector_env(path: str, num_envs: int, device: str = "cpu", compile: bool = False) -> SimVectorEnv:
    """The registered vector entry point of an exported sim: `num_envs` copies on `device` (`compile`: see
    `SimVectorEnv`)."""
    return SimVectorEnv(load_sim(path, device), num_envs, device, compile)


def export(run_dir: str | Path, target: str | Path) -> str:
    """Export the accepted sim of `run_dir` to the new folder `target` (a Python package named by its last
    part), check that Gymnasium's `check_env` passes on it, and return its env id."""
    run, target = Run.load(run_dir), Path(target)
    name = target.name
    if not name.isidentifier():
        raise ExportError(f"{target}: the folder becomes the Python package {name!r}, which is not an identifier "
                          "(use letters, digits and _, e.g. envs/cartpole_dream)")
    if target.exists():
        raise ExportError(f"{target} exists: choose a new folder (an export never overwrites)")
    if run.sim_path is None or run.report is None:
        raise ExportError(f"{run.env_dir} holds no sim with a sandbox report: this run wrote none")
    if not run.report.accepted:
        reasons = "; ".join(run.report.reasons)
        raise ExportError(f"{run.env_dir / REPORT_NAME}: the sandbox rejected this sim, so it is not exported: {reasons}")
    load_sim(run.sim_path)  # the static check again, on the file as it is now
    env_id = f"dreamer/{name}-v0"
    fidelity = run.report.fidelity
    with atomic_dir(target) as staging:
        shutil.copyfile(run.sim_path, staging / SIM_FILE)
        if weights_path(run.sim_path).is_file():
            shutil.copyfile(weights_path(run.sim_path), weights_path(staging / SIM_FILE))
        shutil.copyfile(run.env_dir / REPORT_NAME, staging / REPORT_NAME)
        shutil.copyfile(run.path / "config.yaml", staging / "config.yaml")
        (staging / "__init__.py").write_text(MODULE.format(
            name=name, run_dir=run.path, held_out=fidelity.transitions, env_id=env_id, sim_file=SIM_FILE,
            nrmse=number(fidelity.obs_nrmse_mean), termination=number(fidelity.termination_accuracy),
            accuracy=number(fidelity.accuracy), package=package_of(target),
            per_dim=", ".join(number(value) for value in fidelity.obs_nrmse) or "none"))
        check(staging, env_id)
    return env_id


def check(package: Path, env_id: str) -> None:
    """Import the package at `package` as a fresh module, make `env_id` and run `check_env` on it."""
    spec = importlib.util.spec_from_file_location(f"_dreamer_export_{package.name.strip('.')}", package / "__init__.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    try:
        env = gymnasium.make(env_id)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # render modes: a sim draws nothing
            check_env(env.unwrapped, skip_render_check=True)
        env.close()
    finally:
        gymnasium.registry.pop(env_id, None)  # registered again, from its final place, on import


def package_of(target: Path) -> str:
    """What to import to register the export at `target`: `envs` for a folder under envs/, else its own name."""
    return "envs" if target.parent.name == "envs" else target.name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dreamer.export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run dir of `python -m dreamer.train` or `python -m dreamer.write`")
    parser.add_argument("target", help="the new folder, e.g. envs/cartpole_dream (its name becomes the package's)")
    args = parser.parse_args(argv)
    try:
        env_id = export(args.run_dir, args.target)
    except (ExportError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"exported {args.run_dir} to {args.target}; it passes gymnasium's check_env.\n"
          f"  import gymnasium, {package_of(Path(args.target))}\n  env = gymnasium.make({env_id!r})")


if __name__ == "__main__":
    main()
