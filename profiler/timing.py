"""Timing primitives: warm-up kept apart, the device synchronised around every timed sample,
raw samples kept, median and spread reported.

`time_call(fn, device=...)` runs `fn` a few times untimed (warm-up: page faults, allocator,
kernel selection), then takes `repeats` samples. Each sample times `calls_per_sample` back-to-back
calls and stores the time per call, so sub-microsecond operations are still measured above the
clock's resolution. On CUDA a sample is timed with a pair of CUDA events on the current stream
and the host waits for the end event; on the CPU it is `time.perf_counter` (CPU work is
synchronous, so nothing needs waiting for).

`time_interleaved(fns, ...)` times several functions in rounds (one sample of each per round),
so a burst of interference from other processes on a shared machine lands on every function
instead of on whichever one happened to be running; use it for grids of related measurements.

Left out on purpose: statistics beyond median and percentiles (outlier rejection hides real
interference on a shared machine; the spread shows it instead) and any knowledge of what is
being timed.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


def percentile(values: tuple[float, ...] | list[float], fraction: float) -> float:
    """Linear-interpolated percentile (fraction in [0, 1]) of a non-empty sequence."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Timing:
    """Per-call seconds of `len(samples_s)` timed samples of `calls_per_sample` calls each."""

    samples_s: tuple[float, ...]
    calls_per_sample: int = 1
    warmup_calls: int = 0

    def __post_init__(self) -> None:
        if not self.samples_s:
            raise ValueError("a Timing needs at least one sample")
        if any(s <= 0 or not math.isfinite(s) for s in self.samples_s):
            raise ValueError(f"timing samples must be positive and finite, got {self.samples_s}")
        if self.calls_per_sample < 1:
            raise ValueError(f"calls_per_sample must be >= 1, got {self.calls_per_sample}")

    @property
    def median_s(self) -> float:
        return percentile(self.samples_s, 0.5)

    @property
    def p10_s(self) -> float:
        return percentile(self.samples_s, 0.1)

    @property
    def p90_s(self) -> float:
        return percentile(self.samples_s, 0.9)

    @property
    def relative_spread(self) -> float:
        """(p90 - p10) / median: how noisy the samples were."""
        return (self.p90_s - self.p10_s) / self.median_s

    def rate(self, amount: float) -> tuple[float, float, float]:
        """(median, p10, p90) of `amount / time`; p10 of the rate comes from the p90 time."""
        return amount / self.median_s, amount / self.p90_s, amount / self.p10_s


def synchronize(device: str) -> None:
    """Wait for queued device work (a no-op on the CPU)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _cpu_sample(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def _cuda_sample(fn: Callable[[], object], calls: int) -> float:
    import torch

    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000.0 / calls


def calls_for_duration(fn: Callable[[], object], device: str, target_sample_s: float,
                       max_calls: int = 10_000) -> int:
    """How many back-to-back calls make one sample last about `target_sample_s` (after one untimed call)."""
    fn()  # the first call pays one-off costs (kernel selection, page faults) that would skew the probe
    synchronize(device)
    probe_s = (_cuda_sample if device.startswith("cuda") else _cpu_sample)(fn, 1)
    if probe_s <= 0:
        return max_calls
    return max(1, min(max_calls, int(target_sample_s / probe_s)))


def time_call(fn: Callable[[], object], device: str = "cpu", repeats: int = 7, warmup: int = 2,
              calls_per_sample: int = 1) -> Timing:
    """Warm up `warmup` calls untimed, then time `repeats` samples of `calls_per_sample` calls."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    sample = _cuda_sample if device.startswith("cuda") else _cpu_sample
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        samples.append(sample(fn, calls_per_sample))
    synchronize(device)
    return Timing(samples_s=tuple(samples), calls_per_sample=calls_per_sample, warmup_calls=warmup)


def time_interleaved(fns: list[Callable[[], object]], device: str = "cpu", repeats: list[int] | None = None,
                     warmup: int = 1, calls_per_sample: list[int] | None = None) -> list[Timing]:
    """Warm each function up, then take samples round-robin: round r times every fn with repeats > r."""
    repeats = repeats if repeats is not None else [7] * len(fns)
    calls = calls_per_sample if calls_per_sample is not None else [1] * len(fns)
    if len(repeats) != len(fns) or len(calls) != len(fns) or any(r < 1 for r in repeats) or any(c < 1 for c in calls) or warmup < 0:
        raise ValueError(f"need one repeat count >= 1 and one call count >= 1 per function and warmup >= 0, "
                         f"got {repeats}, {calls}, {warmup}")
    sample = _cuda_sample if device.startswith("cuda") else _cpu_sample
    for fn in fns:
        for _ in range(warmup):
            fn()
    synchronize(device)
    samples: list[list[float]] = [[] for _ in fns]
    for round_index in range(max(repeats, default=0)):
        for index, fn in enumerate(fns):
            if round_index < repeats[index]:
                samples[index].append(sample(fn, calls[index]))
    synchronize(device)
    return [Timing(samples_s=tuple(s), calls_per_sample=c, warmup_calls=warmup) for s, c in zip(samples, calls)]
