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
