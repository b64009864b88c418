"""Arrival processes: rates, burstiness, seeding, all-at-once, bad input."""
import math

import numpy as np
import pytest

from pie_core.errors import BadInput
from runners.arrivals import ArrivalSpec, arrival_times_s, assign_arrivals, inter_arrival_gaps_s
from runners.base import BenchRequest


def test_poisson_mean_rate_within_5_percent():
    gaps = inter_arrival_gaps_s(ArrivalSpec(request_rate=4.0, seed=1), 10_000)
    rate = 1.0 / gaps.mean()
    assert abs(rate - 4.0) / 4.0 < 0.05
    # Poisson: exponential gaps, coefficient of variation 1
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.05


@pytest.mark.parametrize("burstiness", [0.25, 0.5, 2.0, 4.0])
def test_gamma_coefficient_of_variation_matches_burstiness(burstiness):
    gaps = inter_arrival_gaps_s(ArrivalSpec(request_rate=10.0, burstiness=burstiness, seed=2), 10_000)
    cv = gaps.std() / gaps.mean()
    assert abs(cv - 1 / math.sqrt(burstiness)) / (1 / math.sqrt(burstiness)) < 0.05
    assert abs(1.0 / gaps.mean() - 10.0) / 10.0 < 0.05


def test_seeded_and_monotonic():
    spec = ArrivalSpec(request_rate=2.0, seed=7)
    first, second = arrival_times_s(spec, 50), arrival_times_s(spec, 50)
    assert first == second and first[0] == 0.0
    assert all(b >= a for a, b in zip(first, first[1:]))
    assert arrival_times_s(ArrivalSpec(request_rate=2.0, seed=8), 50) != first


def test_all_at_once():
    spec = ArrivalSpec()
    assert spec.kind == "all-at-once" and spec.describe()["request_rate"] is None
    assert arrival_times_s(spec, 5) == [0.0] * 5
    assert arrival_times_s(spec, 0) == []


def test_assign_arrivals_copies_frozen_requests():
    requests = [BenchRequest(str(i), None, (1, 2), 3) for i in range(4)]
    timed = assign_arrivals(requests, ArrivalSpec(request_rate=1.0, seed=0))
    assert [r.arrival_s for r in requests] == [0.0] * 4
    assert timed[0].arrival_s == 0.0 and timed[-1].arrival_s > 0
    assert np.all(np.diff([r.arrival_s for r in timed]) >= 0)


@pytest.mark.parametrize("rate,burstiness", [(0.0, 1.0), (-1.0, 1.0), (float("nan"), 1.0), (1.0, 0.0), (1.0, -2.0)])
def test_bad_input(rate, burstiness):
    with pytest.raises(BadInput):
        ArrivalSpec(request_rate=rate, burstiness=burstiness)
