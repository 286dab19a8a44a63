"""`python -m dreamer.export` makes an accepted sim an importable Gymnasium module; `envs/` registers what it ships."""

import json
import shutil
import subprocess
import sys
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from conftest import ROOT, run_module


def test_the_shipped_envs_register_and_pass_check_env():
    import envs  # noqa: F401  (registers)

    env = gymnasium.make("dreamer/HiddenGoal-v0", goal=(0.0, 0.6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)


def test_an_exported_sim_imports_as_a_gymnasium_env_like_the_run_sim(dream_run, tmp_path):
    done = run_module("dreamer.export", str(dream_run), str(tmp_path / "cartpole_dream"))
    assert done.returncode == 0, done.stderr
    assert "passes gymnasium's check_env" in done.stdout and "dreamer/cartpole_dream-v0" in done.stdout
    exported = tmp_path / "cartpole_dream"
    assert (exported / "sim.py").read_text() == (dream_run / "env" / "dream.py").read_text()
    assert json.loads((exported / "report.json").read_text())["accepted"] is True
    # a fresh interpreter, as a user's: import the package, make the env, step it, check it
    script = """
import json, gymnasium, cartpole_dream
from gymnasium.utils.env_checker import check_env
env = gymnasium.make("dreamer/cartpole_dream-v0")
check_env(env.unwrapped, skip_render_check=True)
obs, _ = env.reset(seed=3)
vector = gymnasium.make_vec("dreamer/cartpole_dream-v0", num_envs=4)
batch, _ = vector.reset(seed=3)
print(json.dumps([type(env.unwrapped).__name__, type(vector).__name__, list(batch.shape), obs.tolist()]))
"""
    ran = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    kind, vector_kind, shape, obs = json.loads(ran.stdout)
    assert (kind, vector_kind, shape) == ("SimEnv", "SimVectorEnv", [4, 4])
    assert np.all(np.abs(obs) <= 0.05), "the sim starts where CartPole does, within ±0.05"


def test_export_refuses_a_rejected_sim_an_existing_folder_and_a_bad_name(dream_run, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("kept")
    done = run_module("dreamer.export", str(dream_run), str(tmp_path / "taken"))
    assert done.returncode == 2 and "exists: choose a new folder" in done.stderr
    assert (tmp_path / "taken" / "mine.txt").read_text() == "kept"

    done = run_module("dreamer.export", str(dream_run), str(tmp_path / "cart-pole"))
    assert done.returncode == 2 and "'cart-pole', which is not an identifier" in done.stderr

    rejected = tmp_path / "rejected_run"
    shutil.copytree(dream_run, rejected)
    report = json.loads((rejected / "env" / "report.json").read_text())
    report.update(accepted=False, reasons=["obs NRMSE 0.9 > 0.1"])
    (rejected / "env" / "report.json").write_text(json.dumps(report))
    done = run_module("dreamer.export", str(rejected), str(tmp_path / "never"))
    assert done.returncode == 2 and "the sandbox rejected this sim" in done.stderr and "obs NRMSE 0.9" in done.stderr
    assert not (tmp_path / "never").exists()
    assert not any(path.name.startswith(".never") for path in tmp_path.iterdir()), "no staging folder is left"


@pytest.mark.parametrize("folder", sorted(p.name for p in (ROOT / "envs").iterdir() if (p / "sim.py").is_file()))
def test_every_export_in_envs_passes_check_env(folder):
    import envs  # noqa: F401

    env = gymnasium.make(f"dreamer/{folder}-v0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env.unwrapped, skip_render_check=True)
