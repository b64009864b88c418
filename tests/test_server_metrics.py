"""Server metrics beside client metrics: parsing Prometheus text, the server's kind and roles, windows on the
client's clock, the token cross-check, and the openai runner scraping a fake server (tests/fake_metrics_server.py),
bad metrics URLs and an exposition that turns malformed mid-run included."""
from __future__ import annotations

import socket

import pytest

from fake_metrics_server import FakeMetricsServer
from pie_core.errors import BadInput
from results.server_series import comparable_totals, describe_mismatch, find_all, find_series, server_kind, token_check
from results.timeline import timeline_windows
from runners.base import BenchRequest, RunnerSpec
from runners.client_timeline import client_windows, grid_boundaries, server_totals
from runners.openai_runner import OpenAIRunner
from runners.server_metrics import Exposition, MalformedExposition, Scrape, metrics_url, parse_exposition

VLLM_TEXT = """# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 512.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 3.0
vllm:num_requests_running{engine="1",model_name="tiny"} 2.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="tiny"} 0.25
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="tiny"} 100.0
vllm:prompt_tokens_total{engine="1",model_name="tiny"} 20.0
# HELP vllm:prompt_tokens_created Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_created gauge
vllm:prompt_tokens_created{engine="0",model_name="tiny"} 1.7e9
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="tiny"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="tiny"} 4.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="tiny"} 4.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="tiny"} 0.2
"""


def test_parse_sums_label_sets_averages_shares_and_keeps_counters_without_buckets():
    parsed = parse_exposition(VLLM_TEXT)
    assert parsed.values == {"vllm:num_requests_running": 5.0, "vllm:kv_cache_usage_perc": 0.375,
                             "vllm:prompt_tokens_total": 120.0, "vllm:time_to_first_token_seconds_count": 4.0,
                             "vllm:time_to_first_token_seconds_sum": 0.2}
    assert parsed.counters == {"vllm:prompt_tokens_total", "vllm:time_to_first_token_seconds_count",
                               "vllm:time_to_first_token_seconds_sum"}


@pytest.mark.parametrize("text", ["<html><body>Welcome</body></html>", '{"status": "ok"}', "all good", "",
                                  "# HELP x a metric with no sample\n# TYPE x gauge\n",
                                  'vllm:num_requests_running{engine="0" 3\n<<truncated'])
def test_text_that_is_not_prometheus_exposition_is_malformed(text):
    with pytest.raises(MalformedExposition):
        parse_exposition(text)


def test_kind_and_roles_come_from_the_names():
    vllm = ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
            "vllm:num_preemptions_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total"]
    pie = vllm + ["pie:pool_limit_blocks", "pie:pool_capacity_blocks", "pie:pool_blocks_used", "pie:device_blocks_used",
                  "pie:h2d_bytes_total", "pie:d2h_bytes_total", "pie:stall_seconds_total", "pie:controller_moves_total"]
    assert server_kind(vllm) == "vllm" and server_kind(pie) == "pie" and server_kind(["tgi_queue_size"]) == "other"
    assert [find_series(pie, role) for role in ("running", "waiting", "kv_cache_usage", "preemptions")] == vllm[:4]
    assert find_series(pie, "pool_limit") == "pie:pool_limit_blocks" and find_series(pie, "pool_blocks") == "pie:pool_blocks_used"
    assert find_series(pie, "pool_capacity") == "pie:pool_capacity_blocks" and find_series(pie, "stall") == "pie:stall_seconds_total"
    assert find_all(pie, "moved_bytes") == ["pie:d2h_bytes_total", "pie:h2d_bytes_total"]
    assert find_series(vllm, "pool_limit") is None and find_all(vllm, "moved_bytes") == []
    totals = {"vllm:num_preemptions_total": 3.0, "vllm:prompt_tokens_total": 9.0, "vllm:prefix_cache_hits_total": 4.0,
              "pie:h2d_bytes_total": 4096.0}
    assert comparable_totals(totals) == {"server.pie.h2d_bytes_total": 4096.0, "server.vllm.num_preemptions_total": 3.0,
                                         "server.vllm.prefix_cache_hits_total": 4.0}


