"""Atomic writes of the versioned JSON files pie keeps (profiles, plans).

It lives here, at the start of the one-way data flow (profiler -> planner -> runners ->
results), so every later layer can use it. Reading and validating stay with each file's class.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write `data` as indented JSON via a temporary file and a rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
    return path
