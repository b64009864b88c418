"""The layer contracts (pyproject.toml [tool.importlinter]) hold, and a wrong-way import breaks them.

pie_core <- runners.engine <- profiler / planner / results <- runners <- pie_cli; policy modules
import no torch; nothing imports pie_cli but pie_cli; no cycles inside a package. import-linter
reads the imports statically (grimp), so this runs in a second and imports nothing heavy.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")
REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pie_core", "pie_cli", "profiler", "planner", "runners", "results")


def lint(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` over the packages under `root` (its pyproject.toml), importing them from there."""
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code, "--config", str(root / "pyproject.toml"), "--no-cache"],
                          cwd=root, capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(root), "PATH": ""})


def test_the_layer_contracts_hold():
    result = lint(REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, wrong_import, contract", [
    ("runners/engine/sampler.py", "import planner.plan", "the engine stands on pie_core alone"),
    ("pie_core/shapes.py", "import profiler.hardware_profile", "pie_core is the ground: it imports nothing else of the project"),
    ("results/metrics.py", "import pie_cli.output", "nothing imports the CLI but the CLI"),
    ("planner/cost_model.py", "import torch", "policy imports no torch"),
    # Modules the contracts never listed by name: the layers' wildcards cover them.
    ("planner/lp.py", "import runners.timeline", "profiler, planner and results stand below the runners and the CLI"),
    ("profiler/fit.py", "import runners.sim_calibration", "profiler, planner and results stand below the runners and the CLI"),
    ("runners/engine/scheduler.py", "import runners.request_loop", "the engine stands on pie_core alone"),
])
def test_a_wrong_way_import_breaks_a_contract(tmp_path, module, wrong_import, contract):
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{wrong_import}  # added by the test\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    assert f"{contract} BROKEN" in " ".join(result.stdout.split()), result.stdout[-3000:]
