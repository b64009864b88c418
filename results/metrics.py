"""Benchmark metrics with vLLM's names and definitions (`calculate_metrics` in vLLM's bench), torch-free.

From per-request samples and the benchmark duration:
- throughputs over the duration: `request_throughput`, `output_throughput`, `total_token_throughput`;
- `request_goodput`: requests meeting every SLO given (`--goodput ttft:MS tpot:MS e2el:MS`) per second;
- TTFT, TPOT = (E2EL - TTFT) / (output_len - 1) for output_len > 1, ITL (all gaps pooled), E2EL:
  `mean_/median_/std_/p90_/p99_<name>_ms`;
- `completed`, `failed`, `total_input_tokens`, `total_output_tokens` (successful requests only),
  `duration_s`, peak device and host memory.
For goodput, a request with one output token counts TPOT as 0 (as vLLM does).
`SUMMARY_ROWS` is the layout of vLLM's "Serving Benchmark Result" table, shared by `pie bench` and `pie show`.

Left out: rendering (the CLI's job) and comparison between runs (results/compare.py).
"""
from __future__ import annotations

import math

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from pie_core.errors import BadInput
from results.record import RequestSample

LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")
STATISTICS = ("mean", "median", "std", "p90", "p99")
SLO_METRICS = ("ttft", "tpot", "e2el")

LATENCY_LABELS = {"ttft": "Time to First Token", "tpot": "Time per Output Token (excl. 1st token)",
                  "itl": "Inter-token Latency", "e2el": "End-to-end Latency"}


def parse_goodput(items: Iterable[str]) -> dict[str, float]:
    """['ttft:500', 'tpot:50'] -> {'ttft': 500.0, 'tpot': 50.0} (milliseconds)."""
    slos: dict[str, float] = {}
    for item in items:
        for part in str(item).split():
            name, sep, value = part.partition(":")
            name = name.strip().lower()
            if not sep or name not in SLO_METRICS:
                raise BadInput(f"goodput SLO '{part}' is not NAME:MILLISECONDS",
                               f"use one or more of {', '.join(SLO_METRICS)}, e.g. --goodput ttft:500 --goodput tpot:50")
            try:
                milliseconds = float(value)
            except ValueError:
                raise BadInput(f"goodput SLO '{part}' has no number after ':'", "e.g. ttft:500") from None
            if not milliseconds > 0:
                raise BadInput(f"goodput SLO '{part}' must be positive", "give milliseconds > 0")
            if name in slos:
                raise BadInput(f"goodput SLO {name} given twice ({slos[name]:g} and {milliseconds:g} ms)", "give each SLO once")
            slos[name] = milliseconds
    return slos


def _statistics(prefix: str, values_s: Sequence[float]) -> dict[str, float]:
    values = np.asarray(values_s if len(values_s) else [0.0], dtype=float) * 1000.0
    return {f"mean_{prefix}_ms": float(values.mean()), f"median_{prefix}_ms": float(np.median(values)),
            f"std_{prefix}_ms": float(values.std()), f"p90_{prefix}_ms": float(np.percentile(values, 90)),
            f"p99_{prefix}_ms": float(np.percentile(values, 99))}


def tpot_s(sample: RequestSample) -> float | None:
    """(E2EL - TTFT) / (output_len - 1), or None for failed or single-token requests."""
    if not sample.success or sample.output_len <= 1 or sample.ttft_s is None or sample.e2el_s is None:
        return None
    return (sample.e2el_s - sample.ttft_s) / (sample.output_len - 1)


def compute_metrics(samples: Sequence[RequestSample], duration_s: float, goodput_slos_ms: dict[str, float] | None = None,
                    peak_device_memory_bytes: int | None = None, peak_host_memory_bytes: int | None = None) -> dict[str, Any]:
    """The summary dictionary stored in a record (vLLM key names, plus `failed`, `duration_s`, memory)."""
    done = [s for s in samples if s.success]
    if not done and duration_s == 0:  # every request failed at once (e.g. refused): rates are 0, not undefined
        duration_s = math.inf
    if not duration_s > 0:
        raise BadInput(f"benchmark duration must be positive, got {duration_s}")
    ttfts = [s.ttft_s for s in done if s.ttft_s is not None]
    e2els = [s.e2el_s for s in done if s.e2el_s is not None]
    tpots = [t for t in (tpot_s(s) for s in done) if t is not None]
    itls = [gap for s in done for gap in s.itl_s]
    total_input = sum(s.prompt_len for s in done)
    total_output = sum(s.output_len for s in done)
    summary: dict[str, Any] = {
        "duration_s": float(duration_s) if math.isfinite(duration_s) else 0.0, "completed": len(done), "failed": len(samples) - len(done),
        "total_input_tokens": total_input, "total_output_tokens": total_output,
        "request_throughput": len(done) / duration_s, "output_throughput": total_output / duration_s,
        "total_token_throughput": (total_input + total_output) / duration_s,
    }
    if goodput_slos_ms:
        summary["request_goodput"] = count_good(done, goodput_slos_ms) / duration_s
        summary["goodput_slos_ms"] = dict(goodput_slos_ms)
    for name, values in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        summary.update(_statistics(name, values))
    summary["peak_device_memory_bytes"] = peak_device_memory_bytes
    summary["peak_host_memory_bytes"] = peak_host_memory_bytes
    return summary


def count_good(done: Sequence[RequestSample], slos_ms: dict[str, float]) -> int:
    """Successful requests whose TTFT, TPOT and E2EL (those with an SLO) are all within it."""
    good = 0
    for sample in done:
        values = {"ttft": sample.ttft_s, "tpot": tpot_s(sample) or 0.0, "e2el": sample.e2el_s}
        if all(values[name] is not None and values[name] * 1000.0 <= limit for name, limit in slos_ms.items()):
            good += 1
    return good


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    """(label, value) rows in the order of vLLM's "Serving Benchmark Result" table."""
    rows: list[tuple[str, Any]] = [
        ("Successful requests", summary.get("completed")),
        ("Failed requests", summary.get("failed")),
        ("Benchmark duration (s)", summary.get("duration_s")),
        ("Total input tokens", summary.get("total_input_tokens")),
        ("Total generated tokens", summary.get("total_output_tokens")),
        ("Request throughput (req/s)", summary.get("request_throughput")),
    ]
    if "request_goodput" in summary:
        rows.append(("Request goodput (req/s)", summary["request_goodput"]))
    rows += [("Output token throughput (tok/s)", summary.get("output_throughput")),
             ("Total token throughput (tok/s)", summary.get("total_token_throughput"))]
    for name in LATENCY_METRICS:
        rows.append((f"--- {LATENCY_LABELS[name]} ---", ""))
        for statistic in ("mean", "median", "p90", "p99"):
            rows.append((f"{statistic.capitalize() if statistic in ('mean', 'median') else statistic.upper()} "
                         f"{name.upper()} (ms)", summary.get(f"{statistic}_{name}_ms")))
    for key, label in (("peak_device_memory_bytes", "Peak device memory (MiB)"), ("peak_host_memory_bytes", "Peak host memory (MiB)")):
        value = summary.get(key)
        rows.append((label, value / 2**20 if isinstance(value, (int, float)) else None))
    return rows
