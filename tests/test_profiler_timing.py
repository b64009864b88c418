"""Timing primitives and byte sizes: percentiles, validation, sample accounting, interleaving."""
import time

import pytest

from pie_core.errors import BadInput
from pie_core.sizes import GIB, KIB, MIB, format_bytes, free_host_bytes, parse_size
from profiler.timing import Timing, calls_for_duration, percentile, time_call, time_interleaved


def test_percentile_interpolates():
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0.0) == 1.0
    assert percentile(values, 1.0) == 4.0
    assert percentile(values, 0.5) == pytest.approx(2.5)
    assert percentile([7.0], 0.9) == 7.0
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_timing_statistics_and_rate():
    timing = Timing(samples_s=(0.1, 0.2, 0.3, 0.4, 0.5))
    assert timing.median_s == pytest.approx(0.3)
    assert timing.p10_s == pytest.approx(0.14)
    assert timing.p90_s == pytest.approx(0.46)
    median, low, high = timing.rate(3.0)
    assert median == pytest.approx(10.0) and low < median < high
    assert timing.relative_spread == pytest.approx((0.46 - 0.14) / 0.3)


@pytest.mark.parametrize("samples", [(), (0.0,), (-1.0,), (float("nan"),)])
def test_timing_rejects_bad_samples(samples):
    with pytest.raises(ValueError):
        Timing(samples_s=samples)


def test_time_call_counts_warmup_and_samples_apart():
    calls = []
    timing = time_call(lambda: calls.append(1), repeats=5, warmup=3, calls_per_sample=4)
    assert len(calls) == 3 + 5 * 4
    assert len(timing.samples_s) == 5 and timing.calls_per_sample == 4 and timing.warmup_calls == 3


def test_time_call_measures_a_known_duration():
    timing = time_call(lambda: time.sleep(0.01), repeats=3, warmup=0)
    assert 0.009 < timing.median_s < 0.05  # sleep never returns early; generous upper bound for a busy machine


def test_calls_for_duration_batches_fast_calls():
    # A no-op probe takes microseconds; a 10 s target keeps the cap binding even if the probe is
    # descheduled for a few milliseconds on a busy machine (a 1 ms target once gave 449 calls).
    assert calls_for_duration(lambda: None, "cpu", target_sample_s=10.0, max_calls=500) == 500
    assert calls_for_duration(lambda: time.sleep(0.01), "cpu", target_sample_s=0.001) == 1


def test_time_interleaved_runs_in_rounds():
    order = []
    timings = time_interleaved([lambda: order.append("a"), lambda: order.append("b")], repeats=[3, 1], warmup=1)
    assert order == ["a", "b", "a", "b", "a", "a"]  # warm-up a, b; round 0: a, b; rounds 1-2: a only
    assert [len(t.samples_s) for t in timings] == [3, 1]
    with pytest.raises(ValueError):
        time_interleaved([lambda: None], repeats=[0])
    with pytest.raises(ValueError):
        time_interleaved([lambda: None], repeats=[1], calls_per_sample=[0])


def test_time_interleaved_batches_calls_per_sample():
    counts = [0, 0]

    def bump(index):
        counts[index] += 1

    timings = time_interleaved([lambda: bump(0), lambda: bump(1)], repeats=[2, 3], warmup=0, calls_per_sample=[5, 1])
    assert counts == [10, 3]
    assert [t.calls_per_sample for t in timings] == [5, 1]


@pytest.mark.parametrize("text, expected", [("64KiB", 64 * KIB), ("256 MiB", 256 * MIB), ("1GiB", GIB),
                                            ("1.5GB", 1_500_000_000), ("4096B", 4096), ("2k", 2000)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text, message", [("", "cannot read"), ("abc", "cannot read"), ("10 parsecs", "cannot read"),
                                           ("-1GiB", "must be positive"), ("0B", "must be positive"),
                                           ("4096", "has no unit"), ("70", "has no unit")])
def test_parse_size_rejects(text, message):
    """One rule for every command: a bare number is refused (bytes or GiB?), with both spellings in the hint."""
    with pytest.raises(BadInput, match=message) as error:
        parse_size(text, "--gpu-memory")
    if message == "has no unit":
        assert f"write {text}GiB, {text}GB or {text}B" in error.value.one_line()


def test_format_bytes_and_free_memory():
    assert format_bytes(64 * KIB) == "64 KiB"
    assert format_bytes(1.5 * GIB) == "1.5 GiB"
    assert format_bytes(100) == "100 B"
    assert 0 < free_host_bytes()
