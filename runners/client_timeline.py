"""The `openai` runner's timeline: windows on the client's clock, each ending at a scrape of the server.

`client_windows(start, boundaries, token_times, first_tokens)` cuts the run at each boundary (a
`Scrape` of the server's `/metrics`, failed or not, in time order; without scraping, a fixed grid
made by `grid_boundaries`) and gives each window the client's output tokens per second and the mean
TTFT of the requests whose first token came in it, and the server's series at that scrape: a gauge
as its value, a counter as its rise since the last successful scrape per second of client time. A
failed scrape leaves the window's `server` None (a gap); the next good one spans the gap. A counter
that fell (the server restarted) has no rate in that window. Server values keep 6 significant digits
(a record holds about 3 KB per window for vLLM's 70 series).

`server_totals(baseline, scrapes)`: each counter's rise from the scrape before the run to the last
good one, for the token cross-check and `pie compare` (results/server_series.py).

Left out: scraping (runners/server_metrics.py), the windows' meaning (results/timeline.py).
"""
from __future__ import annotations

import bisect
from collections.abc import Sequence

from results.timeline import TimelineWindow
from runners.server_metrics import Exposition, Scrape


def grid_boundaries(start: float, end: float, interval_s: float) -> list[Scrape]:
    """Window ends every `interval_s` from `start`, the last at `end` (no server data)."""
    ends = [start + k * interval_s for k in range(1, int((end - start) / interval_s) + 1)]
    if not ends or end - ends[-1] > 1e-9:
        ends.append(end)
    return [Scrape(at, None, None) for at in ends]


def _rates(now: Exposition, now_s: float, last: Exposition, last_s: float) -> dict[str, float]:
    values = {}
    elapsed = now_s - last_s
    for name, value in now.values.items():
        if name not in now.counters:
            values[name] = value
        elif name in last.values and value >= last.values[name] and elapsed > 0:
            values[name] = (value - last.values[name]) / elapsed
    return values


def client_windows(start: float, boundaries: Sequence[Scrape], token_times: Sequence[float],
                   first_tokens: Sequence[tuple[float, float]], baseline: Scrape | None = None) -> list[dict]:
    """Windows as the record keeps them (dicts); `token_times` sorted, `first_tokens` (clock time, TTFT in s)."""
    windows = []
    began = start
    last_good = baseline if baseline is not None and baseline.exposition is not None else None
    firsts = sorted(first_tokens)
    first_times = [at for at, _ in firsts]
    for boundary in boundaries:
        end = boundary.at
        if end <= began:
            continue
        duration = end - began
        tokens = bisect.bisect_right(token_times, end) - bisect.bisect_right(token_times, began)
        low, high = bisect.bisect_right(first_times, began), bisect.bisect_right(first_times, end)
        ttfts = [ttft for _, ttft in firsts[low:high]]
        server = None
        if boundary.exposition is not None:
            server = (_rates(boundary.exposition, boundary.at, last_good.exposition, last_good.at) if last_good is not None
                      else {k: v for k, v in boundary.exposition.values.items() if k not in boundary.exposition.counters})
            last_good = boundary
        windows.append(TimelineWindow(t_s=end - start, duration_s=duration, output_tok_s=tokens / duration,
                                      mean_ttft_ms=sum(ttfts) / len(ttfts) * 1e3 if ttfts else None,
                                      server=None if server is None else {k: float(f"{v:.6g}") for k, v in server.items()}).to_dict())
        began = end
    return windows


def server_totals(baseline: Scrape | None, scrapes: Sequence[Scrape]) -> dict[str, float] | None:
    """Counter name -> rise from `baseline` to the last good scrape; None without two good scrapes."""
    good = [s for s in scrapes if s.exposition is not None]
    if baseline is None or baseline.exposition is None or not good:
        return None
    first, last = baseline.exposition, good[-1].exposition
    return {name: last.values[name] - first.values[name] for name in sorted(last.counters)
            if name in first.values and last.values[name] >= first.values[name]}
