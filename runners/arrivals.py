"""Request arrival times: all at once, Poisson at a rate, or gamma with a burstiness (seeded, torch-free).

Follows vLLM's benchmark: gaps between requests are gamma-distributed with shape =
burstiness and scale = 1 / (rate * burstiness), so the mean rate is `request_rate` and the
coefficient of variation of the gaps is 1 / sqrt(burstiness); burstiness 1 is a Poisson
process. The first request is released at t = 0. An infinite rate releases everything at 0.

Left out: concurrency limits (a runner honours `max_concurrency` when it releases requests).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pie_core.errors import BadInput


@dataclass(frozen=True)
class ArrivalSpec:
    request_rate: float = math.inf  # requests per second; inf = all at once
    burstiness: float = 1.0  # gamma shape; 1 = Poisson, < 1 burstier, > 1 more regular
    seed: int = 0

    def __post_init__(self) -> None:
        if math.isnan(self.request_rate) or self.request_rate <= 0:
            raise BadInput(f"request rate must be > 0, got {self.request_rate}",
                           "give requests per second, or leave it out (inf) to send everything at once")
        if not math.isfinite(self.burstiness) or self.burstiness <= 0:
            raise BadInput(f"burstiness must be a positive number, got {self.burstiness}",
                           "1 is a Poisson process; smaller is burstier")

    @property
    def kind(self) -> str:
        if math.isinf(self.request_rate):
            return "all-at-once"
        return "poisson" if self.burstiness == 1.0 else "gamma"

    def describe(self) -> dict[str, Any]:
        return {"arrivals": self.kind, "request_rate": None if math.isinf(self.request_rate) else self.request_rate,
                "burstiness": self.burstiness, "arrival_seed": self.seed}


def inter_arrival_gaps_s(spec: ArrivalSpec, count: int) -> np.ndarray:
    """`count` gaps (seconds) drawn from the spec's gamma distribution."""
    if math.isinf(spec.request_rate):
        return np.zeros(count)
    rng = np.random.default_rng(spec.seed)
    scale = 1.0 / (spec.request_rate * spec.burstiness)
    return rng.gamma(shape=spec.burstiness, scale=scale, size=count)


def arrival_times_s(spec: ArrivalSpec, count: int) -> list[float]:
    """Release times for `count` requests: 0 for the first, then cumulative gaps."""
    if count <= 0:
        return []
    gaps = inter_arrival_gaps_s(spec, count - 1)
    return [0.0] + np.cumsum(gaps).tolist()


def assign_arrivals(requests: Sequence[Any], spec: ArrivalSpec) -> list[Any]:
    """Copies of frozen requests (anything with an `arrival_s` field) with release times set."""
    times = arrival_times_s(spec, len(requests))
    return [dataclasses.replace(request, arrival_s=float(t)) for request, t in zip(requests, times)]
