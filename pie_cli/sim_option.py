"""`pie bench --runner sim` flags: what hardware the simulator prices (`--hardware`, `--profile`).

Declared here, decided in the resolve step (runners/hardware_source.py: either flag with another
runner, both given, or neither and no saved profile of this machine, are bad input there).
Left out: the simulation (runners/sim_runner.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


SimHardwareOpt = Annotated[str | None, typer.Option("--hardware", help="sim: a datasheet preset to simulate (h100-pcie, h200, a100-pcie, gh200, l4).")]
SimProfileOpt = Annotated[Path | None, typer.Option("--profile", help="sim: a `pie profile` JSON to simulate (default: this machine's saved profile of the model).")]
