"""`pie report`: records -> one self-contained HTML file (plots inlined) or markdown + PNG files.

`build_report` turns records into a runs table and figures: throughput and TPOT against each
swept setting (records that share a sweep id, drawn per runner/label), latency CDFs per runner,
link bytes / stall fraction for pie runs that carry telemetry, the timeline of each run that
stepped an engine (one plot per run; the runs of one sweep overlaid in one plot; the pool panel only
when a run has a pool), and for each openai run its client and server series on one time axis
(results/server_panels.py). A figure, or a panel, that the records cannot support (nothing to
draw, or only zeros) is left out with a note saying why. Torch-free.

Left out: choosing records (the CLI resolves references) and comparisons (results/compare.py).
"""
from __future__ import annotations

import base64
import html
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pie_core.formatting import format_cell
from results import plots
from results.compare import request_values
from results.record import RunRecord, runner_label
from results.server_panels import server_panels
from results.timeline import timeline_windows

RUN_COLUMNS = ("run_id", "runner", "label", "sweep", "output_throughput", "request_throughput", "mean_ttft_ms",
               "p99_ttft_ms", "mean_tpot_ms", "p99_tpot_ms", "completed", "failed")


@dataclass(frozen=True)
class Figure:
    name: str  # file stem, e.g. "sweep_pool_blocks"
    title: str
    caption: str
    png: bytes

    def __post_init__(self) -> None:
        if not self.png.startswith(b"\x89PNG"):
            raise ValueError(f"figure {self.name} is not a PNG image")


@dataclass(frozen=True)
class Report:
    title: str
    selection: str
    runs: pd.DataFrame
    figures: tuple[Figure, ...]
    notes: tuple[str, ...]


def _series(record: RunRecord) -> str:
    return runner_label(record.header) + (f" · {record.header.label}" if record.header.label else "")


