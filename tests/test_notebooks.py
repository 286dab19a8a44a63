"""The notebooks run top to bottom as in a fresh checkout, with no run dir prepared: each makes what it needs
(under `runs/` of its working directory, empty here), and their key cells hold what they show."""

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
pytestmark = pytest.mark.slow


def execute(name: str, cwd: Path, probe: str, parameters: str = "") -> tuple[nbformat.NotebookNode, dict]:
    """Run `notebooks/<name>.ipynb` in `cwd` (with an empty `runs/`), unchanged but for `parameters`, a cell run
    after its first code cell (the user's settings), then `probe`, a cell printing JSON about the notebook's
    objects; returns the notebook and that JSON."""
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    if parameters:
        first = next(i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code")
        notebook.cells.insert(first + 1, nbformat.v4.new_code_cell(parameters))
    (cwd / "runs").mkdir()
    notebook.cells.append(nbformat.v4.new_code_cell(f"import builtins, json\nbuiltins.print(json.dumps({probe}))"))
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    [output] = [o for o in notebook.cells[-1].outputs if o.get("name") == "stdout"]
    return notebook, json.loads(output.text)


def images(notebook: nbformat.NotebookNode) -> int:
    """How many figures the notebook drew."""
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))


def text(notebook: nbformat.NotebookNode) -> str:
    return "\n".join(output.get("text", "") + output.get("data", {}).get("text/plain", "")
                     for cell in notebook.cells for output in cell.get("outputs", []))


def test_inspect_generated_env(tmp_path):
    notebook, seen = execute("inspect_generated_env", tmp_path, """{
        "run_dir": str(run.path.resolve()), "checks": list(report.checks), "nrmse": step.nrmse.tolist(), "candidates": [c["label"] for c in candidates],
        "replays": [r.obs.shape[0] for r in replays], "frames": None if frames is None else list(frames.shape),
        "curve_keys": keys}""")
    made = Path(seen["run_dir"])
    assert made.parent == (tmp_path / "runs" / "notebooks").resolve(), "with no run yet, the notebook makes one under runs/"
    report = json.loads((made / "env" / "report.json").read_text())
    assert seen["checks"] == list(report["checks"])
    assert seen["nrmse"] == pytest.approx(report["fidelity"]["obs_nrmse"], rel=1e-5)
    assert seen["candidates"] == ["symbolic"]
    assert len(seen["replays"]) == 4 and max(seen["replays"]) <= 51
    assert seen["frames"][1:] == [400, 600, 3]
    assert seen["curve_keys"][0] == "dream/episode_return_mean"
    assert images(notebook) == 6  # one-step, open loop, reward/termination, dream, frames, curves
    assert "Sandbox report" in text(notebook) and "real return" in text(notebook)


def test_plug_in_your_trace(tmp_path):
    notebook, seen = execute("plug_in_your_trace", tmp_path, """{
        "round_trips": round_trips, "mapped": len(mapped), "session": len(session), "error": str(caught_error),
        "writers": {name: run.report.accepted for name, run in results.items()},
        "llm_candidates": len(results["llm (replayed)"].candidates)}""")
    assert seen["round_trips"] == {".jsonl": True, ".npz": True, ".csv": True, ".parquet": True, "minari": True}
    assert seen["mapped"] == seen["session"] == 1500
    assert "broken.csv:6" in seen["error"] and '"s1"' in seen["error"]
    assert seen["writers"] == {"symbolic": True, "llm (replayed)": True}
    assert seen["llm_candidates"] >= 2, "the replayed writer needed sandbox feedback before one was accepted"
    assert images(notebook) == 1


def test_plug_in_your_trace_reads_the_spaces_of_a_users_own_trace(tmp_path):
    """A Pendulum session (Box actions, three obs dims) of the user's own: the CSV cells map its spaces from the
    trace, and the writers are the ones that mean something for it (no CartPole completions)."""
    import gymnasium

    from dreamer.traces import collect_trace, save_trace

    save_trace(collect_trace(gymnasium.make("Pendulum-v1"), 1000, seed=0), tmp_path / "pendulum.jsonl")
    notebook, seen = execute("plug_in_your_trace", tmp_path, """{
        "round_trips": round_trips, "mapped": len(mapped), "session": len(session), "error": str(caught_error),
        "action_space": str(mapped.action_space), "writers": {name: run.report.accepted for name, run in results.items()}}""",
                             parameters=f"trace_path = {str(tmp_path / 'pendulum.jsonl')!r}")
    assert seen["round_trips"] == {".jsonl": True, ".npz": True, ".csv": True, ".parquet": True, "minari": True}
    assert seen["mapped"] == seen["session"] == 1000
    assert seen["action_space"] == "Box(-2.0, 2.0, (1,), float32)"
    assert "broken.csv:6" in seen["error"] and '"s1"' in seen["error"]
    assert seen["writers"] == {"symbolic": True}


def test_consolidation(tmp_path):
    notebook, seen = execute("consolidation", tmp_path, """{
        "run_dir": str(run.path.resolve()), "pipeline": run.config["pipeline"], "figures": len(figures), "keys": keys, "seeds": [r["seed"] for r in opsd["runs"]]}""")
    assert Path(seen["run_dir"]).parent == (tmp_path / "runs" / "notebooks").resolve() and seen["pipeline"] == "opsd_self_context"
    assert seen["seeds"] == [0, 1] and seen["figures"] == 2
    assert "seed_0/opsd/opsd/divergence_raw" in seen["keys"] and "seed_0/opsd/opsd/anchor_kl" in seen["keys"]
    assert images(notebook) == 3
    assert "OPSD, self-context" in text(notebook)
