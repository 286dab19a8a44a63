"""The house rules of the package layout: data flows one way, and the sandbox worker stays lean."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dreamer"
LIBRARIES = ("rl", "opsd", "sandbox", "sim", "writers", "traces")
APPLICATION = ("dreamer.pipelines", "dreamer.loggers", "dreamer.resume", "dreamer.train", "dreamer.write")


def imported_modules(path: Path) -> set[str]:
    """Every `dreamer...` module a file imports, wherever in the file (lazy imports count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("dreamer")}


@pytest.mark.parametrize("library", LIBRARIES)
def test_a_library_imports_no_pipeline_and_no_logger(library):
    offending = {f"{path.relative_to(PACKAGE.parent)} imports {name}"
                 for path in (PACKAGE / library).rglob("*.py") for name in imported_modules(path)
                 if any(name == home or name.startswith(home + ".") for home in APPLICATION)}
    assert not offending


def test_the_sandbox_worker_loads_only_what_a_sim_needs():
    probe = "import sys, dreamer.sandbox.worker; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    loaded = set(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split())
    assert not loaded & {"hydra", "omegaconf", "pyarrow", "minari", "pandas", "wandb", "transformers", "pysindy", "rich"}
    assert {"torch", "numpy", "gymnasium"} <= loaded
