"""Concave tent fit of (pool size, throughput) readings.

The online climber's model of its curve: throughput rises while more pool buys batch
(capacity-bound) and falls once copies stall (link-bound), y = a + b*min(x - p, 0) +
c*max(x - p, 0) with b >= 0 >= c. `fit_tent` finds the least-squares tent, exactly.
Left out: choosing sizes and keeping one (planner/hill_climber.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TentFit:
    """Least-squares concave tent: throughput = apex + rise*min(x - peak, 0) + fall*max(x - peak, 0)."""
    peak: float  # pool blocks
    apex_tok_s: float
    rise: float  # tok/s per block below the peak, >= 0
    fall: float  # tok/s per block above the peak, <= 0
    sse: float
    num_points: int

    def value(self, blocks: float) -> float:
        offset = blocks - self.peak
        return self.apex_tok_s + self.rise * min(offset, 0.0) + self.fall * max(offset, 0.0)

    def describe(self) -> str:
        return f"peak at {self.peak:.0f} (rise {self.rise:.3g}/blk, fall {-self.fall:.3g}/blk)"


def fit_tent(points: list[tuple[float, float]]) -> TentFit | None:
    """Fit a concave tent to (pool blocks, throughput) readings; None when it is ill-posed.

    Ill-posed: fewer than four distinct sizes, or no concave fit with at least two distinct sizes
    on each side of the peak (the apex's own size counts on both). Readings of no throughput at
    all are left out (past the cliff they carry no slope). For a fixed peak p the tent is linear
    least squares in (a, b, c); over p between two neighbouring sizes the best fit is either the
    two separately fitted lines, where they cross inside that interval, or p at one of its ends,
    so the scan is exact: every interval's crossing and every inner size.
    """
    kept = [(float(x), float(y)) for x, y in points if y > 0]
    xs = np.array([x for x, _ in kept])
    ys = np.array([y for _, y in kept])
    sizes = np.unique(xs)
    if len(sizes) < 4:
        return None
    best: TentFit | None = None

    def consider(peak: float) -> None:
        nonlocal best
        design = np.column_stack([np.ones_like(xs), np.minimum(xs - peak, 0.0), np.maximum(xs - peak, 0.0)])
        coef, *_ = np.linalg.lstsq(design, ys, rcond=None)
        apex, rise, fall = (float(v) for v in coef)
        if rise < 0 or fall > 0 or rise - fall <= 0:
            return
        sse = float(((design @ coef - ys) ** 2).sum())
        if best is None or sse < best.sse * (1 - 1e-9) - 1e-12:
            best = TentFit(float(peak), apex, rise, fall, sse, len(xs))

    for inner in sizes[1:-1]:
        consider(float(inner))
    for split in range(2, len(sizes) - 1):  # below: sizes[:split], above: sizes[split:], two each at least
        below = xs <= sizes[split - 1]
        rise, left = np.polyfit(xs[below], ys[below], 1)
        fall, right = np.polyfit(xs[~below], ys[~below], 1)
        if rise - fall > 0:
            crossing = (right - left) / (rise - fall)
            if sizes[split - 1] < crossing < sizes[split]:
                consider(float(crossing))
    return best
