"""Open a generated HTML report in headless Chromium and check the screenshot shows the plots."""
import importlib.util
from pathlib import Path

import pytest

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


def test_blank_page_has_no_plot_pixels(tmp_path):
    import matplotlib.image
    import numpy as np

    blank = tmp_path / "blank.png"
    matplotlib.image.imsave(blank, np.ones((50, 50, 3)))
    assert screenshot_report.plot_pixels(blank) == {"tab:blue": 0, "tab:orange": 0}
