"""Regression rules: `output_throughput:-5%` parsed into a small object that judges one row.

A rule names a metric and a signed threshold in percent. `-5%` fires when the metric fell by
5% or more, `+10%` when it rose by 10% or more. A rule fires only on a significant change past
its threshold (significance first, then threshold, as asv does); a change that was not tested
against run-to-run noise (one run per side) fires only when the caller allows untested changes.
`direction` says which way is better for each metric, and a rule whose sign points the better way
(it could fire only on an improvement, e.g. `mean_ttft_ms:-50%`) is refused with the rule meant.

Left out: absolute thresholds (`p99_ttft_ms:+50ms`) and rules over several metrics.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from pie_core.errors import BadInput, suggest

_RULE = re.compile(r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_.]*)\s*:\s*(?P<sign>[+-])\s*(?P<value>\d+(?:\.\d+)?)\s*%?\s*$")


def direction(metric: str) -> int:
    """+1 when higher is better, -1 when lower is better, 0 when unknown."""
    if metric.startswith("server."):  # a server's total over the run (results/server_series.comparable_totals)
        return 1 if "prefix_cache_hits" in metric else (-1 if any(w in metric for w in ("preemption", "bytes", "stall")) else 0)
    if "throughput" in metric or "goodput" in metric or metric.endswith("_tok_s") or metric == "completed":
        return 1
    if metric == "failed" or metric.endswith(("_ms", "_s", "_bytes")) or "stall" in metric:
        return -1
    return 0


@dataclass(frozen=True)
class Rule:
    metric: str
    threshold_pct: float  # signed: negative means "fell by at least", positive "rose by at least"

    def __post_init__(self) -> None:
        if not self.metric:
            raise ValueError("a rule needs a metric name")
        if self.threshold_pct == 0:
            raise ValueError(f"rule for {self.metric}: the threshold must be non-zero, got 0%")

    @property
    def text(self) -> str:
        return f"{self.metric}:{self.threshold_pct:+g}%"

    def past_threshold(self, ratio: float | None) -> bool:
        """Whether after/before = `ratio` is at or beyond the threshold in the rule's direction."""
        if ratio is None:
            return False
        change_pct = (ratio - 1.0) * 100.0
        tolerance = 1e-9
        if self.threshold_pct < 0:
            return change_pct <= self.threshold_pct + tolerance
        return change_pct >= self.threshold_pct - tolerance

    def fires(self, ratio: float | None, significant: bool | None, allow_untested: bool = False) -> bool:
        if not self.past_threshold(ratio):
            return False
        if significant is None:
            return allow_untested
        return significant


def parse_rule(text: str) -> Rule:
    """Parse `metric:+N%` / `metric:-N%`; a malformed rule is bad input (exit 2)."""
    match = _RULE.match(text or "")
    if not match:
        raise BadInput(f"cannot parse rule '{text}'", "write METRIC:-N% or METRIC:+N%, e.g. output_throughput:-5%")
    value = float(match["value"])
    if value == 0:
        raise BadInput(f"rule '{text}' has a zero threshold", "use a non-zero percentage, e.g. output_throughput:-5%")
    if match["sign"] == "-" and value > 100:
        raise BadInput(f"rule '{text}' can never fire: a metric cannot fall by more than 100%",
                       "give a fall of at most 100%, e.g. output_throughput:-5%")
    rule = Rule(metric=match["metric"], threshold_pct=-value if match["sign"] == "-" else value)
    better = direction(rule.metric)
    if better and (rule.threshold_pct > 0) == (better > 0):
        meant = f"{rule.metric}:{'-' if better > 0 else '+'}{value:g}%"
        way = "higher" if better > 0 else "lower"
        raise BadInput(f"--fail-on '{text}' would fire only when {rule.metric} improves ({way} is better), "
                       f"calling an improvement a regression", f"to fail when it gets worse, write --fail-on {meant}")
    return rule


def parse_rules(texts: Iterable[str]) -> tuple[Rule, ...]:
    return tuple(parse_rule(text) for text in texts)


def check_metrics(rules: Iterable[Rule], known_metrics: Iterable[str]) -> None:
    """Every rule must name a metric the compared records have; otherwise one-line bad input."""
    known = list(dict.fromkeys(known_metrics))  # in the records' order: the usual metrics first
    for rule in rules:
        if rule.metric not in known:
            raise BadInput(f"rule '{rule.text}' names unknown metric '{rule.metric}'", suggest(rule.metric, known))
