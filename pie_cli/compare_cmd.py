"""`pie compare BASE NEW`: is the new run set better, worse, or within noise? Exit 3 on a fired rule.

Parses the options, hands the two sides to `results.compare`, and renders the comparison as a
rich table, a short markdown comment for CI (verdict first), or JSON. The statistics, marks and
rules live in `results/`; nothing here decides a verdict.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from pie_cli.options import DEFAULT_RESULTS_DIR, JsonOpt, ResultsDirOpt
from pie_cli.output import Output, format_cell
from pie_core.errors import EXIT_REGRESSION, BadInput
from pie_core.inputs import check_number

if TYPE_CHECKING:
    from results.compare import Comparison

FORMATS = ("table", "markdown", "json")
LEGEND = ("+ worse, - better (significant, at least {threshold:g}%); ~ at least {threshold:g}% but not significant "
          "or not tested; ! missing or failing in NEW; x not comparable")
SHORT_METRICS = ("output_throughput", "p99_ttft_ms", "mean_tpot_ms", "request_throughput", "total_token_throughput", "mean_ttft_ms", "p99_tpot_ms",
                               "mean_itl_ms", "p99_e2el_ms", "completed", "failed")

SideArg = Annotated[str, typer.Argument(help="A record file, a run id (prefix), a comma list of those, or a selector "
                                             "such as label=main or model=opt-125m,runner=pie,commit=abc123.")]


def compare(
    base: SideArg,
    new: SideArg,
    fail_on: Annotated[Optional[list[str]], typer.Option(
        "--fail-on", help="Rule METRIC:-N% or METRIC:+N%; exit 3 when a significant change passes it. Repeatable.")] = None,
    output_format: Annotated[str, typer.Option("--format", help="table, markdown (for a CI comment) or json.")] = "table",
    force: Annotated[bool, typer.Option("--force", help="Compare runs of different models or workloads anyway.")] = False,
    allow_different_machines: Annotated[bool, typer.Option(
        "--allow-different-machines", help="Give a verdict on runs from different machines (CPU, cores, capability, "
                                           "GPU), marked 'different machines' in every format.")] = False,
    fail_untested: Annotated[bool, typer.Option(
        "--fail-untested", help="Let rules fire on changes that could not be tested (one run per side).")] = False,
    alpha: Annotated[float, typer.Option("--alpha", help="Significance level (rules share it, Bonferroni).")] = 0.05,
    threshold: Annotated[float, typer.Option("--threshold", help="Change in percent that earns a + or - mark.")] = 5.0,
    all_metrics: Annotated[bool, typer.Option("--all", help="Show every metric in the markdown table, not the key ones.")] = False,
    results_dir: ResultsDirOpt = DEFAULT_RESULTS_DIR,
    json_out: JsonOpt = False,
) -> None:
    """Compare two runs or sets of runs with a significance test, and fail on regression rules.

    Example: pie compare label=main label=pr --fail-on output_throughput:-5% --fail-on p99_ttft_ms:+10% --format markdown
    """
    output_format = "json" if json_out else output_format
    if output_format not in FORMATS:
        raise BadInput(f"unknown format '{output_format}'", f"use one of {', '.join(FORMATS)}")
    check_number(alpha, "--alpha", above=0, below=1, hint="the usual value is 0.05")
    check_number(threshold, "--threshold", minimum=0, hint="a change in percent, e.g. --threshold 5")
    # pandas/scipy load here, not at import, so other commands start fast
    from results.compare import CompareOptions, compare as compare_sides, resolve_side
    from results.rules import parse_rules
    from results.store import ResultsStore

    rules = parse_rules(fail_on or [])
    store = ResultsStore(results_dir)
    before, after = resolve_side(base, store), resolve_side(new, store)
    comparison = compare_sides(before, after, rules, CompareOptions(alpha=alpha, threshold_pct=threshold, force=force,
                                                                      allow_untested=fail_untested,
                                                                      allow_different_machines=allow_different_machines))
    out = Output(json_mode=output_format == "json")
    for warning in comparison.warnings:
        out.warn(warning)
    if output_format == "json":
        out.json(comparison.to_dict())
    elif output_format == "markdown":
        print(to_markdown(comparison, all_metrics))
    else:
        render_table(out, comparison)
    if comparison.regression:
        raise typer.Exit(EXIT_REGRESSION)


def _cells(row: dict[str, Any]) -> list[str]:
    change, p_value = _number(row["change_pct"]), _number(row["p_value"])
    return [f"{row['mark']} {row['metric']}", format_cell(row["before"]), format_cell(row["after"]),
            "-" if change is None else f"{change:+.1f}%",
            "-" if p_value is None else ("<0.001" if p_value < 0.001 else f"{p_value:.3f}"),
            row["fired"] and f"FIRED {row['fired']}" or row["rules"] or ""]


def _number(value: Any) -> float | None:
    return None if value is None or value != value else float(value)


def render_table(out: Output, comparison: "Comparison") -> None:
    rows = [_cells(row) for row in comparison.frame.to_dict(orient="records")]
    out.table(f"pie compare: {comparison.before.reference} -> {comparison.after.reference}",
              ["  metric", "base", "new", "change", "p", "rule"], rows)
    style = "bold red" if comparison.regression else "bold green"
    out.data.print(f"[{style}]{comparison.verdict}[/{style}]")
    out.info(LEGEND.format(threshold=comparison.options.threshold_pct))
    out.info(f"base: {comparison.before.describe()}")
    out.info(f"new:  {comparison.after.describe()}")
    for note in comparison.notes:
        out.info(f"note: {note}")


def to_markdown(comparison: "Comparison", all_metrics: bool = False) -> str:
    """A short CI comment: verdict first, then the key rows, the rest folded, then where the numbers came from."""
    icon = ":x:" if comparison.regression else ":white_check_mark:"
    lines = [f"### {icon} pie compare: {comparison.headline}", ""]
    lines += [f"- {finding}" for finding in comparison.findings] + [""]
    lines += [f"> warning: {w}" for w in comparison.warnings]
    records = comparison.frame.to_dict(orient="records")
    ruled = {r.metric for r in comparison.rules}
    key = [row for row in records if all_metrics or row["metric"] in ruled or row["metric"] in SHORT_METRICS]
    lines += _markdown_table(key)
    rest = [row for row in records if row not in key]
    if rest:
        changed = sum(1 for row in rest if row["mark"] in "+-!")
        lines += ["", f"<details><summary>{len(rest)} more metrics ({changed} marked + - or !)</summary>", ""]
        lines += _markdown_table(rest) + ["", "</details>"]
    lines += ["", f"<sub>{LEGEND.format(threshold=comparison.options.threshold_pct)}. "
                  f"Base: {comparison.before.describe()}. New: {comparison.after.describe()}. "
                  + " ".join(f"Note: {n}." for n in comparison.notes) + "</sub>"]
    return "\n".join(lines)


def _markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| | metric | base | new | change | p | rule |", "|---|---|--:|--:|--:|--:|---|"]
    for row in rows:
        mark = f"`{row['mark']}`" if row["mark"].strip() else ""
        lines.append("| " + " | ".join([mark, row["metric"]] + _cells(row)[1:]) + " |")
    return lines
