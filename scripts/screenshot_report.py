"""Screenshot a `pie report` HTML page in headless Chromium and check that its plots rendered.

Usage: python scripts/screenshot_report.py report.html report.png [--width 1300 --height 2600]
       python scripts/screenshot_report.py --quick page.html page.png   # writes a one-plot page first, then checks it

Exits 0 and prints what it found when the screenshot shows the plots (enough coloured plot
pixels, e.g. matplotlib's tab:blue / tab:orange lines), 1 otherwise, 2 without Chromium.
Chromium runs with a throwaway profile, no network features and no sandbox (it runs as root in CI).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PLOT_COLOURS = {"tab:blue": (31, 119, 180), "tab:orange": (255, 127, 14)}


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def screenshot(html_path: Path, png_path: Path, width: int = 1300, height: int = 2600, timeout_s: float = 120) -> Path:
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("no Chromium found (apt-get install -y chromium)")
    png_path = Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pie-chromium-") as profile:
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                   "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                   f"--user-data-dir={profile}", f"--window-size={width},{height}", f"--screenshot={png_path}",
                   Path(html_path).resolve().as_uri()]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if not png_path.exists():
        raise RuntimeError(f"chromium wrote no screenshot (exit {done.returncode}): {done.stderr.strip()[-400:]}")
    return png_path


def write_sample_page(html_path: Path) -> Path:
    """A page with one small matplotlib plot, a line in each plot colour, embedded as a PNG data URI."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4, 3), dpi=100)
    for offset, colour in enumerate(PLOT_COLOURS):
        axis.plot([0, 1], [offset, offset + 1], color=colour, linewidth=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    html_path = Path(html_path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text("<!doctype html><html><body><img alt=\"plot\" src=\"data:image/png;base64,"
                         + base64.b64encode(buffer.getvalue()).decode("ascii") + "\"></body></html>\n", encoding="utf-8")
    return html_path


def plot_pixels(png_path: Path, tolerance: int = 40) -> dict[str, int]:
    """How many pixels of the screenshot are close to each plot colour."""
    import matplotlib.image

    image = matplotlib.image.imread(str(png_path))
    pixels = (image[..., :3] * 255 if image.dtype != np.uint8 else image[..., :3]).astype(int)
    return {name: int((np.abs(pixels - np.array(rgb)).max(axis=-1) <= tolerance).sum())
            for name, rgb in PLOT_COLOURS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--width", type=int, default=1300)
    parser.add_argument("--height", type=int, default=2600)
    parser.add_argument("--min-pixels", type=int, default=500, help="plot-coloured pixels required per colour")
    parser.add_argument("--quick", action="store_true",
                        help="write a one-plot page to HTML first (overwriting it) and check it in a 500x400 window")
    args = parser.parse_args(argv)
    if find_chromium() is None:
        print("error: no Chromium found (hint: apt-get install -y chromium)", file=sys.stderr)
        return 2
    if args.quick:
        write_sample_page(args.html)
        args.width, args.height = 500, 400
    path = screenshot(args.html, args.png, args.width, args.height)
    counts = plot_pixels(path)
    ok = all(count >= args.min_pixels for count in counts.values())
    print(f"{path}: plot-coloured pixels {counts} -> {'plots rendered' if ok else 'plots missing'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
