"""How numbers look in pie's tables and reports: one rule, so the CLI and the HTML report agree."""
from __future__ import annotations

import math
from typing import Any


def format_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        magnitude = abs(value)
        if magnitude == 0:
            return "0"
        if magnitude >= 100_000:
            return f"{value:,.0f}"
        if magnitude >= 100:
            return f"{value:,.1f}"
        if magnitude >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def round_up(value: float, digits: int = 3) -> str:
    """`value` rounded up to `digits` significant figures, as text: a bound to suggest that is never below it
    (0.000432 -> '0.000432', 0.1049 -> '0.105', 1234.5 -> '1240')."""
    if value <= 0 or not math.isfinite(value):
        return f"{value:g}"
    scale = 10 ** (math.floor(math.log10(value)) - digits + 1)
    return f"{math.ceil(value / scale - 1e-9) * scale:.{max(0, -math.floor(math.log10(scale)))}f}"
