"""Matplotlib figures for `pie report`, each returned as PNG bytes (Agg backend, no display).

- `sweep_figure`: output throughput and TPOT against a swept setting (pool size, request rate),
  one line per series, mean of repeated runs with min-max bars;
- `latency_cdf_figure`: TTFT, TPOT and E2EL distributions as CDFs, one line per series;
- `telemetry_figure`: bytes moved over the host link and stall fraction of pie runs;
- `timeline_figure`: pool limit and pooled blocks (only when a run has a pool), running requests,
  and output throughput against time, one line per run (the runs of a sweep overlaid), controller
  moves marked;
- `panels_figure`: a row of time panels given as lines (the client's and the server's series of an
  openai run, results/report.py chooses them); a NaN is a gap in a line.

Every axis carries its unit, every line a legend entry, and layout is constrained so text does
not overlap. Left out: choosing what to plot (results/report.py) and interactivity.
"""
from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

from pie_core.sizes import MIB

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import ticker

AXIS_LABELS = {"pool_blocks": "CPU pool size (blocks)", "request_rate": "request rate (requests/s)",
               "max_concurrency": "max concurrency (requests)", "num_prompts": "prompts"}
MARKERS = "osD^v<>ph*"


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def _legend(axis: plt.Axes, count: int) -> None:
    if count:
        axis.legend(fontsize=8, frameon=False, loc="best")


def sweep_figure(runs: pd.DataFrame, parameter: str) -> bytes:
    """`runs` has columns series, sweep_value, output_throughput, mean_tpot_ms (one row per run)."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    panels = (("output_throughput", "output throughput (tokens/s)", "Throughput"),
              ("mean_tpot_ms", "mean TPOT (ms/token)", "Time per output token"))
    series_names = sorted(runs["series"].unique())
    for axis, (metric, label, title) in zip(axes, panels):
        drawn = 0
        for index, name in enumerate(series_names):
            points = runs[(runs["series"] == name) & runs[metric].notna()]
            if points.empty:
                continue
            grouped = points.groupby("sweep_value")[metric].agg(["mean", "min", "max"]).sort_index()
            errors = np.vstack([grouped["mean"] - grouped["min"], grouped["max"] - grouped["mean"]])
            axis.errorbar(grouped.index, grouped["mean"], yerr=errors, marker=MARKERS[index % len(MARKERS)],
                          capsize=3, linewidth=1.5, markersize=5, label=name)
            drawn += 1
        axis.set_xlabel(AXIS_LABELS.get(parameter, parameter))
        axis.set_ylabel(label)
        axis.set_title(f"{title} vs {AXIS_LABELS.get(parameter, parameter).split(' (')[0]}", fontsize=10)
        axis.grid(alpha=0.3)
        axis.set_ylim(bottom=0)
        _legend(axis, drawn)
    return _png(figure)


def _cdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ordered = np.sort(values)
    return ordered, np.arange(1, len(ordered) + 1) / len(ordered)


def _log_axis(axis: plt.Axes, span: float) -> None:
    """Log x axis with plain-number labels at 1-2-5 steps (1 step over wide spans), no minor labels."""
    axis.set_xscale("log")
    axis.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0) if span < 30 else (1.0,)))
    axis.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axis.xaxis.set_minor_formatter(ticker.NullFormatter())


def latency_cdf_figure(samples: Mapping[str, Mapping[str, Sequence[float]]]) -> bytes:
    """`samples[series][quantity]` holds per-request values in ms for quantity ttft, tpot, e2el."""
    panels = (("ttft", "TTFT (ms)", "Time to first token"), ("tpot", "TPOT (ms/token)", "Time per output token"),
              ("e2el", "end-to-end latency (ms)", "End-to-end latency"))
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.8), layout="constrained")
    for axis, (quantity, label, title) in zip(axes, panels):
        drawn, lows, highs = 0, [], []
        for index, (name, by_quantity) in enumerate(sorted(samples.items())):
            values = np.asarray(by_quantity.get(quantity, ()), dtype=float)
            values = values[np.isfinite(values) & (values > 0)]
            if values.size == 0:
                continue
            x, y = _cdf(values)
            axis.step(x, y, where="post", linewidth=1.5, label=f"{name} (n={values.size})",
                      linestyle=("-", "--", ":", "-.")[index % 4])
            lows.append(x[0])
            highs.append(x[-1])
            drawn += 1
        if drawn and max(highs) / max(min(lows), 1e-9) > 20:
            _log_axis(axis, max(highs) / max(min(lows), 1e-9))
        axis.set_xlabel(label)
        axis.set_ylabel("fraction of requests")
        axis.set_ylim(0, 1.02)
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3)
        _legend(axis, drawn)
    return _png(figure)


def telemetry_figure(runs: pd.DataFrame, byte_columns: Sequence[str], x_label: str) -> bytes:
    """`runs` has columns x (category label), the byte columns, and stall_fraction (0..1)."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    positions = np.arange(len(runs))
    width = 0.8 / max(1, len(byte_columns))
    scale, unit = (1024**3, "GiB") if runs[list(byte_columns)].max().max() >= 1024**3 else (MIB, "MiB")
    for index, column in enumerate(byte_columns):
        axes[0].bar(positions + (index - (len(byte_columns) - 1) / 2) * width, runs[column].fillna(0) / scale,
                    width=width, label=column.replace("_bytes", "").replace("_", " "))
    axes[0].set_ylabel(f"bytes moved over the link ({unit})")
    axes[0].set_title("Host link traffic", fontsize=10)
    _legend(axes[0], len(byte_columns))
    if "stall_fraction" in runs:
        axes[1].bar(positions, runs["stall_fraction"].fillna(0) * 100, width=0.6, color="tab:red",
                    label="stall fraction")
    axes[1].set_ylabel("compute time stalled on copies (%)")
    axes[1].set_title("Stall fraction", fontsize=10)
    for axis in axes:
        axis.set_xticks(positions)
        rotate = len(runs) > 4 or max((len(str(v)) for v in runs["x"]), default=0) > 8
        axis.set_xticklabels([str(v) for v in runs["x"]], rotation=30 if rotate else 0, ha="right" if rotate else "center",
                             fontsize=8)
        axis.set_xlabel(x_label)
        axis.grid(alpha=0.3, axis="y")
    return _png(figure)