def test_metrics_url_default_explicit_and_off():
    assert metrics_url("http://127.0.0.1:8000/v1/", None) == ("http://127.0.0.1:8000/metrics", False)
    assert metrics_url("http://h:1", "http://h:2/m") == ("http://h:2/m", True)
    assert metrics_url("http://h:1", "off") == (None, True)
    with pytest.raises(BadInput, match="not an http") as info:
        metrics_url("http://h:1", "h:2/metrics")
    assert "server_metrics=off" in info.value.one_line()


def _scrape(at, counter, gauge):
    return Scrape(at, Exposition({"c_total": counter, "g": gauge}, frozenset({"c_total"})))


def test_windows_end_at_scrapes_with_counter_rates_gauge_values_and_gaps():
    start = 10.0
    baseline = _scrape(10.0, 100.0, 0.0)
    scrapes = [_scrape(10.5, 150.0, 3.0), Scrape(11.0, None, "HTTP 500"), _scrape(11.5, 250.0, 1.0),
               _scrape(12.0, 40.0, 0.0)]  # the counter fell: the server restarted
    tokens = [10.1, 10.2, 10.6, 11.2, 11.3, 11.4, 11.9]
    windows = timeline_windows(client_windows(start, scrapes, tokens, [(10.1, 0.1), (10.2, 0.3), (11.2, 0.2)], baseline))
    assert [w.t_s for w in windows] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert [w.output_tok_s for w in windows] == pytest.approx([4.0, 2.0, 6.0, 2.0])
    assert [None if w.mean_ttft_ms is None else round(w.mean_ttft_ms, 6) for w in windows] == [200.0, None, 200.0, None]
    assert windows[0].server == pytest.approx({"c_total": 100.0, "g": 3.0})
    assert windows[1].server is None  # the failed scrape is a gap
    assert windows[2].server == pytest.approx({"c_total": 100.0, "g": 1.0})  # the rate spans the gap
    assert windows[3].server == {"g": 0.0}
    assert not windows[0].engine and server_totals(baseline, scrapes[:3]) == {"c_total": 150.0}
    assert server_totals(Scrape(10.0, None, "refused"), scrapes) is None


def test_grid_windows_without_scraping():
    boundaries = grid_boundaries(0.0, 1.25, 0.5)
    assert [b.at for b in boundaries] == [0.5, 1.0, 1.25] and all(b.exposition is None for b in boundaries)


def test_token_check_agrees_within_one_percent_and_flags_more():
    totals = {"vllm:prompt_tokens_total": 1000.0, "vllm:generation_tokens_total": 2005.0}
    check = token_check(totals, 1000, 2000)
    assert not check["mismatch"] and check["max_relative_difference"] == pytest.approx(0.0025)
    bad = token_check({**totals, "vllm:prompt_tokens_total": 1020.0}, 1000, 2000)
    assert bad["mismatch"] and bad["prompt"] == {"series": "vllm:prompt_tokens_total", "server": 1020.0, "client": 1000,
                                                 "relative_difference": pytest.approx(0.02)}
    assert "2.0%" in describe_mismatch(bad) and "server 1,020, client 1,000" in describe_mismatch(bad)
    assert token_check({"other_total": 5.0}, 10, 10) is None


def _requests(count=12, output_len=20):
    return [BenchRequest(f"r{i}", None, tuple(range(5, 25)), output_len, arrival_s=0.03 * i) for i in range(count)]


def _run(url, requests=None, **options):
    samples = []
    spec = RunnerSpec(model="tiny", max_concurrency=6,
                      options={"base_url": url, "scrape_interval_s": 0.1, "request_timeout_s": 30, **options})
    runner = OpenAIRunner()
    result = runner.run(runner.prepare(spec), requests or _requests(), samples.append)
    return samples, result


