"""Is a difference between two sets of runs larger than the noise? (numpy/scipy, torch-free)

Two tests, chosen by how much evidence each side has:

- **Run level** (`run_level_test`), when at least one side has repeated runs: Student's t-test
  on the log of the per-run values (pooled variance; a single run on one side borrows the other
  side's spread). The unit of evidence is a whole run, so the run-to-run noise of a shared
  machine (another job starting, frequency scaling, cache state) is inside the variance the
  test sees; under the null the false-positive rate is the nominal alpha. Logs make the test
  about ratios, which is what thresholds speak.
- **Request level** (`request_bootstrap_test`), when each side is one run: a cluster bootstrap
  over requests (resample whole requests, recompute the statistic, e.g. p99 of TTFT; ITL values
  travel with their request, so within-request correlation is kept). It sees only within-run
  noise: two runs of the same configuration can differ by more than it allows, so its verdicts
  are labelled as such and the comparison says the run-to-run noise was not tested.

Throughput is one number per run, so with one run per side it is not significance-tested at
all: a bootstrap over requests with a fixed run duration only measures the workload's
composition (identical in an A/A pair), which would call every timing wobble significant.

Left out: sequential testing, and corrections across the many metrics of a table (results/compare.py
applies Bonferroni across the metrics that carry rules; the threshold after the test guards the rest).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

RUN_LEVEL = "run-level t-test (log values)"
REQUEST_LEVEL = "request bootstrap (within-run noise only)"
UNTESTED = "not tested"
MAX_BINS = 2048


@dataclass(frozen=True)
class TestResult:
    """Outcome of one test: p-value, a confidence interval for the ratio after/before, and which test."""

    method: str
    p_value: float | None  # None when not tested
    ratio_low: float | None = None  # confidence interval for after / before
    ratio_high: float | None = None
    alpha: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.p_value is not None and not 0 <= self.p_value <= 1:
            raise ValueError(f"p_value must be in [0, 1], got {self.p_value}")

    @property
    def tested(self) -> bool:
        return self.p_value is not None

    @property
    def significant(self) -> bool | None:
        """True/False when tested; None when the data allowed no test."""
        return None if self.p_value is None else self.p_value < self.alpha


def untested(reason: str = UNTESTED, alpha: float = 0.05) -> TestResult:
    return TestResult(method=reason, p_value=None, alpha=alpha)


def run_level_test(before: Sequence[float], after: Sequence[float], alpha: float = 0.05) -> TestResult:
    """Student's two-sample t-test on log per-run values (pooled variance); needs 3+ runs, all > 0.

    The null hypothesis is "same configuration, same machine": both sides then come from one
    distribution, so their variances are equal and the pooled test is exact (Welch's correction
    would only cost power: with 2-3 runs per side its degrees of freedom can fall to 1).
    """
    log_before = _logs(before)
    log_after = _logs(after)
    if log_before is None or log_after is None:
        return untested("not tested (values not all positive)", alpha)
    n_before, n_after = len(log_before), len(log_after)
    if n_before + n_after < 3:
        return untested("not tested (1 run per side)", alpha)
    difference = float(log_after.mean() - log_before.mean())
    squares = float(((log_before - log_before.mean()) ** 2).sum() + ((log_after - log_after.mean()) ** 2).sum())
    dof = float(n_before + n_after - 2)
    se_squared = squares / dof * (1 / n_before + 1 / n_after)
    return _t_result(difference, se_squared, dof, alpha)


def _t_result(difference: float, se_squared: float, dof: float, alpha: float) -> TestResult:
    if se_squared <= 0 or not math.isfinite(se_squared):
        # No spread at all: identical values are no change; a shift with zero noise is a change.
        p_value = 1.0 if difference == 0 else 0.0
        ratio = math.exp(difference)
        return TestResult(RUN_LEVEL, p_value, ratio, ratio, alpha)
    se = math.sqrt(se_squared)
    t_stat = difference / se
    p_value = float(2 * stats.t.sf(abs(t_stat), dof))
    margin = float(stats.t.ppf(1 - alpha / 2, dof)) * se
    return TestResult(RUN_LEVEL, min(1.0, p_value), math.exp(difference - margin), math.exp(difference + margin), alpha)


def _logs(values: Sequence[float]) -> np.ndarray | None:
    array = np.asarray([v for v in values if v is not None], dtype=float)
    if array.size == 0 or not np.all(np.isfinite(array)) or np.any(array <= 0):
        return None
    return np.log(array)


def _percent(name: str) -> float:
    if name == "median":
        return 50.0
    if name.startswith("p"):
        return float(name[1:])
    raise ValueError(f"unknown statistic '{name}'; expected mean, median, std or pNN")


def request_bootstrap_test(before: Sequence[Sequence[float]], after: Sequence[Sequence[float]], statistic: str,
                           alpha: float = 0.05, num_resamples: int = 1000, seed: int = 0) -> TestResult:
    """Cluster bootstrap over requests: each inner sequence holds one request's values (ms).

    The p-value is twice the smaller share of resampled ratios on either side of 1, and the
    interval is the percentile interval of the resampled ratio after / before.
    """
    if num_resamples < 100:
        raise ValueError(f"num_resamples must be at least 100, got {num_resamples}")
    rng = np.random.default_rng(seed)
    before_draws = _bootstrap_draws(before, statistic, num_resamples, rng)
    after_draws = _bootstrap_draws(after, statistic, num_resamples, rng)
    if before_draws is None or after_draws is None:
        return untested("not tested (too few request samples)", alpha)
    valid = (before_draws > 0) & (after_draws > 0)
    if valid.mean() < 0.99:
        return untested("not tested (values not all positive)", alpha)
    log_ratio = np.log(after_draws[valid]) - np.log(before_draws[valid])
    share_below = float(np.mean(log_ratio <= 0))
    share_above = float(np.mean(log_ratio >= 0))
    p_value = min(1.0, 2 * min(share_below, share_above))
    low, high = np.quantile(log_ratio, [alpha / 2, 1 - alpha / 2])
    return TestResult(REQUEST_LEVEL, p_value, math.exp(low), math.exp(high), alpha)


def _resample_counts(rng: np.random.Generator, num_groups: int, num_resamples: int) -> np.ndarray:
    """How often each request is drawn in each resample (resamples x requests), one draw call."""
    picks = rng.integers(0, num_groups, size=(num_resamples, num_groups))
    flat = (picks + np.arange(num_resamples)[:, None] * num_groups).ravel()
    return np.bincount(flat, minlength=num_resamples * num_groups).reshape(num_resamples, num_groups).astype(float)


def _bootstrap_draws(groups: Sequence[Sequence[float]], statistic: str, num_resamples: int,
                     rng: np.random.Generator) -> np.ndarray | None:
    """`num_resamples` values of the statistic over requests drawn with replacement (weights, not copies)."""
    groups = [np.asarray(g, dtype=float) for g in groups if len(g) > 0]
    if len(groups) < 2:
        return None
    if statistic in ("mean", "std"):  # per-request sums suffice: no per-value weights needed
        lengths = np.array([len(g) for g in groups], dtype=float)
        sums = np.array([g.sum() for g in groups])
        squares = np.array([(g**2).sum() for g in groups])
        counts = _resample_counts(rng, len(groups), num_resamples)
        mean = (counts @ sums) / (counts @ lengths)
        if statistic == "mean":
            return mean
        return np.sqrt(np.maximum((counts @ squares) / (counts @ lengths) - mean**2, 0.0))
    # Percentiles: a histogram per request over the sorted pooled values (exact up to MAX_BINS
    # distinct values, quantile bins beyond), so a resample is `counts @ histogram`, not a copy.
    values = np.sort(np.concatenate(groups))
    num_bins = min(MAX_BINS, len(values))
    edges = values[np.linspace(0, len(values) - 1, num_bins).round().astype(int)]
    histogram = np.zeros((len(groups), num_bins))
    for index, group in enumerate(groups):
        np.add.at(histogram[index], np.minimum(np.searchsorted(edges, group, side="left"), num_bins - 1), 1.0)
    counts = _resample_counts(rng, len(groups), num_resamples)
    cumulative = np.cumsum(counts @ histogram, axis=1)
    target = cumulative[:, -1:] * (_percent(statistic) / 100.0)
    return edges[np.minimum((cumulative < target).sum(axis=1), num_bins - 1)]