def _telemetry_numbers(record: RunRecord) -> dict[str, float]:
    numbers = {}
    for key, value in (record.telemetry or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            numbers[key] = float(value)
    return numbers


def runs_frame(records: list[RunRecord]) -> pd.DataFrame:
    rows = []
    for record in records:
        summary = record.summary or {}
        point = record.header.sweep_point or {}
        parameter, value = next(iter(point.items()), (None, None))
        row = {"run_id": record.run_id, "runner": record.header.runner, "label": record.header.label,
               "series": _series(record), "sweep_id": record.header.sweep_id, "sweep_parameter": parameter,
               "sweep_value": _number(value), "sweep": f"{parameter}={value}" if parameter else None}
        row.update({k: summary.get(k) for k in RUN_COLUMNS if k in summary})
        row.update(_telemetry_numbers(record))
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.sort_values(["series", "sweep_parameter", "sweep_value"], kind="stable", na_position="last",
                             ignore_index=True)


def _number(value: object) -> float | None:
    """A finite sweep value, or None (e.g. request_rate=inf cannot sit on a numeric axis)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _sweep_figures(runs: pd.DataFrame, notes: list[str]) -> list[Figure]:
    swept = runs[runs["sweep_id"].notna() & runs["sweep_value"].notna()]
    if swept.empty:
        notes.append("no sweep runs in the selection: throughput/TPOT curves need records from `pie bench --sweep`")
        return []
    figures = []
    for parameter, group in swept.groupby("sweep_parameter"):
        if group["sweep_value"].nunique() < 2:
            notes.append(f"sweep over {parameter} has a single point; no curve drawn")
            continue
        label = plots.AXIS_LABELS.get(parameter, parameter)
        figures.append(Figure(f"sweep_{parameter}", f"Throughput and TPOT against {label}",
                              f"{len(group)} runs from {group['sweep_id'].nunique()} sweep(s); points are the mean "
                              f"of repeated runs, bars span min to max.", plots.sweep_figure(group, parameter)))
    return figures


def _cdf_figure(records: list[RunRecord], notes: list[str]) -> list[Figure]:
    samples: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        for quantity in ("ttft", "tpot", "e2el"):
            samples[record.header.runner][quantity] += [v for group in request_values(record, quantity) for v in group]
    if not any(values for by_quantity in samples.values() for values in by_quantity.values()):
        notes.append("no per-request samples in the selection: no latency distributions drawn")
        return []
    return [Figure("latency_cdf", "Latency distributions per runner",
                   "Empirical CDFs over every successful request of the selected runs, pooled per runner.",
                   plots.latency_cdf_figure(samples))]


def _telemetry_figure(runs: pd.DataFrame, notes: list[str]) -> list[Figure]:
    pie_runs = runs[runs["runner"].isin(("pie", "sim"))].copy()  # the simulator reports the same telemetry
    byte_columns = [c for c in pie_runs.columns if c.endswith("_bytes") and pie_runs[c].notna().any()
                    and any(word in c for word in ("h2d", "d2h", "link", "copied", "moved"))]
    has_stall = "stall_fraction" in pie_runs and pie_runs["stall_fraction"].notna().any()
    if pie_runs.empty or not (byte_columns or has_stall):
        notes.append("no pie runs with link/stall telemetry in the selection: no link figure drawn")
        return []
    if not (pie_runs[byte_columns].fillna(0).to_numpy().any() or (has_stall and pie_runs["stall_fraction"].fillna(0).any())):
        notes.append("the pie runs moved no bytes over the link and never stalled (no pool in use): no link figure drawn")
        return []
    single_sweep = pie_runs["sweep_parameter"].nunique() == 1 and pie_runs["sweep_value"].notna().all()
    if single_sweep:
        parameter = pie_runs["sweep_parameter"].iloc[0]
        value_columns = byte_columns + (["stall_fraction"] if has_stall else [])
        pie_runs = pie_runs.groupby("sweep_value")[value_columns].mean().reset_index()  # repeats: mean
        pie_runs["x"] = [f"{v:g}" for v in pie_runs["sweep_value"]]
        x_label = plots.AXIS_LABELS.get(parameter, parameter)
    else:
        pie_runs["x"] = [f"{label or ''} {run_id[-6:]}".strip() for label, run_id in zip(pie_runs["label"], pie_runs["run_id"])]
        x_label = "run (label, id suffix)"
    return [Figure("pie_link", "Host link traffic and stall fraction (pie runs)",
                   "Bytes the pie engine moved between the CPU pool and the device, and the share of compute "
                   "time spent waiting for those copies (mean of repeated runs at a sweep point).", plots.telemetry_figure(pie_runs, byte_columns, x_label))]


def _timeline_figures(records: list[RunRecord], notes: list[str]) -> list[Figure]:
    groups: dict[str, dict[str, list]] = defaultdict(dict)
    for record in records:
        windows = timeline_windows(record.timeline)
        if not windows or not windows[0].engine:
            continue
        point = record.header.sweep_point or {}
        name = ", ".join(f"{k}={v}" for k, v in point.items()) or _series(record)
        if record.header.config.get("adaptive"):
            name += " (adaptive)"
        group = record.header.sweep_id or record.run_id
        groups[group][name if name not in groups[group] else f"{name} {record.run_id[-6:]}"] = windows
    if not groups:
        if not any(record.timeline for record in records):
            notes.append("no run in the selection has a timeline (pie, sim and openai runs record one): no timeline drawn")
        return []
    figures = []
    for index, (group, series) in enumerate(groups.items()):
        with_pool = any((w.pool_limit_blocks or 0) > 0 or (w.pool_blocks_used or 0) > 0 for ws in series.values() for w in ws)
        if not with_pool:
            notes.append(f"no run of {group} uses a CPU pool: its timeline has no pool panel")
        figures.append(Figure(f"timeline_{index}", f"Timeline of {group}",
                              f"{len(series)} run(s); each point is a window of engine iterations"
                              + ("; the pool limit moves only under --adaptive." if with_pool else "."),
                              plots.timeline_figure(series, with_pool)))
    return figures


def _server_figures(records: list[RunRecord], notes: list[str]) -> list[Figure]:
    figures = []
    for record in records:
        windows = timeline_windows(record.timeline)
        if not windows or windows[0].engine:
            continue
        scraped = (record.telemetry or {}).get("server_metrics") or {}
        panels, left_out = server_panels(windows)
        if not scraped.get("url"):
            left_out = ["server metrics were off for this run: client series only"]
        gaps = sum(1 for w in windows if w.server is None) if scraped.get("url") else 0
        check = scraped.get("token_check")
        checked = (f" Token cross-check: {'MISMATCH' if check['mismatch'] else 'agrees'}, within "
                   f"{check['max_relative_difference']:.2%}." if check else "")
        figures.append(Figure(f"server_{record.run_id}", f"Client and server over time: {_series(record)} {record.run_id}",
                              f"{len(windows)} windows on the client's clock, one per scrape of "
                              f"{scraped.get('url') or 'the server (off)'} (server kind {scraped.get('kind') or 'unknown'}; "
                              f"{gaps} gap(s) where a scrape failed); counters drawn as rates.{checked} "
                              + " ".join(f"Left out: {why}." for why in left_out), plots.panels_figure(panels)))
    return figures


def build_report(records: list[RunRecord], title: str = "pie report", selection: str = "") -> Report:
    if not records:
        raise ValueError("a report needs at least one record")
    runs = runs_frame(records)
    notes: list[str] = []
    figures = (_sweep_figures(runs, notes) + _cdf_figure(records, notes) + _telemetry_figure(runs, notes)
               + _timeline_figures(records, notes) + _server_figures(records, notes))
    models = sorted({r.header.model for r in records})
    if len(models) > 1:
        notes.append(f"the selection mixes models ({', '.join(models)})")
    return Report(title, selection, runs, tuple(figures), tuple(notes))


def _table_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    columns = [c for c in RUN_COLUMNS if c in report.runs.columns and report.runs[c].notna().any()]
    rows = [[format_cell(None if pd.isna(v) else v) for v in row] for row in report.runs[columns].itertuples(index=False)]
    return columns, rows


STYLE = ("body{font-family:system-ui,sans-serif;max-width:1280px;margin:24px auto;padding:0 16px;color:#222}"
         "img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse;font-size:13px}"
         "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
         "figure{margin:24px 0}figcaption{font-size:13px;color:#555}")


def render_html(report: Report) -> str:
    """One self-contained page: PNGs inlined as data URIs, no external resources."""
    esc = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(report.title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{esc(report.title)}</h1>",
             f"<p>{len(report.runs)} run(s) selected by <code>{esc(report.selection)}</code>.</p>"]
    for figure in report.figures:
        data = base64.b64encode(figure.png).decode("ascii")
        parts.append(f"<figure id='{esc(figure.name)}'><h2>{esc(figure.title)}</h2>"
                     f"<img alt='{esc(figure.title)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{esc(figure.caption)}</figcaption></figure>")
    parts += [f"<p class='note'>Note: {esc(note)}.</p>" for note in report.notes]
    columns, rows = _table_rows(report)
    parts.append("<h2>Runs</h2><table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr>")
    parts += ["<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in rows]
    parts.append("</table></body></html>")
    return "\n".join(parts)


def render_markdown(report: Report, image_dir: str) -> tuple[str, dict[str, bytes]]:
    """Markdown text linking PNG files under `image_dir` (relative), and those files' bytes by name."""
    lines = [f"# {report.title}", "", f"{len(report.runs)} run(s) selected by `{report.selection}`.", ""]
    images = {}
    for figure in report.figures:
        images[f"{figure.name}.png"] = figure.png
        lines += [f"## {figure.title}", "", f"![{figure.title}]({image_dir}/{figure.name}.png)", "", figure.caption, ""]
    lines += [f"> Note: {note}." for note in report.notes] + [""]
    columns, rows = _table_rows(report)
    lines += ["## Runs", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n", images


def write_report(report: Report, path: Path, output_format: str) -> list[Path]:
    """Write the report (and, for markdown, a `<stem>_files/` folder of PNGs); return the paths written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if output_format == "html":
        path.write_text(render_html(report), encoding="utf-8")
        return [path]
    image_dir = f"{path.stem}_files"
    text, images = render_markdown(report, image_dir)
    (path.parent / image_dir).mkdir(exist_ok=True)
    written = [path]
    for name, data in images.items():
        (path.parent / image_dir / name).write_bytes(data)
        written.append(path.parent / image_dir / name)
    path.write_text(text, encoding="utf-8")
    return written
