"""`--dtype auto|NAME` for the commands that compute: resolve it against the device, say it once.

`auto` (the default) becomes what the resolve step decides (runners/hardware_source.py: the
device's choice, a preset's, a profile's or a plan's), said here once on stderr with the reason. A named dtype the device only emulates still
runs, with one warning that gives the measured matmul rate of each dtype; one it cannot run at
all is bad input (exit 2) naming what to use instead.
"""
from __future__ import annotations

from typing import Annotated

import typer

from pie_cli.output import Output

DtypeAutoOpt = Annotated[str, typer.Option(
    "--dtype", help="auto (bfloat16 where the device multiplies it natively, else float32 on a CPU and float16 on a "
                    "GPU), bfloat16, float16 or float32.")]


def announce_dtype(out: Output, resolution, device: str) -> None:
    """Say the choice once on stderr: auto's pick and why, or the warning for an emulated dtype.

    Commands call this once the rest of their input has been checked, so bad input stays one line.
    """
    if resolution.requested == "auto":
        out.info(resolution.message())
    elif resolution.support == "emulated":
        from pie_core.device_probe import detect_capability
        from profiler.memory import emulated_dtype_warning

        out.warn(emulated_dtype_warning(resolution.dtype, device, detect_capability(device)))