def test_run_keeps_the_server_series_per_window_and_the_tokens_agree():
    with FakeMetricsServer(pie_pool=True, token_gap_s=0.01) as server:
        samples, result = _run(server.url)
    assert all(s.success for s in samples) and result.config["server_kind"] == "pie"
    windows = timeline_windows(result.timeline)
    assert len(windows) >= 5 and all(w.server is not None for w in windows)
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "pie:pool_limit_blocks", "pie:pool_blocks_used",
                 "pie:h2d_bytes_total", "pie:stall_seconds_total"):
        assert all(name in w.server for w in windows[1:]), name
    assert max(w.server["vllm:num_requests_running"] for w in windows) == 4  # the fake's batch limit
    assert len({w.server["pie:pool_limit_blocks"] for w in windows}) > 1  # the pool limit moved
    assert sum(w.server["vllm:generation_tokens_total"] * w.duration_s for w in windows[1:]) == pytest.approx(
        sum(w.output_tok_s * w.duration_s for w in windows[1:]), rel=0.2)
    scraped = result.telemetry["server_metrics"]
    assert scraped["kind"] == "pie" and scraped["num_failed_scrapes"] == 0 and "warnings" not in result.telemetry
    check = scraped["token_check"]
    assert not check["mismatch"] and check["generation"]["client"] == 12 * 20 and check["prompt"]["client"] == 12 * 20
    assert check["max_relative_difference"] <= 0.01
    assert result.telemetry["server.vllm.num_preemptions_total"] == scraped["totals"]["vllm:num_preemptions_total"]


def test_a_server_that_counted_other_requests_is_a_flagged_mismatch():
    with FakeMetricsServer(extra_prompt_tokens=3) as server:
        _, result = _run(server.url)
    check = result.telemetry["server_metrics"]["token_check"]
    assert check["mismatch"] and check["prompt"]["server"] == 12 * 23
    assert any("disagree" in warning for warning in result.telemetry["warnings"])


def test_explicit_metrics_url_answering_a_web_page_is_bad_input_before_any_request():
    with FakeMetricsServer(metrics_mode="html") as server:
        with pytest.raises(BadInput, match="does not answer Prometheus text.*invalid metric name") as info:
            _run(server.url, server_metrics=server.url + "/metrics")
        with pytest.raises(BadInput):
            OpenAIRunner().prepare(RunnerSpec(model="tiny", options={"base_url": server.url,
                                                                     "server_metrics": server.url + "/metrics"}))
        assert server.num_posts == 0  # not even the warm-up was sent
    assert "server_metrics=off" in info.value.one_line()


def test_explicit_unreachable_metrics_url_is_bad_input():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/metrics"
    with FakeMetricsServer() as server:
        with pytest.raises(BadInput, match="no answer"):
            _run(server.url, server_metrics=closed)
        assert server.num_posts == 0


def test_default_metrics_url_that_does_not_answer_turns_scraping_off_with_a_note():
    with FakeMetricsServer(metrics_mode="missing") as server:
        samples, result = _run(server.url)
    assert all(s.success for s in samples)
    assert result.config["server_metrics"] == "off" and "HTTP 404" in result.config["server_metrics_note"]
    windows = timeline_windows(result.timeline)
    assert windows and all(w.server is None for w in windows)
    assert sum(w.output_tok_s * w.duration_s for w in windows) == pytest.approx(12 * 20)
    assert "warnings" not in result.telemetry and "server_metrics" in result.telemetry


def test_scraping_off_by_option_sends_no_scrape():
    with FakeMetricsServer() as server:
        _, result = _run(server.url, server_metrics="off")
        assert server.num_scrapes == 0
    assert result.config["server_metrics"] == "off" and "server_metrics_note" not in result.config


def test_exposition_turning_malformed_mid_run_is_a_warning_and_a_gap():
    with FakeMetricsServer(metrics_mode="breaks", break_from=4, break_count=3, token_gap_s=0.01) as server:
        samples, result = _run(server.url)
    assert len(samples) == 12 and all(s.success for s in samples)
    windows = timeline_windows(result.timeline)
    gaps = [w for w in windows if w.server is None]
    assert len(gaps) == 3 and windows[-1].server is not None
    scraped = result.telemetry["server_metrics"]
    assert scraped["num_failed_scrapes"] == 3 and "not Prometheus text" in scraped["first_error"]
    assert not scraped["token_check"]["mismatch"]  # the scrapes before and after the run were fine
    (warning,) = result.telemetry["warnings"]
    assert warning.startswith("server metrics: 3 of") and "gaps" in warning
