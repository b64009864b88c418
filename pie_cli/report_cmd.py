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
SUFFIXES = {".html": "html", ".htm": "html", ".md": "markdown", ".markdown": "markdown"}


def _report_format(output_format: str | None, output: Path | None) -> str:
    """The format asked for, or the one the --output suffix names; a suffix of another format is bad input."""
    if output_format is not None and output_format not in FORMATS:
        raise BadInput(f"unknown --format '{output_format}'", f"use one of {', '.join(FORMATS)}")
    suffix = output.suffix.lower() if output is not None else ""
    implied = SUFFIXES.get(suffix)
    if suffix and implied is None:
        raise BadInput(f"--output '{output}': pie writes a report as html or markdown, not '{suffix}'",
                       f"name it {output.with_suffix('.html')} or {output.with_suffix('.md')}")
    if output_format is not None and implied is not None and implied != output_format:
        raise BadInput(f"--format {output_format} but --output '{output}' names a {implied} file",
                       f"name it {output.with_suffix('.html' if output_format == 'html' else '.md')}, or drop --format")
    return output_format or implied or "html"


def report(
    references: Annotated[list[str], typer.Argument(
        help="Record files, run ids, or selectors (label=..., model=..., runner=..., commit=..., sweep=...).")],
    output_format: Annotated[Optional[str], typer.Option("--format", help="html (one self-contained file) or markdown (default: from the --output suffix, else html).")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Report path (default pie-report.html / pie-report.md).")] = None,
    title: Annotated[str, typer.Option("--title", help="Heading of the report.")] = "pie report",
    results_dir: ResultsDirOpt = DEFAULT_RESULTS_DIR,
    json_out: JsonOpt = False,
) -> None:
    """Write a report with plots: throughput/TPOT against a sweep, latency CDFs, link bytes and stall, run timelines.

    Example: pie report sweep=20261121-pool runner=vllm --format html -o report.html
    """
    output_format = _report_format(output_format, output)
    path = writable_file(output or Path("pie-report.html" if output_format == "html" else "pie-report.md"), "--output")
    # pandas/matplotlib load here, not at import, so other commands start fast
    from results.compare import distinct_runs, resolve_side
    from results.report import build_report, write_report
    from results.store import ResultsStore, check_outside_store

    check_outside_store(path, "--output", results_dir)
    store = ResultsStore(results_dir)
    out = Output(json_out)
    records, repeated = distinct_runs([r for reference in references
                                       for r in resolve_side(reference, store, incomplete=True).records])
    if repeated:
        out.info(f"note: {', '.join(repeated)} reached more than once; each run is reported once")
    for _, why in store.unreadable() if any("=" in reference for reference in references) else ():
        out.warn(f"left out a record pie cannot read: {why}")
    for record in records:
        if not record.complete:
            out.warn(f"run {record.run_id} is incomplete (interrupted): its {len(record.requests)} request(s) are "
                     "reported, it has no summary metrics")
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