def timeline_figure(series: Mapping[str, Sequence], with_pool: bool = True) -> bytes:
    """`series`: name -> TimelineWindows (results/timeline.py), in time order; `with_pool` draws the pool panel."""
    figure, axes = plt.subplots(1, 3 if with_pool else 2, figsize=(13 if with_pool else 9, 3.8), layout="constrained")
    pool_axis, request_axis, rate_axis = axes if with_pool else (None, *axes)
    for index, (name, windows) in enumerate(series.items()):
        color = f"C{index % 10}"
        times = [w.t_s for w in windows]
        if pool_axis is not None:
            pool_axis.step(times, [w.pool_limit_blocks for w in windows], where="post", color=color, label=f"{name} limit")
            pool_axis.plot(times, [w.pool_blocks_used for w in windows], color=color, linestyle=":", label=f"{name} in use")
            moved = [w for w in windows if w.move in ("grow", "shrink", "rearm")]
            pool_axis.scatter([w.t_s for w in moved], [w.pool_limit_blocks for w in moved], color=color, s=12, zorder=3)
        request_axis.plot(times, [w.running for w in windows], color=color, label=f"{name} running")
        request_axis.plot(times, [w.waiting for w in windows], color=color, linestyle="--", label=f"{name} waiting")
        rate_axis.plot(times, [w.output_tok_s for w in windows], color=color, label=name)
    titles = ((pool_axis, "CPU pool (blocks)", "Pool limit (steps, dots = moves) and pooled blocks in use", 2),
              (request_axis, "requests", "Running and waiting requests", 2),
              (rate_axis, "output throughput (tokens/s)", "Output throughput per window", 1))
    for axis, label, title, per_series in titles:
        if axis is None:
            continue
        axis.set_xlabel("time since the run started (s)")
        axis.set_ylabel(label)
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3)
        axis.set_ylim(bottom=0)
        _legend(axis, len(series) * per_series)
    return _png(figure)


def panels_figure(panels: Sequence[tuple[str, str, Sequence[tuple[str, Sequence[float], Sequence[float], str]]]],
                  columns: int = 3) -> bytes:
    """`panels`: (title, y label, lines), each line (label, times in s, values, matplotlib style such as "-" or "--")."""
    columns = 4 if len(panels) > 6 and columns == 3 else columns
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, 3.4 * rows), layout="constrained", squeeze=False)
    for axis, (title, label, lines) in zip(axes.flat, panels):
        for index, (name, times, values, style) in enumerate(lines):
            axis.plot(times, values, style, color=f"C{index % 10}", label=name, linewidth=1.5, markersize=3)
        axis.set_xlabel("time since the run started (s)")
        axis.set_ylabel(label)
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3)
        axis.set_ylim(bottom=0)
        _legend(axis, len(lines))
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    return _png(figure)
