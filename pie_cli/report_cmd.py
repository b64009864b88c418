"""`pie report REF...`: records or selectors -> one HTML page (plots inlined) or markdown + PNGs.

Parses the options, resolves each reference (file, run id, or selector such as `sweep=<id>`),
and writes what `results.report` builds. Nothing here decides what is plotted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pie_cli.options import DEFAULT_RESULTS_DIR, JsonOpt, ResultsDirOpt
from pie_cli.output import Output
from pie_core.errors import BadInput
from pie_core.inputs import writable_file

FORMATS = ("html", "markdown")


def report(
    references: Annotated[list[str], typer.Argument(
        help="Record files, run ids, or selectors (label=..., model=..., runner=..., commit=..., sweep=...).")],
    output_format: Annotated[str, typer.Option("--format", help="html (one self-contained file) or markdown.")] = "html",
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Report path (default pie-report.html / pie-report.md).")] = None,
    title: Annotated[str, typer.Option("--title", help="Heading of the report.")] = "pie report",
    results_dir: ResultsDirOpt = DEFAULT_RESULTS_DIR,
    json_out: JsonOpt = False,
) -> None:
    """Write a report with plots: throughput/TPOT against a sweep, latency CDFs, link bytes and stall, run timelines.

    Example: pie report sweep=20261121-pool runner=vllm --format html -o report.html
    """
    if output_format not in FORMATS:
        raise BadInput(f"unknown format '{output_format}'", f"use one of {', '.join(FORMATS)}")
    path = writable_file(output or Path("pie-report.html" if output_format == "html" else "pie-report.md"), "--output")
    # pandas/matplotlib load here, not at import, so other commands start fast
    from results.compare import resolve_side
    from results.report import build_report, write_report
    from results.store import ResultsStore

    store = ResultsStore(results_dir)
    out = Output(json_out)
    records, seen = [], set()
    for reference in references:
        for record in resolve_side(reference, store).records:
            if record.run_id not in seen:
                seen.add(record.run_id)
                records.append(record)
    built = build_report(records, title=title, selection=" ".join(references))
    written = write_report(built, path, output_format)
    for note in built.notes:
        out.info(f"note: {note}")
    if json_out:
        out.json({"path": str(path), "files": [str(p) for p in written], "num_runs": len(records),
                  "figures": [f.name for f in built.figures], "notes": list(built.notes)})
        return
    out.data.print(f"wrote {path} ({len(records)} runs, {len(built.figures)} figures: "
                   f"{', '.join(f.name for f in built.figures) or 'none'})")
