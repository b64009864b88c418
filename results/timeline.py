"""A run's timeline: the engine's state per window of iterations, and each pool-controller move (torch-free).

A window covers `num_steps` consecutive engine iterations and ends `t_s` seconds after the run
started (on the runner's clock: wall time for real runs, the virtual clock for `--runner sim`).
Fields per window: the pool limit at its end, pooled and device blocks in use (peak over the
window), running and waiting requests, the KV blocks the waiting ones need and the pooled blocks the
running ones may hold before they finish (at its end),
preemptions in it, its stall fraction
(stall / (compute + stall)), its output tokens per second, and the controller's move made at
its end, if any (`move`: "grow", "shrink", "hold", "settle", "rearm"; `reason`: words).

`pie bench --runner openai` steps no engine: its windows are on the client's clock, one per scrape of
the server's `/metrics` (runners/client_timeline.py), and hold the client's output tok/s and mean
TTFT and, in `server`, the server's series by the names the server gave them (gauges at the
window's end, counters as per-second rates over it); the engine fields are None there.
The record keeps the windows as dicts in the summary line (`timeline`), in time order.

Left out: building windows from engine statistics (runners/timeline.py) and drawing them
(results/plots.py).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

MOVES = ("grow", "shrink", "hold", "settle", "rearm")


@dataclass(frozen=True)
class TimelineWindow:
    t_s: float  # window end, seconds after the run started
    duration_s: float
    output_tok_s: float  # output tokens the client (or the engine) saw in the window, per second
    num_steps: int | None = None  # engine iterations; None in a client-side window (--runner openai)
    pool_limit_blocks: int | None = None
    pool_blocks_used: int | None = None  # peak over the window
    device_blocks_used: int | None = None  # peak over the window
    running: int | None = None  # at the window's end
    waiting: int | None = None
    preempted: int | None = None  # preemptions during the window
    stall_fraction: float | None = None
    waiting_blocks: int = 0  # KV blocks the waiting requests need, at the window's end
    pool_blocks_needed: int = 0  # pooled blocks the running requests may hold before they finish, at the end
    move: str | None = None
    reason: str | None = None
    mean_ttft_ms: float | None = None  # client windows: mean TTFT of the requests whose first token came in it
    server: dict[str, float] | None = None  # client windows: the server's series (results/server_series.py); None: a gap

    @property
    def engine(self) -> bool:
        """A window of engine iterations (pie, sim), not one on the client's clock."""
        return self.num_steps is not None

    def to_dict(self) -> dict[str, Any]:
        """As the record keeps it; a client window leaves out the engine fields it does not have."""
        data = dataclasses.asdict(self)
        if self.engine:
            return data
        return {k: v for k, v in data.items() if v is not None and k not in ("waiting_blocks", "pool_blocks_needed")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TimelineWindow":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


TIMELINE_COLUMNS = (("t_s", "t (s)"), ("pool_limit_blocks", "pool limit"), ("pool_blocks_used", "pooled"),
                    ("device_blocks_used", "device"), ("running", "running"), ("waiting", "waiting"),
                    ("preempted", "preempted"), ("stall_fraction", "stall"), ("output_tok_s", "output tok/s"),
                    ("move", "move"), ("reason", "reason"))


def timeline_windows(items: Iterable[dict[str, Any]] | None) -> list[TimelineWindow]:
    return [TimelineWindow.from_dict(item) for item in items or ()]


def timeline_rows(windows: Sequence[TimelineWindow]) -> list[list[Any]]:
    """Rows for a table, in TIMELINE_COLUMNS order ('' for no move)."""
    return [[getattr(w, key) if getattr(w, key) is not None else "" for key, _ in TIMELINE_COLUMNS] for w in windows]


CLIENT_COLUMNS = (("t_s", "t (s)"), ("output_tok_s", "output tok/s"), ("mean_ttft_ms", "mean TTFT (ms)"))


def server_names(windows: Sequence[TimelineWindow]) -> list[str]:
    """Every server series name that appears in any window, sorted."""
    return sorted({name for w in windows for name in (w.server or {})})


def mean_pool_share(windows: Sequence[TimelineWindow], capacity_blocks: int, start_s: float = 0.0,
                    end_s: float = float("inf")) -> float:
    """Time-weighted mean of pooled blocks in use / pool capacity over windows ending in (start_s, end_s]."""
    chosen = [w for w in windows if start_s < w.t_s <= end_s]
    total = sum(w.duration_s for w in chosen)
    if capacity_blocks <= 0 or total <= 0:
        return 0.0
    return sum(w.pool_blocks_used * w.duration_s for w in chosen) / total / capacity_blocks
