"""The notebooks run top to bottom on small artifacts made here, and their key cells hold what they show."""

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
pytestmark = pytest.mark.slow


def execute(name: str, parameters: dict, cwd: Path, probe: str) -> tuple[nbformat.NotebookNode, dict]:
    """Run `notebooks/<name>.ipynb` in `cwd` with `parameters` set after its parameters cell (as papermill
    does), then `probe`, a cell printing JSON about the notebook's objects; returns the notebook and that JSON."""
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    [index] = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in parameters.items())))
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


def test_inspect_generated_env(dream_run, tmp_path):
    notebook, seen = execute("inspect_generated_env", {"run_dir": str(dream_run)}, tmp_path, """{
        "checks": list(report.checks), "nrmse": step.nrmse.tolist(), "candidates": [c["label"] for c in candidates],
        "replays": [r.obs.shape[0] for r in replays], "frames": None if frames is None else list(frames.shape),
        "curve_keys": keys}""")
    report = json.loads((dream_run / "env" / "report.json").read_text())
    assert seen["checks"] == list(report["checks"])
    assert seen["nrmse"] == pytest.approx(report["fidelity"]["obs_nrmse"], rel=1e-5)
    assert seen["candidates"] == ["symbolic"]
    assert len(seen["replays"]) == 4 and max(seen["replays"]) <= 51
    assert seen["frames"][1:] == [400, 600, 3]
    assert seen["curve_keys"][0] == "dream/episode_return_mean"
    assert images(notebook) == 6  # one-step, open loop, reward/termination, dream, frames, curves
    assert "Sandbox report" in text(notebook) and "real return" in text(notebook)


def test_plug_in_your_trace(tmp_path):
    notebook, seen = execute("plug_in_your_trace", {"work_dir": str(tmp_path / "work")}, tmp_path, """{
        "round_trips": round_trips, "mapped": len(mapped), "session": len(session), "error": str(caught_error),
        "writers": {name: run.report.accepted for name, run in results.items()},
        "llm_candidates": len(results["llm (replayed)"].candidates)}""")
    assert seen["round_trips"] == {".jsonl": True, ".npz": True, ".csv": True, ".parquet": True, "minari": True}
    assert seen["mapped"] == seen["session"] == 1500
    assert "broken.csv:6" in seen["error"] and '"s1"' in seen["error"]
    assert seen["writers"] == {"symbolic": True, "llm (replayed)": True}
    assert seen["llm_candidates"] >= 2, "the replayed writer needed sandbox feedback before one was accepted"
    assert images(notebook) == 1


def test_consolidation(self_context_run, tmp_path):
    notebook, seen = execute("consolidation", {"run_dir": str(self_context_run)}, tmp_path, """{
        "figures": len(figures), "keys": keys, "seeds": [r["seed"] for r in opsd["runs"]]}""")
    assert seen["seeds"] == [0, 1] and seen["figures"] == 2
    assert "seed_0/opsd/opsd/divergence_raw" in seen["keys"] and "seed_0/opsd/opsd/anchor_kl" in seen["keys"]
    assert images(notebook) == 3
    assert "OPSD, self-context" in text(notebook)
