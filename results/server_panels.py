"""The time panels of an `openai` run for `pie report`: the client's throughput and TTFT beside what the
server said in the same windows (torch-free).

`server_panels(windows)` returns the panels `results.plots.panels_figure` draws, on the client's
time axis, and one line per panel it left out for lack of data:

- output throughput: the client's tokens per second, and the server's generation token rate;
- TTFT: the client's mean per window (requests whose first token came in it);
- requests: the server's running and waiting requests;
- KV cache usage (percent), the preemption rate, and, where the server has them (`pie serve`), the
  CPU pool's limit, capacity and pooled blocks, the bytes moved per second and the stalled share.

A window whose scrape failed is a gap (NaN) in the server's lines.

Left out: choosing runs and rendering pages (results/report.py).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from results.server_series import find_all, find_series
from results.timeline import TimelineWindow, server_names

Line = tuple[str, list[float], list[float], str]
Panel = tuple[str, str, list[Line]]


def _values(windows: Sequence[TimelineWindow], name: str, scale: float = 1.0) -> list[float]:
    return [math.nan if w.server is None or name not in w.server else w.server[name] * scale for w in windows]


def server_panels(windows: Sequence[TimelineWindow]) -> tuple[list[Panel], list[str]]:
    names = server_names(windows)
    times = [w.t_s for w in windows]
    found = {role: find_series(names, role) for role in ("running", "waiting", "kv_cache_usage", "preemptions",
                                                          "generation_tokens", "pool_limit", "pool_blocks",
                                                          "pool_capacity", "stall")}
    panels: list[Panel] = []
    left_out: list[str] = []
    throughput: list[Line] = [("client output tok/s", times, [w.output_tok_s for w in windows], "-")]
    if found["generation_tokens"]:
        throughput.append((f"server {found['generation_tokens']} (rate)", times, _values(windows, found["generation_tokens"]), "--"))
    panels.append(("Output throughput per window", "tokens/s", throughput))
    ttft = [math.nan if w.mean_ttft_ms is None else w.mean_ttft_ms for w in windows]
    if any(not math.isnan(v) for v in ttft):
        panels.append(("Client TTFT (mean of first tokens in the window)", "TTFT (ms)", [("client mean TTFT", times, ttft, "o-")]))
    else:
        left_out.append("no request's first token in any window: no TTFT panel")
    requests = [(f"server {found[role]}", times, _values(windows, found[role]), style)
                for role, style in (("running", "-"), ("waiting", "--")) if found[role]]
    if requests:
        panels.append(("Server: running and waiting requests", "requests", requests))
    else:
        left_out.append("the server reports no running/waiting request gauges: no request panel")
    if found["kv_cache_usage"]:
        panels.append(("Server: KV cache usage", "KV cache in use (%)",
                       [(f"server {found['kv_cache_usage']}", times, _values(windows, found["kv_cache_usage"], 100.0), "-")]))
    else:
        left_out.append("the server reports no KV cache usage: no KV panel")
    if found["preemptions"]:
        panels.append(("Server: preemptions", "preemptions per second",
                       [(f"server {found['preemptions']} (rate)", times, _values(windows, found["preemptions"]), "-")]))
    else:
        left_out.append("the server reports no preemption counter: no preemption panel")
    pool = [(f"server {found[role]}", times, _values(windows, found[role]), style)
            for role, style in (("pool_limit", "-"), ("pool_blocks", ":"), ("pool_capacity", "--")) if found[role]]
    if pool:
        panels.append(("Server: CPU pool limit and pooled blocks", "blocks", pool))
    moved = [(f"server {name} (rate)", times, _values(windows, name, 1 / 2**20), "-") for name in find_all(names, "moved_bytes")]
    if moved:
        panels.append(("Server: bytes moved", "MiB/s", moved))
    if found["stall"]:
        panels.append(("Server: stall on pool copies", "stalled seconds per second",
                       [(f"server {found['stall']} (rate)", times, _values(windows, found["stall"]), "-")]))
    if not pool and not moved:
        left_out.append("the server reports no CPU pool or offload series (vLLM has none; `pie serve` does): no pool panel")
    return panels, left_out
