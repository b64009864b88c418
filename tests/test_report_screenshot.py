"""Open a generated HTML report in headless Chromium and check the screenshot shows the plots."""
import dataclasses
import importlib.util
from pathlib import Path

import pytest

from compare_synthetic import synthetic_timeline, write_run
from results.report import build_report, write_report
from results.store import ResultsStore
from test_report import write_sweep

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "screenshot_report.py"
spec = importlib.util.spec_from_file_location("screenshot_report", SCRIPT)
screenshot_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(screenshot_report)


@pytest.mark.slow
@pytest.mark.skipif(screenshot_report.find_chromium() is None, reason="chromium is not installed")
def test_report_screenshot_shows_plots(tmp_path):
    store = ResultsStore(tmp_path / "store")
    write_sweep(store)
    (page,) = write_report(build_report(store.records(), selection="label=sweep"), tmp_path / "report.html", "html")
    assert screenshot_report.main([str(page), str(tmp_path / "report.png")]) == 0
    counts = screenshot_report.plot_pixels(tmp_path / "report.png")
    assert all(count >= 500 for count in counts.values()), counts


@pytest.mark.slow
@pytest.mark.skipif(screenshot_report.find_chromium() is None, reason="chromium is not installed")
def test_report_timeline_plot_renders(tmp_path):
    """A sweep's timelines overlaid in one plot: its first run draws in tab:blue, the second in tab:orange."""
    store = ResultsStore(tmp_path / "store")
    for seed, (blocks, adaptive) in enumerate(((256, False), (512, True))):
        write_run(store, seed=seed, sweep_id="sweep-t", sweep_point={"pool_blocks": blocks}, label="t",
                  timeline=synthetic_timeline(seed, capacity=blocks, adaptive=adaptive))
    report = build_report(store.records(), selection="label=t")
    timelines = tuple(f for f in report.figures if f.name.startswith("timeline_"))
    assert len(timelines) == 1  # one sweep, one plot
    (page,) = write_report(dataclasses.replace(report, figures=timelines), tmp_path / "timeline.html", "html")
    assert "Timeline of sweep-t" in page.read_text()
    assert screenshot_report.main([str(page), str(tmp_path / "timeline.png"), "--height", "1400"]) == 0
    counts = screenshot_report.plot_pixels(tmp_path / "timeline.png")
    assert all(count >= 500 for count in counts.values()), counts


def test_blank_page_has_no_plot_pixels(tmp_path):
    import matplotlib.image
    import numpy as np

    blank = tmp_path / "blank.png"
    matplotlib.image.imsave(blank, np.ones((50, 50, 3)))
    assert screenshot_report.plot_pixels(blank) == {"tab:blue": 0, "tab:orange": 0}
