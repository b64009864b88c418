import json
import subprocess

import pytest

from compare_synthetic import write_run
from cli_helpers import run_pie
from results.store import ResultsStore

RULES = ["--fail-on", "output_throughput:-5%", "--fail-on", "p99_ttft_ms:+10%"]


@pytest.fixture()
def store_dir(tmp_path):
    store = ResultsStore(tmp_path / "results")
    for k in range(3):
        write_run(store, seed=k, label="main")
        write_run(store, seed=10 + k, label="pr", slowdown=1.25)
        write_run(store, seed=20 + k, label="same")
    return store.root


def test_regression_exits_3_with_markdown_verdict_first(store_dir, monkeypatch, capsys):
    code, out, _ = run_pie(["compare", "label=main", "label=pr", *RULES, "--format", "markdown",
                            "--results-dir", store_dir], monkeypatch, capsys)
    assert code == 3
    first = out.splitlines()[0]
    assert first.startswith("### :x: pie compare: REGRESSION") and "output_throughput:-5%" in first
    assert "output_throughput fell" in out and "| `+` | output_throughput |" in out


def test_clean_run_exits_0_and_json_is_parseable(store_dir, monkeypatch, capsys):
    code, out, _ = run_pie(["compare", "label=main", "label=same", *RULES, "--json", "--results-dir", store_dir],
                           monkeypatch, capsys)
    assert code == 0
    payload = json.loads(out)
    assert payload["regression"] is False and payload["verdict"].startswith("OK: no rule fired")
    assert len(payload["before"]["run_ids"]) == 3
    rows = {row["metric"]: row for row in payload["rows"]}
    assert rows["output_throughput"]["p_value"] is not None and rows["failed"]["p_value"] is None


def test_table_format(store_dir, monkeypatch, capsys):
    code, out, err = run_pie(["compare", "label=main", "label=pr", "--results-dir", store_dir], monkeypatch, capsys)
    assert code == 0  # no rules: marks only
    assert "output_throughput" in out and "no rules given" in out and "run-level test" in err


def _one_line_error(code, err):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_bad_inputs_are_one_line_exit_2(store_dir, tmp_path, monkeypatch, capsys):
    common = ["--results-dir", store_dir]
    line = _one_line_error(*run_pie(["compare", tmp_path / "missing.jsonl", "label=main", *common], monkeypatch, capsys)[::2])
    assert "does not exist" in line
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text("{not json\n{}\n")
    line = _one_line_error(*run_pie(["compare", corrupt, "label=main", *common], monkeypatch, capsys)[::2])
    assert "corrupt" in line
    future = tmp_path / "future.jsonl"
    future.write_text(json.dumps({"type": "header", "schema_version": 99}) + "\n")
    line = _one_line_error(*run_pie(["compare", future, "label=main", *common], monkeypatch, capsys)[::2])
    assert "schema version 99" in line and "upgrade" in line
    line = _one_line_error(*run_pie(["compare", "label=nightly", "label=main", *common], monkeypatch, capsys)[::2])
    assert "label=nightly" in line and str(store_dir) in line and "9 record file(s) searched" in line
    line = _one_line_error(*run_pie(["compare", "label=main", "label=pr", "--fail-on", "p99_tft_ms:+10%", *common],
                                    monkeypatch, capsys)[::2])
    assert "unknown metric 'p99_tft_ms'" in line and "did you mean p99_ttft_ms" in line
    line = _one_line_error(*run_pie(["compare", "label=main", "label=pr", "--fail-on", "throughput", *common],
                                    monkeypatch, capsys)[::2])
    assert "cannot parse rule" in line
    line = _one_line_error(*run_pie(["compare", "label=main", "label=pr", "--format", "html", *common],
                                    monkeypatch, capsys)[::2])
    assert "unknown format" in line


def test_different_models_refused_unless_forced(tmp_path, monkeypatch, capsys):
    store = ResultsStore(tmp_path)
    write_run(store, seed=1, label="a")
    write_run(store, seed=2, label="b", model="opt-350m")
    args = ["compare", "label=a", "label=b", "--results-dir", tmp_path]
    line = _one_line_error(*run_pie(args, monkeypatch, capsys)[::2])
    assert "different models" in line and "--force" in line
    code, _, err = run_pie(args + ["--force"], monkeypatch, capsys)
    assert code == 0 and "warning" in err and "--force" in err


def test_console_script_end_to_end(store_dir):
    done = subprocess.run(["pie", "compare", "label=main", "label=pr", *RULES, "--results-dir", str(store_dir),
                           "--format", "markdown"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert done.stdout.startswith("### :x: pie compare: REGRESSION")
