"""What a server's Prometheus series mean, by their names: the server's kind, the series behind each
panel and column, the totals worth comparing, and the token cross-check (torch-free, no network).

A record of `pie bench --runner openai` keeps the server's series under the names the server gave
them (runners/server_metrics.py scrapes them): gauges as values at each window's end, counters as
per-second rates over the window. This module finds the ones a reader asks for:

- `server_kind(names)`: "pie" when any name starts with `pie:` (`pie serve` adds its pool series to
  vLLM's names), "vllm" when any starts with `vllm:`, else "other";
- `ROLES` / `find_series(names, role)`: running and waiting requests, KV cache usage, preemptions,
  prompt and generation tokens, the CPU pool's limit, capacity and blocks in use, bytes offloaded or
  moved, and the seconds the forward pass stalled on copies (`pie serve`'s `pie:` names);
- `comparable_totals(totals)`: the counters whose totals over a run `pie compare` compares
  (preemptions, prefix cache hits and queries, bytes moved), under `server.` + the server's name
  with its colons as dots (`--fail-on` rules take such names);
- `token_check(...)`: the server's prompt and generation token counts over the run held against
  the client's, with the relative difference and a mismatch flag above `TOKEN_TOLERANCE`.

Left out: scraping and parsing (runners/server_metrics.py) and drawing (results/plots.py).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

TOKEN_TOLERANCE = 0.01  # the client's and the server's token counts may differ by this share before it is a mismatch
SERVER_PREFIX = "server."  # telemetry keys of server totals: "server.vllm.num_preemptions_total" (usable in --fail-on rules)

# role -> (patterns tried in order on the series names, unit as a reader sees it)
ROLES: dict[str, tuple[tuple[str, ...], str]] = {
    "running": ((r"^[a-z_]+:num_requests_running$",), "requests"),
    "waiting": ((r"^[a-z_]+:num_requests_waiting$",), "requests"),
    "kv_cache_usage": ((r"^[a-z_]+:kv_cache_usage_perc$", r"^[a-z_]+:gpu_cache_usage_perc$", r"kv_cache_usage"), "share"),
    "preemptions": ((r"^[a-z_]+:num_preemptions_total$", r"preemption.*_total$"), "per s"),
    "prompt_tokens": ((r"^[a-z_]+:prompt_tokens_total$",), "tokens/s"),
    "generation_tokens": ((r"^[a-z_]+:generation_tokens_total$",), "tokens/s"),
    "pool_limit": ((r"^pie:.*pool.*limit", r"^pie:.*limit.*pool"), "blocks"),
    "pool_blocks": ((r"^pie:.*pool_blocks(?!.*limit)", r"^pie:.*pool(?!.*(limit|capacity)).*blocks"), "blocks"),
    "pool_capacity": ((r"^pie:.*pool_capacity",), "blocks"),
    "stall": ((r"^pie:.*stall_seconds_total$",), "s per s"),
    "moved_bytes": ((r"^pie:.*bytes_total$", r"offload.*bytes_total$", r"kv_transfer.*bytes_total$"), "bytes/s"),
}
# (role, column heading) for `pie show --timeline`, in order
SHOW_COLUMNS = (("running", "srv running"), ("waiting", "srv waiting"), ("kv_cache_usage", "srv KV use"),
                ("preemptions", "srv preempt/s"), ("prompt_tokens", "srv prompt tok/s"),
                ("generation_tokens", "srv gen tok/s"), ("pool_limit", "srv pool limit"), ("pool_blocks", "srv pooled"))
_COMPARED = re.compile(r"preemption|prefix_cache_(hits|queries)|_bytes_total$|^pie:")


def server_kind(names: Iterable[str]) -> str:
    names = list(names)
    if any(name.startswith("pie:") for name in names):
        return "pie"
    if any(name.startswith("vllm:") for name in names):
        return "vllm"
    return "other"


def find_series(names: Iterable[str], role: str) -> str | None:
    """The series name that plays `role`, or None; all the names matching `moved_bytes` go through `find_all`."""
    names = sorted(names)
    for pattern in ROLES[role][0]:
        for name in names:
            if re.search(pattern, name):
                return name
    return None


def find_all(names: Iterable[str], role: str) -> list[str]:
    """Every series name matching any of the role's patterns (e.g. each counter of bytes moved)."""
    return sorted(name for name in set(names) if any(re.search(pattern, name) for pattern in ROLES[role][0]))


def comparable_totals(totals: Mapping[str, float]) -> dict[str, float]:
    """`server.` + name (colons as dots) -> total over the run, for the counters a comparison should hold side by side."""
    return {SERVER_PREFIX + name.replace(":", "."): float(value) for name, value in sorted(totals.items()) if _COMPARED.search(name)}


def token_check(totals: Mapping[str, float], client_prompt_tokens: int, client_output_tokens: int,
                tolerance: float = TOKEN_TOLERANCE) -> dict[str, Any] | None:
    """The server's token counters over the run against the client's counts; None when the server has neither."""
    names = list(totals)
    pairs = {"prompt": (find_series(names, "prompt_tokens"), client_prompt_tokens),
             "generation": (find_series(names, "generation_tokens"), client_output_tokens)}
    check: dict[str, Any] = {}
    worst = 0.0
    for kind, (name, client) in pairs.items():
        if name is None:
            continue
        server = float(totals[name])
        difference = abs(server - client) / client if client else (0.0 if server == 0 else float("inf"))
        worst = max(worst, difference)
        check[kind] = {"series": name, "server": server, "client": int(client), "relative_difference": difference}
    if not check:
        return None
    check["max_relative_difference"] = worst
    check["tolerance"] = tolerance
    check["mismatch"] = worst > tolerance
    return check


def describe_mismatch(check: Mapping[str, Any]) -> str:
    """One line for a failed cross-check: what each side counted."""
    parts = [f"{kind} tokens: server {check[kind]['server']:,.0f}, client {check[kind]['client']:,}"
             for kind in ("prompt", "generation") if kind in check]
    return (f"the server's token counters disagree with the client's by {check['max_relative_difference']:.1%} "
            f"(more than {check['tolerance']:.0%}; {'; '.join(parts)}): the server served other requests too, or "
            "counted differently; the benchmark may have measured something else")
