import io
import json

import matplotlib.image

from compare_synthetic import synthetic_timeline, write_run
from cli_helpers import run_pie
from results.report import build_report, render_html, write_report
from results.store import ResultsStore


def write_sweep(store, runners=("pie", "hf"), points=(0, 256, 512), repeats=2):
    seed = 0
    for runner in runners:
        for pool_blocks in points:
            for _ in range(repeats):
                seed += 1
                telemetry = {"stall_fraction": 0.01 * pool_blocks / 256, "h2d_bytes": pool_blocks * 2**20,
                             "d2h_bytes": pool_blocks * 2**19} if runner == "pie" else None
                write_run(store, seed=seed, runner=runner, label="sweep", slowdown=1 - pool_blocks / 2048,
                          sweep_id=f"sweep-{runner}", sweep_point={"pool_blocks": pool_blocks}, telemetry=telemetry,
                          num_requests=24,
                          timeline=synthetic_timeline(seed, max(pool_blocks, 1)) if runner == "pie" else None)


def test_report_draws_sweep_cdf_and_link_figures(tmp_path):
    store = ResultsStore(tmp_path)
    write_sweep(store)
    report = build_report(store.records(), selection="label=sweep")
    assert [f.name for f in report.figures] == ["sweep_pool_blocks", "latency_cdf", "pie_link", "timeline_0"]
    assert report.notes == ()  # the pie sweep's timelines in one plot; hf records none
    for figure in report.figures:
        image = matplotlib.image.imread(io.BytesIO(figure.png), format="png")
        assert image.shape[0] > 300 and image.shape[1] > 800
    page = render_html(report)
    assert page.count("src='data:image/png;base64,") == 4
    assert "http://" not in page and "https://" not in page  # self-contained
    assert list(report.runs["sweep_value"][:3]) == [0.0, 0.0, 256.0]  # hf series first, sorted by point


def test_report_without_sweep_or_telemetry_says_why(tmp_path):
    store = ResultsStore(tmp_path)
    write_run(store, seed=1, runner="hf")
    report = build_report(store.records(), selection="x")
    assert [f.name for f in report.figures] == ["latency_cdf"]
    assert any("no sweep runs" in n for n in report.notes) and any("telemetry" in n for n in report.notes)
    assert any("no run in the selection has a timeline" in n for n in report.notes)


def test_markdown_report_writes_png_files(tmp_path):
    store = ResultsStore(tmp_path / "store")
    write_sweep(store, runners=("pie",), points=(0, 512), repeats=1)
    written = write_report(build_report(store.records(), selection="s"), tmp_path / "out" / "r.md", "markdown")
    text = written[0].read_text()
    assert "![Latency distributions per runner](r_files/latency_cdf.png)" in text
    assert all(p.exists() and p.stat().st_size > 10_000 for p in written[1:]) and len(written) == 5  # page + 4 figures


def test_report_cli(tmp_path, monkeypatch, capsys):
    store = ResultsStore(tmp_path / "store")
    write_sweep(store, runners=("pie",), points=(0, 512), repeats=1)
    target = tmp_path / "report.html"
    code, out, _ = run_pie(["report", "sweep=sweep-pie", "-o", target, "--results-dir", store.root, "--json"],
                           monkeypatch, capsys)
    assert code == 0 and json.loads(out)["figures"] == ["sweep_pool_blocks", "latency_cdf", "pie_link", "timeline_0"]
    assert target.read_text().startswith("<!DOCTYPE html>")
    code, _, err = run_pie(["report", "label=missing", "--results-dir", store.root], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and "label=missing" in err
    code, _, err = run_pie(["report", "label=sweep", "--format", "pdf", "--results-dir", store.root], monkeypatch, capsys)
    assert code == 2 and "unknown --format" in err


def test_request_rate_sweep_skips_infinite_rate(tmp_path):
    store = ResultsStore(tmp_path)
    for seed, rate in enumerate((1, 2, 4, "inf")):
        write_run(store, seed=seed, runner="hf", sweep_id="rates", sweep_point={"request_rate": rate}, num_requests=12)
    report = build_report(store.records(), selection="sweep=rates")
    assert report.figures[0].name == "sweep_request_rate"
    assert report.runs["sweep_value"].isna().sum() == 1


def test_pie_runs_without_a_pool_draw_no_empty_link_figure_or_pool_panel(tmp_path):
    store = ResultsStore(tmp_path)
    no_pool = [{**w, "pool_limit_blocks": 0, "pool_blocks_used": 0, "stall_fraction": 0.0} for w in synthetic_timeline(3)]
    write_run(store, seed=3, runner="pie", telemetry={"stall_fraction": 0.0, "h2d_bytes": 0, "d2h_bytes": 0},
              timeline=no_pool)
    report = build_report(store.records(), selection="x")
    assert [f.name for f in report.figures] == ["latency_cdf", "timeline_0"]
    assert any("moved no bytes over the link" in n for n in report.notes)
    assert any("uses a CPU pool: its timeline has no pool panel" in n for n in report.notes)
    image = matplotlib.image.imread(io.BytesIO(report.figures[1].png), format="png")
    assert image.shape[1] < 1100  # two panels (about 990 px wide), not three (about 1430)
