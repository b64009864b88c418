"""Metrics against hand-computed timings (vLLM's definitions)."""
import pytest

from pie_core.errors import BadInput
from results.metrics import compute_metrics, parse_goodput, summary_rows, tpot_s
from results.record import RequestSample


def _sample(rid, prompt_len, token_times, arrival=0.0, success=True):
    """A request released at `arrival` whose tokens came out at absolute `token_times`."""
    if not success:
        return RequestSample(rid, prompt_len, 0, arrival, None, None, success=False, error="boom")
    gaps = tuple(b - a for a, b in zip(token_times, token_times[1:]))
    return RequestSample(rid, prompt_len, len(token_times), arrival, token_times[0] - arrival,
                         token_times[-1] - arrival, gaps)


@pytest.fixture
def samples():
    return [
        _sample("a", 10, [0.1, 0.2, 0.4]),  # ttft 0.1, e2el 0.4, tpot 0.15, itl 0.1, 0.2
        _sample("b", 20, [0.5, 0.6, 0.7, 0.8, 0.9], arrival=0.2),  # ttft 0.3, e2el 0.7, tpot 0.1, itl 0.1 x4
        _sample("c", 5, [1.0], arrival=0.5),  # ttft 0.5, e2el 0.5, no tpot, no itl
        _sample("d", 7, [], success=False),
    ]


def test_hand_computed(samples):
    m = compute_metrics(samples, duration_s=2.0, peak_host_memory_bytes=123)
    assert m["completed"] == 3 and m["failed"] == 1
    assert m["total_input_tokens"] == 35 and m["total_output_tokens"] == 9
    assert m["duration_s"] == 2.0
    assert m["request_throughput"] == pytest.approx(1.5)
    assert m["output_throughput"] == pytest.approx(4.5)
    assert m["total_token_throughput"] == pytest.approx(22.0)
    assert m["mean_ttft_ms"] == pytest.approx(300.0)
    assert m["median_ttft_ms"] == pytest.approx(300.0)
    assert m["p99_ttft_ms"] == pytest.approx(496.0)  # 300 + 0.98 * 200, linear interpolation
    assert m["mean_tpot_ms"] == pytest.approx(125.0)
    assert m["median_tpot_ms"] == pytest.approx(125.0)
    # ITL pooled: 0.1, 0.2, 0.1, 0.1, 0.1, 0.1 -> mean 0.11667, median 0.1, p90 0.15
    assert m["mean_itl_ms"] == pytest.approx(700 / 6)
    assert m["median_itl_ms"] == pytest.approx(100.0)
    assert m["p90_itl_ms"] == pytest.approx(150.0)
    assert m["mean_e2el_ms"] == pytest.approx(1600 / 3)
    assert m["p90_e2el_ms"] == pytest.approx(660.0)  # sorted 400, 500, 700: index 1.8 -> 500 + 0.8 * 200
    assert m["peak_host_memory_bytes"] == 123 and m["peak_device_memory_bytes"] is None
    assert "request_goodput" not in m


def test_tpot_definition(samples):
    assert tpot_s(samples[0]) == pytest.approx(0.15)
    assert tpot_s(samples[2]) is None and tpot_s(samples[3]) is None


def test_goodput(samples):
    # ttft <= 300 ms keeps a and b; tpot <= 120 ms then drops a (150 ms); c has tpot 0 but ttft 500.
    m = compute_metrics(samples, 2.0, goodput_slos_ms=parse_goodput(["ttft:300", "tpot:120"]))
    assert m["request_goodput"] == pytest.approx(0.5)
    m = compute_metrics(samples, 2.0, goodput_slos_ms=parse_goodput(["e2el:500"]))
    assert m["request_goodput"] == pytest.approx(1.0)  # a (400) and c (500)
    assert m["goodput_slos_ms"] == {"e2el": 500.0}


def test_empty_and_all_failed():
    m = compute_metrics([_sample("x", 3, [], success=False)], 1.0)
    assert m["completed"] == 0 and m["failed"] == 1 and m["mean_ttft_ms"] == 0.0 and m["output_throughput"] == 0.0


def test_parse_goodput_errors():
    assert parse_goodput(["ttft:500 tpot:50"]) == {"ttft": 500.0, "tpot": 50.0}
    for bad in (["ttft"], ["itl:5"], ["ttft:abc"], ["ttft:0"]):
        with pytest.raises(BadInput):
            parse_goodput(bad)
    with pytest.raises(BadInput):
        compute_metrics([], -1.0)
    refused = compute_metrics([], 0.0)  # every request refused at once: rates are 0, not undefined (issue 26)
    assert refused["completed"] == 0 and refused["output_throughput"] == 0.0 and refused["duration_s"] == 0.0


def test_summary_rows_cover_vllm_table(samples):
    rows = dict(summary_rows(compute_metrics(samples, 2.0, goodput_slos_ms={"ttft": 300.0})))
    assert rows["Successful requests"] == 3
    assert rows["Request goodput (req/s)"] == pytest.approx(1.0)  # a and b
    assert rows["Mean TTFT (ms)"] == pytest.approx(300.0)
    assert rows["P99 ITL (ms)"] is not None and rows["Peak device memory (MiB)"] is None
