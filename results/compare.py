"""Compare two sets of runs: one pandas frame on the metric key, with significance, marks and rules.

A side is a record file, a run id, a comma-separated list of those, or a selector over the store
(`label=main`, `model=opt-125m,runner=pie`, `commit=abc123`, `sweep=<id>`). `compare()` refuses
runs of different models or workloads unless forced, and runs of different machines unless allowed
(`results.machines`; other fingerprint differences only warn), tests every
metric (see `results.significance` for which test and why), marks each row as asv does, and
applies the rules. Torch-free; rendering (rich, markdown, JSON) is the CLI's job.

Marks: `+` worse and `-` better (significant and at least the display threshold), `~` at least
the threshold but not significant or not tested, `!` missing or failing in the new runs,
`x` not comparable (missing before, or a zero base), blank: no change that matters.

Left out: metrics computed from raw samples (records carry vLLM-named summaries) and plots.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pie_core.errors import BadInput
from results import machines
from results import significance as sig
from results.record import RunRecord, runner_label
from results.rules import Rule, check_metrics, direction
from results.store import ResultsStore

SELECTOR_KEYS = {"label": "label", "model": "model", "runner": "runner", "commit": "git_commit",
                 "git_commit": "git_commit", "sweep": "sweep_id", "sweep_id": "sweep_id"}
_LATENCY = re.compile(r"^(?P<stat>mean|median|std|p\d+(?:\.\d+)?)_(?P<quantity>ttft|tpot|itl|e2el)_ms$")
_IGNORED_WORKLOAD_KEYS = {"dataset_path", "path"}


@dataclass(frozen=True)
class Side:
    """The runs on one side of a comparison and how they were asked for."""

    reference: str
    records: tuple[RunRecord, ...]
    skipped_incomplete: tuple[str, ...] = ()  # run ids a selector matched but that did not finish
    repeated: tuple[str, ...] = ()  # run ids reached more than once (repeated ids, overlapping selectors, copies): kept once
    unreadable: tuple[str, ...] = ()  # "file: why" for each record file a selector's scan could not read

    def __post_init__(self) -> None:
        if not self.records:
            raise ValueError(f"side '{self.reference}' has no runs")

    @property
    def run_ids(self) -> list[str]:
        return [r.run_id for r in self.records]

    def describe(self) -> str:
        runners = sorted({runner_label(r.header) for r in self.records})
        commits = sorted({(r.header.git_commit or "unknown")[:12] for r in self.records})
        return f"{self.reference} ({len(self.records)} run{'s' if len(self.records) != 1 else ''}; " \
               f"runner {', '.join(runners)}; commit {', '.join(commits)})"


@dataclass(frozen=True)
class CompareOptions:
    alpha: float = 0.05
    threshold_pct: float = 5.0  # display threshold for + - ~ marks
    force: bool = False  # compare different models / workloads anyway
    allow_untested: bool = False  # let rules fire on changes that could not be tested
    allow_different_machines: bool = False  # give a verdict across machines (marked as such)
    num_resamples: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.threshold_pct < 0:
            raise ValueError(f"threshold_pct must be >= 0, got {self.threshold_pct}")


@dataclass(frozen=True)
class Comparison:
    frame: pd.DataFrame  # one row per metric: before, after, ratio, change_pct, p_value, significant, mark, ...
    before: Side
    after: Side
    rules: tuple[Rule, ...]
    fired: tuple[str, ...]  # texts of the rules that fired
    warnings: tuple[str, ...]
    notes: tuple[str, ...]
    headline: str  # "REGRESSION: rule ... fired" / "OK: no rule fired" / "no rules given"
    findings: tuple[str, ...]  # one sentence per rule metric (or key metric without rules)
    options: CompareOptions = field(default_factory=CompareOptions)
    config_changes: tuple[str, ...] = ()  # "dtype: bfloat16 -> float32", one per setting that differs
    machine_differences: tuple[str, ...] = ()  # "cpu_family: 25 -> 26" (results/machines.py), allowed by the user

    @property
    def verdict(self) -> str:
        return self.headline + (" — " + "; ".join(self.findings) if self.findings else "")

    @property
    def regression(self) -> bool:
        return bool(self.fired)

    def to_dict(self) -> dict[str, Any]:
        rows = self.frame.astype(object).where(self.frame.notna(), None).to_dict(orient="records")
        return {"verdict": self.verdict, "regression": self.regression, "fired_rules": list(self.fired),
                "rules": [r.text for r in self.rules], "warnings": list(self.warnings), "notes": list(self.notes),
                "config_changes": list(self.config_changes), "different_machines": list(self.machine_differences),
                "alpha": self.options.alpha, "threshold_pct": self.options.threshold_pct,
                "before": {"reference": self.before.reference, "run_ids": self.before.run_ids},
                "after": {"reference": self.after.reference, "run_ids": self.after.run_ids}, "rows": rows}


def parse_selector(text: str) -> dict[str, str]:
    filters: dict[str, str] = {}
    written: dict[str, str] = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if key not in SELECTOR_KEYS or not value:
            raise BadInput(f"cannot read selector '{text}'",
                           f"use KEY=VALUE[,KEY=VALUE] with keys {', '.join(sorted(SELECTOR_KEYS))}")
        field = SELECTOR_KEYS[key]
        if field in filters and filters[field] != value:
            raise BadInput(f"selector '{text}' gives {field} two values ({written[field]} and {part.strip()}); a run has one",
                           f"a selector takes runs that match every KEY=VALUE: give {key} once")
        filters[field], written[field] = value, part.strip()
    return filters


def resolve_side(reference: str, store: ResultsStore, incomplete: bool = False) -> Side:
    """Records for a file, a run id, a comma list of those, or a selector, each run once; complete runs only,
    unless `incomplete` (a report plots the requests an interrupted run kept)."""
    if "=" in reference:
        matched = store.select(**parse_selector(reference))
        complete = tuple(r for r in matched if r.complete or incomplete)
        unreadable = tuple(f"{path}: {why}" for path, why in store.unreadable())
        if not complete:
            found = f"{len(matched)} matching run(s) are incomplete" if matched else "no runs match"
            raise BadInput(f"{found} for selector '{reference}' in {store.root} "
                           f"({len(store.paths())} record file(s) searched)",
                           "check the label/model/runner/commit with `pie show`, or pass --results-dir")
        distinct, repeated = distinct_runs(complete)
        return Side(reference, distinct, tuple(r.run_id for r in matched if not r.complete), repeated, unreadable)
    records = []
    for part in [p.strip() for p in reference.split(",") if p.strip()]:
        record = store.load(part)
        if not record.complete and not incomplete:
            raise BadInput(f"run '{record.run_id}' is incomplete (interrupted; no summary), so it has no metrics to compare",
                           f"compare runs that finished (`pie show` marks them); `pie report {part}` shows the "
                           f"{len(record.requests)} request(s) it kept")
        records.append(record)
    if not records:
        raise BadInput(f"empty run reference '{reference}'", "pass a record file, a run id, or KEY=VALUE")
    distinct, repeated = distinct_runs(records)
    return Side(reference, distinct, repeated=repeated)


def distinct_runs(records) -> tuple[tuple[RunRecord, ...], tuple[str, ...]]:
    """(each run once, in first-seen order; the run ids seen more than once). A run is its run id: two copies
    of one record file are one run, so a test never sees a run twice as if it were two measurements."""
    kept: dict[str, RunRecord] = {}
    repeated: list[str] = []
    for record in records:
        if record.run_id in kept:
            if record.run_id not in repeated:
                repeated.append(record.run_id)
            continue
        kept[record.run_id] = record
    return tuple(kept.values()), tuple(repeated)


def _numbers(source: dict[str, Any] | None) -> dict[str, float]:
    return {key: float(value) for key, value in (source or {}).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


def run_metrics(record: RunRecord, telemetry_keys: set[str] | None = None) -> dict[str, float]:
    """Numeric summary metrics of one run, plus the numeric telemetry named in `telemetry_keys`."""
    telemetry = {k: v for k, v in _numbers(record.telemetry).items() if telemetry_keys is None or k in telemetry_keys}
    return {**telemetry, **_numbers(record.summary)}


def request_values(record: RunRecord, quantity: str) -> list[list[float]]:
    """Per successful request, its values of ttft / tpot / itl / e2el in milliseconds."""
    groups = []
    for s in record.requests:
        if not s.success:
            continue
        if quantity == "ttft" and s.ttft_s is not None:
            groups.append([s.ttft_s * 1e3])
        elif quantity == "e2el" and s.e2el_s is not None:
            groups.append([s.e2el_s * 1e3])
        elif quantity == "tpot" and s.output_len > 1 and s.ttft_s is not None and s.e2el_s is not None:
            groups.append([(s.e2el_s - s.ttft_s) / (s.output_len - 1) * 1e3])
        elif quantity == "itl" and s.itl_s:
            groups.append([v * 1e3 for v in s.itl_s])
    return groups


def _workload_key(record: RunRecord) -> str:
    workload = {k: v for k, v in (record.header.workload or {}).items() if k not in _IGNORED_WORKLOAD_KEYS}
    return json.dumps(workload, sort_keys=True, default=str)


def _workload_difference(records) -> str:
    """'num_prompts: 8 vs 16; seed: 0 vs 1': the workload fields that differ, not the whole workloads."""
    workloads = [{k: v for k, v in (r.header.workload or {}).items() if k not in _IGNORED_WORKLOAD_KEYS} for r in records]
    keys = sorted({k for w in workloads for k in w if any(w.get(k) != other.get(k) for other in workloads)})
    parts = []
    for key in keys[:4]:
        values = list(dict.fromkeys(json.dumps(w.get(key), sort_keys=True, default=str)[:40] for w in workloads))
        parts.append(f"{key}: {' vs '.join(values[:3])}")
    return "; ".join(parts) + (f"; and {len(keys) - 4} more field(s)" if len(keys) > 4 else "")


def check_comparable(before: Side, after: Side, force: bool) -> list[str]:
    """Refuse different models/workloads (unless forced); return warnings (machines differ, forced)."""
    records = before.records + after.records
    warnings = []
    models = sorted({r.header.model for r in records})
    workloads = sorted({_workload_key(r) for r in records})
    problems = []
    if len(models) > 1:
        problems.append(f"different models ({', '.join(models)})")
    if len(workloads) > 1:
        problems.append(f"different workloads ({_workload_difference(records)})")
    if problems and not force:
        raise BadInput(f"refusing to compare runs of {' and '.join(problems)}", "pass --force to compare anyway")
    warnings += [f"compared despite {p} (--force)" for p in problems]
    machines = {json.dumps(r.header.fingerprint or {}, sort_keys=True, default=str) for r in records}
    if len(machines) > 1:
        keys = sorted({k for r in records for k, v in (r.header.fingerprint or {}).items()
                       if any((o.header.fingerprint or {}).get(k) != v for o in records)})
        warnings.append(f"runs come from different machines (fingerprints differ in: {', '.join(keys) or 'fields'})")
    return warnings


# Settings whose change makes the numbers of another configuration, named first (then the rest, sorted).
_CONFIG_FIRST = ("dtype", "device", "kernels")
_CONFIG_IGNORED = {"plan", "random_weights", "save_outputs", "seed"}


def config_changes(before: Side, after: Side) -> list[str]:
    """'dtype: bfloat16 -> float32' for each run setting whose values differ between the sides."""
    def values(side: Side, key: str) -> list[str]:
        return sorted({json.dumps((r.header.config or {}).get(key), sort_keys=True, default=str) for r in side.records})

    keys = {k for r in before.records + after.records for k in (r.header.config or {})} - _CONFIG_IGNORED
    ordered = [k for k in _CONFIG_FIRST if k in keys] + sorted(keys - set(_CONFIG_FIRST))
    changes = []
    for key in ordered:
        old, new = values(before, key), values(after, key)
        if old != new:
            changes.append(f"{key}: {' | '.join(v.strip(chr(34)) for v in old)} -> {' | '.join(v.strip(chr(34)) for v in new)}")
    return changes


def _test(metric: str, before: Side, after: Side, before_values: list[float], after_values: list[float],
          options: CompareOptions, alpha: float) -> sig.TestResult:
    if len(before_values) + len(after_values) >= 3 and before_values and after_values:
        return sig.run_level_test(before_values, after_values, alpha)
    match = _LATENCY.match(metric)
    if match and len(before.records) == 1 and len(after.records) == 1:
        return sig.request_bootstrap_test(request_values(before.records[0], match["quantity"]),
                                          request_values(after.records[0], match["quantity"]), match["stat"],
                                          alpha, options.num_resamples, options.seed)
    return sig.untested("not tested (1 run per side)", alpha)


def _mark(metric: str, before: float, after: float, ratio: float | None, significant: bool | None,
          threshold_pct: float) -> str:
    if np.isnan(before):
        return "x"
    if np.isnan(after):
        return "!"
    if ratio is None:
        return "!" if metric == "failed" and after > before else ("x" if before == 0 and after != 0 else " ")
    change_pct = (ratio - 1) * 100
    if abs(change_pct) < threshold_pct or direction(metric) == 0:
        return " "
    if not significant:
        return "~"
    worse = (change_pct > 0) == (direction(metric) < 0)
    return "+" if worse else "-"


def compare(before: Side, after: Side, rules: tuple[Rule, ...] = (), options: CompareOptions = CompareOptions()) -> Comparison:
    warnings = check_comparable(before, after, options.force)
    differences = machines.check_same_machine(before.reference, before.records, after.reference, after.records,
                                              options.allow_different_machines)
    warnings += [machines.machine_warning(differences)] if differences else []
    warnings += [f"{side.reference}: ignored {len(side.skipped_incomplete)} incomplete run(s) "
                 f"({', '.join(side.skipped_incomplete)})" for side in (before, after) if side.skipped_incomplete]
    warnings += [f"left out record file {text}" for text in dict.fromkeys(before.unreadable + after.unreadable)]
    # Runner telemetry (stall, link bytes, steps) is compared only where every run carries it.
    telemetry_keys = set.intersection(*(set(_numbers(r.telemetry)) for r in before.records + after.records))
    per_run = {name: pd.DataFrame([run_metrics(r, telemetry_keys) for r in side.records]) for name, side in
               (("before", before), ("after", after))}
    means = [per_run[name].mean(numeric_only=True).rename(name).rename_axis("metric").reset_index()
             for name in ("before", "after")]
    frame = means[0].merge(means[1], on="metric", how="outer").sort_values("metric", kind="stable")
    check_metrics(rules, frame["metric"])
    rule_alpha = options.alpha / max(1, len({r.metric for r in rules}))  # Bonferroni over the ruled metrics
    rows = []
    for metric, before_value, after_value in frame[["metric", "before", "after"]].itertuples(index=False):
        before_runs = per_run["before"].get(metric, pd.Series(dtype=float)).dropna().tolist()
        after_runs = per_run["after"].get(metric, pd.Series(dtype=float)).dropna().tolist()
        ratio = None
        if not (np.isnan(before_value) or np.isnan(after_value)):
            ratio = after_value / before_value if before_value != 0 else (1.0 if after_value == 0 else None)
        matching = [r for r in rules if r.metric == metric]
        alpha = rule_alpha if matching else options.alpha
        if ratio is None or before_value == 0:
            result = sig.untested("not tested (missing or zero base)", alpha)
        else:
            result = _test(metric, before, after, before_runs, after_runs, options, alpha)
        # Rules trust only run-level tests: a within-run test cannot see run-to-run noise (requests
        # that share one prefill batch have identical TTFTs, so any shift looks "significant").
        rule_significant = result.significant if result.method == sig.RUN_LEVEL else None
        fired = [r.text for r in matching if r.fires(ratio, rule_significant, options.allow_untested)]
        rows.append({"metric": metric, "direction": direction(metric), "before": before_value, "after": after_value,
                     "ratio": ratio, "change_pct": None if ratio is None else (ratio - 1) * 100,
                     "ci_low": result.ratio_low, "ci_high": result.ratio_high, "p_value": result.p_value,
                     "significant": result.significant, "alpha": alpha, "test": result.method,
                     "mark": _mark(metric, before_value, after_value, ratio, result.significant, options.threshold_pct),
                     "before_runs": len(before_runs), "after_runs": len(after_runs),
                     "rules": ", ".join(r.text for r in matching), "fired": ", ".join(fired)})
    table = pd.DataFrame(rows)
    fired = tuple(text for cell in table["fired"] if cell for text in cell.split(", ")) if len(table) else ()
    notes = _notes(before, after) + _repeat_notes(before, after)
    if len({r.metric for r in rules}) > 1:
        notes.append(f"rows with a rule are tested at alpha/{len({r.metric for r in rules})} = {rule_alpha:.3g} "
                     "(Bonferroni), so all rules together keep a false-positive rate of at most alpha")
    headline, findings = build_verdict(table, rules, fired, options.threshold_pct)
    headline = machines.mark_headline(headline, differences)
    changes = config_changes(before, after)
    if changes:
        warnings.append(f"configuration changed between the sides ({'; '.join(changes)}): "
                        "the difference may come from the configuration, not the code")
    return Comparison(table, before, after, tuple(rules), fired, tuple(warnings), tuple(notes), headline,
                      tuple(findings), options, tuple(changes), differences)


def _repeat_notes(before: Side, after: Side) -> list[str]:
    notes = [f"{side.reference}: run{'s' if len(side.repeated) > 1 else ''} {', '.join(side.repeated)} reached more than once "
             "(a repeated id, overlapping selectors or copies of one record); each run counts once"
             for side in (before, after) if side.repeated]
    shared = [run_id for run_id in before.run_ids if run_id in set(after.run_ids)]
    if shared:
        notes.append(f"run{'s' if len(shared) > 1 else ''} {', '.join(shared)} on both sides: a run compared with itself shows no change")
    return notes


def _notes(before: Side, after: Side) -> list[str]:
    if len(before.records) == 1 and len(after.records) == 1:
        return ["1 run per side: the verdict is not significance-tested against run-to-run noise (throughput "
                "untested; latency p-values come from a bootstrap over requests, within-run noise only) and "
                "rules fire only with --fail-untested; repeat runs (several per side) for a run-level test"]
    return [f"run-level test: {len(before.records)} vs {len(after.records)} runs, t-test on log per-run values"]


def describe_change(row: dict[str, Any], threshold_pct: float = 5.0) -> str:
    """'fell 7.1% (significant, p=0.003)' / 'unchanged (+1.2%, not significant)' for one frame row."""
    metric, change = row["metric"], row["change_pct"]
    if change is None or (isinstance(change, float) and np.isnan(change)):
        return f"{metric} not comparable"
    moved = f"{'rose' if change > 0 else 'fell'} {abs(change):.1f}%"
    if row["significant"] is None:
        return f"{metric} {moved} (not significance-tested: {row['test'].removeprefix('not tested ').strip('()')})"
    p_text = "p<0.001" if row["p_value"] < 0.001 else f"p={row['p_value']:.3f}"
    if row["test"] == sig.REQUEST_LEVEL:
        return f"{metric} {moved} (not significance-tested against run-to-run noise: 1 run per side; within-run {p_text})"
    if row["significant"]:
        return f"{metric} {moved} (significant, {p_text})"
    if abs(change) < threshold_pct:
        return f"{metric} unchanged ({change:+.1f}%, not significant, {p_text})"
    return f"{metric} {moved} but within noise (not significant, {p_text})"


KEY_METRICS = ("output_throughput", "p99_ttft_ms", "mean_tpot_ms")


def build_verdict(table: pd.DataFrame, rules: tuple[Rule, ...], fired: tuple[str, ...],
                  threshold_pct: float = 5.0) -> tuple[str, list[str]]:
    by_metric = {row["metric"]: row for row in table.to_dict(orient="records")} if len(table) else {}
    named = list(dict.fromkeys([r.metric for r in rules] or [m for m in KEY_METRICS if m in by_metric]))
    parts = [describe_change(by_metric[m], threshold_pct) for m in named if m in by_metric]
    if fired:
        head = f"REGRESSION: rule{'s' if len(fired) > 1 else ''} {', '.join(fired)} fired"
    elif rules:
        head = "OK: no rule fired"
    else:
        head = "no rules given"
    return head, parts
