"""`GET /metrics` of `pie serve`: Prometheus series written with `prometheus-client` (torch-free).

vLLM's names where the meaning is the same, labelled `model_name` like vLLM's:
`vllm:num_requests_running`, `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc` (the share of
the resident device KV blocks in use, as vLLM's is of its GPU blocks), `vllm:num_preemptions_total`,
`vllm:prompt_tokens_total`, `vllm:generation_tokens_total`, `vllm:request_success_total` (by
`finished_reason`), and the histograms `vllm:time_to_first_token_seconds`,
`vllm:inter_token_latency_seconds` and `vllm:e2e_request_latency_seconds` (measured in the engine
from the request's arrival at the server). pie's own, for the CPU pool: `pie:pool_limit_blocks`,
`pie:pool_capacity_blocks`, `pie:pool_blocks_used`, `pie:device_blocks_used`, `pie:h2d_bytes_total`,
`pie:d2h_bytes_total`, `pie:stall_seconds_total`, `pie:controller_moves_total` (by `move`).

The engine thread writes them (once per step, and after requests are added or aborted); the HTTP
thread only renders them. Left out: vLLM's per-phase histograms (queue, prefill, decode time).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401 - re-exported for app.py

# vLLM's buckets for these histograms (seconds).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
               960.0, 1920.0, 7680.0)
FINISH_REASONS = ("stop", "length", "abort", "error")


class ServeMetrics:
    def __init__(self, model_name: str, num_device_blocks: int, pool_capacity_blocks: int):
        disable_created_metrics()  # no `_created` series beside each counter (vLLM turns them off too)
        self.registry = CollectorRegistry()
        self.num_device_blocks = max(1, num_device_blocks)
        labels = ["model_name"]
        reg = {"registry": self.registry}

        def gauge(name: str, doc: str) -> Any:
            return Gauge(name, doc, labels, **reg).labels(model_name)

        def counter(name: str, doc: str) -> Any:
            return Counter(name, doc, labels, **reg).labels(model_name)

        self.running = gauge("vllm:num_requests_running", "Requests in the engine's running batch.")
        self.waiting = gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "Share of the resident device KV blocks in use (1 = 100%).")
        self.preemptions = counter("vllm:num_preemptions", "Preemptions (a request's KV dropped to recompute later).")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Prompt tokens of requests that produced a first token.")
        self.generation_tokens = counter("vllm:generation_tokens", "Generated tokens.")
        success = Counter("vllm:request_success", "Finished requests by finish reason.", labels + ["finished_reason"], **reg)
        self.success = {reason: success.labels(model_name, reason) for reason in FINISH_REASONS}
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token, from arrival at the server.",
                              labels, buckets=TTFT_BUCKETS, **reg).labels(model_name)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Time between a request's consecutive tokens.",
                             labels, buckets=ITL_BUCKETS, **reg).labels(model_name)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Arrival to last token.", labels,
                             buckets=E2E_BUCKETS, **reg).labels(model_name)
        self.pool_limit = gauge("pie:pool_limit_blocks", "KV blocks the CPU pool may hold now (the adaptive limit).")
        gauge("pie:pool_capacity_blocks", "KV blocks allocated for the CPU pool.").set(pool_capacity_blocks)
        self.pool_used = gauge("pie:pool_blocks_used", "KV blocks held in the CPU pool.")
        self.device_used = gauge("pie:device_blocks_used", "KV blocks held on the device.")
        self.h2d = counter("pie:h2d_bytes", "Bytes copied pool -> device.")
        self.d2h = counter("pie:d2h_bytes", "Bytes copied device -> pool.")
        self.stall = counter("pie:stall_seconds", "Seconds the forward pass waited on pool copies.")
        moves = Counter("pie:controller_moves", "Moves of the adaptive pool controller that changed the limit.",
                        labels + ["move"], **reg)
        self.moves = lambda move: moves.labels(model_name, move)

    def blocks(self, device_used: int, pool_used: int, pool_limit: int, running: int, waiting: int) -> None:
        """The engine's occupancy now (after a step, or after requests were added or aborted)."""
        self.device_used.set(device_used)
        self.pool_used.set(pool_used)
        self.pool_limit.set(pool_limit)
        self.kv_usage.set(device_used / self.num_device_blocks)
        self.running.set(running)
        self.waiting.set(waiting)

    def step(self, stats: Any) -> None:
        """One engine iteration's `IterationStats`."""
        self.blocks(stats.device_blocks_used, stats.pool_blocks_used, stats.pool_limit_blocks, stats.num_running,
                    stats.num_waiting)
        if stats.num_preempted:
            self.preemptions.inc(stats.num_preempted)
        self.h2d.inc(stats.h2d_bytes)
        self.d2h.inc(stats.d2h_bytes)
        self.stall.inc(stats.stall_s)

    def tokens(self, arrival: float, first_token: bool, num_prompt_tokens: int, times: Sequence[float],
               previous_time: float | None) -> None:
        """A request's new tokens stamped `times`; `previous_time` is its last token's time before them."""
        if not times:
            return
        self.generation_tokens.inc(len(times))
        if first_token:
            self.prompt_tokens.inc(num_prompt_tokens)
            self.ttft.observe(max(0.0, times[0] - arrival))
        last = times[0] if previous_time is None else previous_time
        for at in (times if previous_time is not None else times[1:]):
            self.itl.observe(max(0.0, at - last))
            last = at

    def finished(self, reason: str, arrival: float, last_token_time: float | None) -> None:
        self.success[reason if reason in self.success else "error"].inc()
        if last_token_time is not None and reason in ("stop", "length"):
            self.e2e.observe(max(0.0, last_token_time - arrival))

    def move(self, move: str) -> None:
        self.moves(move).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
