"""Options shared by several commands, declared once as `Annotated` aliases (each command sets its default).

`--dtype auto` lives in pie_cli/dtype_option.py with its resolution; what `auto` falls back to
differs by command only in where a dtype can come from (a plan, a profile, a preset), which each
command's docstring says.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from runners.hardware_source import DEFAULT_PROFILES_DIR  # noqa: F401 - declared with the decisions that use it

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout; human text goes to stderr.")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="A registry name (e.g. opt-125m, llama-3-8b; see `pie models`) or a local Hugging Face directory.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N, or auto (cuda when available).")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float16, bfloat16 or float32.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for random weights, workloads and arrivals.")]
OutputPathOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write the result file.")]
ResultsDirOpt = Annotated[Path, typer.Option("--results-dir", help="Results store directory.")]

DEFAULT_RESULTS_DIR = Path(".pie/results")
