"""Byte sizes: parse '64KiB' / '1GiB' / '100GB', format them back, and read host memory (torch-free;
a device's free memory is `pie_core.device_probe.free_device_bytes`).

Free memory is read before anything is allocated, so a request that cannot fit fails with a
one-line `BadInput` that says how much is free instead of an out-of-memory crash halfway
through a profile. Left out: any accounting of other processes' future allocations (a
shared machine can still run out later; the profiler only claims up to half of what is free).
"""
from __future__ import annotations

import os
import re

from pie_core.errors import BadInput

KIB = 1024
MIB = 1024**2
GIB = 1024**3
_UNITS = {"b": 1, "k": 1000, "kb": 1000, "kib": KIB, "m": 1000**2, "mb": 1000**2, "mib": MIB,
          "g": 1000**3, "gb": 1000**3, "gib": GIB, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}
_SIZE_PATTERN = re.compile(r"^\s*(-?[0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str, option: str = "size", allow_zero: bool = False) -> int:
    """'64KiB' -> 65536, '1.5GB' -> 1500000000, '4096B' -> 4096; BadInput otherwise.

    The one size parser of every command, with one rule for a bare number: it is refused, since
    bytes and GiB are both plausible readings of '70' (`option` names the flag in the message).
    A size must be positive, or with `allow_zero` may be '0GB' (a budget of nothing: no pool).
    """
    match = _SIZE_PATTERN.match(str(text))
    if match and not match.group(2):
        raise BadInput(f"{option} '{text}' has no unit", f"write {match.group(1)}GiB, {match.group(1)}GB or {match.group(1)}B")
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise BadInput(f"cannot read {option} '{text}'", "write a number with a unit, e.g. 64KiB, 256MiB, 1GiB, 80GB")
    size = int(float(match.group(1)) * _UNITS[unit])
    if allow_zero and size == 0 and float(match.group(1)) == 0:
        return 0
    if size <= 0:
        raise BadInput(f"{option} must be {'0 or more' if allow_zero else 'positive'}, got '{text}'",
                       f"give a size such as {option} 16GiB" + (", or 0GB for none" if allow_zero else ""))
    return size


def format_bytes(size: float) -> str:
    """Binary units, three significant figures: 65536 -> '64 KiB', 1.5 * 2**30 -> '1.5 GiB'."""
    for unit, scale in (("TiB", 1024**4), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if abs(size) >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{int(size)} B"


def free_host_bytes() -> int:
    """Memory the kernel says is available to new allocations (MemAvailable), in bytes."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * KIB
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def total_host_bytes() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
