"""`pie bench --runner sim` options: what hardware the simulator prices (`--hardware`, `--profile`).

`sim_hardware_options` turns the flags into runner options; without either it finds this
machine's saved profile of the model (profiler/saved_profiles.py, in the default profiles
folder), which probes this machine (torch). Bad input: either flag with another runner, or no
hardware source and no saved profile. Left out: the simulation (runners/sim_runner.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pie_cli.options import DEFAULT_PROFILES_DIR
from pie_core.errors import BadInput

SimHardwareOpt = Annotated[str | None, typer.Option("--hardware", help="sim: a datasheet preset to simulate (h100-pcie, h200, a100-pcie, gh200, l4).")]
SimProfileOpt = Annotated[Path | None, typer.Option("--profile", help="sim: a `pie profile` JSON to simulate (default: this machine's saved profile of the model).")]


def sim_hardware_options(runner: str, hardware: str | None, profile: Path | None, model: str, dtype: str) -> dict[str, Any]:
    """Runner options naming the simulated hardware ({} for runners other than sim)."""
    if runner != "sim":
        if hardware or profile:
            flag = "--hardware" if hardware else "--profile"
            raise BadInput(f"{flag} chooses what the simulator prices; runner '{runner}' runs on this machine",
                           f"add --runner sim, or drop {flag}")
        return {}
    if hardware or profile:
        return {key: value for key, value in (("hardware", hardware), ("profile", str(profile) if profile else None)) if value}
    from pie_cli.dtype_option import resolve_dtype_option
    from profiler.saved_profiles import saved_profile

    wanted = resolve_dtype_option(dtype, "cpu").dtype
    saved = saved_profile(DEFAULT_PROFILES_DIR, model, wanted, "cpu")
    if saved is None:
        raise BadInput(f"--runner sim needs hardware to simulate, and {DEFAULT_PROFILES_DIR} holds no profile of this "
                       f"machine for {model} ({wanted})",
                       f"pass --hardware PRESET (e.g. h100-pcie) or --profile FILE, or run `pie profile --model {model}` first")
    return {"profile": str(saved)}
