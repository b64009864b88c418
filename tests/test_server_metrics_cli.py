"""Server metrics through the CLI: `pie bench --runner openai` against a fake server (tests/fake_metrics_server.py),
then `pie show --timeline`, `pie report` and `pie compare` on what it recorded; bad metrics URLs exit 2 before a record."""
from __future__ import annotations

import json

from cli_helpers import run_pie
from fake_metrics_server import FakeMetricsServer


def _bench(url, tmp_path, monkeypatch, capsys, *options, label="a"):
    args = ["bench", "--model", "opt-125m", "--workload", "fixed", "--input-len", "16", "--output-len", "12", "-n", "10",
            "--request-rate", "40", "--runner", "openai", "-O", f"base_url={url}", "-O", "model_name=tiny",
            "-O", "scrape_interval_s=0.1", "--results-dir", tmp_path, "--label", label, "--json"]
    for option in options:
        args += ["-O", option]
    return run_pie(args, monkeypatch, capsys)


def test_bench_show_report_compare_carry_the_server_series(tmp_path, monkeypatch, capsys):
    with FakeMetricsServer(pie_pool=True, token_gap_s=0.01) as server:
        runs = [_bench(server.url, tmp_path, monkeypatch, capsys, label=label) for label in ("a", "b")]
    for code, out, err in runs:
        assert code == 0, err
        payload = json.loads(out)
        assert payload["telemetry"]["server_metrics"]["token_check"]["mismatch"] is False
        assert "Server metrics" not in out  # the table goes to stderr with --json
    run_id = json.loads(runs[0][1])["run_id"]

    code, out, err = run_pie(["show", run_id, "--timeline", "--results-dir", tmp_path], monkeypatch, capsys)
    assert code == 0, err
    for heading in ("output tok/s", "mean TTFT", "srv running", "srv waiting", "srv KV use", "srv gen tok/s", "srv pool limit"):
        assert heading in out, heading
    assert "server token check" in out and "agrees" in out

    code, out, err = run_pie(["report", "label=a", "--results-dir", tmp_path, "-o", tmp_path / "out" / "report.html", "--json"],
                             monkeypatch, capsys)
    assert code == 0, err
    assert f"server_{run_id}" in json.loads(out)["figures"]
    page = (tmp_path / "out" / "report.html").read_text()  # a report is never written into the results directory
    assert "Token cross-check: agrees" in page and "server kind pie" in page and "Left out" not in page

    code, out, err = run_pie(["compare", "label=a", "label=b", "--results-dir", tmp_path, "--json"], monkeypatch, capsys)
    assert code == 0, err
    metrics = {row["metric"]: row for row in json.loads(out)["rows"]}
    assert metrics["server.vllm.num_preemptions_total"]["direction"] == -1
    assert metrics["server.pie.h2d_bytes_total"]["before"] > 0 and metrics["server.pie.h2d_bytes_total"]["direction"] == -1


def test_explicit_metrics_url_that_is_not_prometheus_exits_2_before_a_record(tmp_path, monkeypatch, capsys):
    with FakeMetricsServer(metrics_mode="html") as server:
        code, out, err = _bench(server.url, tmp_path, monkeypatch, capsys, f"server_metrics={server.url}/metrics")
        assert server.num_posts == 0
    assert code == 2 and json.loads(out)["exit_code"] == 2  # --json: the error as one JSON object
    assert len(err.strip().splitlines()) == 1 and "does not answer Prometheus text" in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.jsonl"))


def test_default_metrics_url_that_does_not_answer_is_one_info_line(tmp_path, monkeypatch, capsys):
    with FakeMetricsServer(metrics_mode="missing") as server:
        code, out, err = _bench(server.url, tmp_path, monkeypatch, capsys)
    assert code == 0, err
    assert sum("server metrics off" in line for line in err.splitlines()) == 1
    assert json.loads(out)["summary"]["completed"] == 10

