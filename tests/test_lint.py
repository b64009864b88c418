"""`ruff check` (configured in pyproject.toml) finds nothing in the packages, tests, benchmarks and scripts.

The rules are pyflakes, pycodestyle's errors and warnings, blind excepts and unused `# noqa` comments,
so the codes the code's `# noqa` comments name are checked and a stale one fails here. Left out:
formatting; nothing is reformatted.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("pie_core", "pie_cli", "profiler", "planner", "runners", "results", "tests", "benchmarks", "scripts")


def test_ruff_finds_nothing():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", *CHECKED],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"ruff check found problems (fix them; pyproject.toml [tool.ruff]):\n{done.stdout}{done.stderr}"
