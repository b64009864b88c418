"""Synthetic run records for the compare/report tests: seeded per-request timings written through
ResultsStore, with a per-run slowdown factor that models run-to-run noise on a shared machine."""
from __future__ import annotations

import numpy as np

from results.record import RequestSample, RunHeader
from results.store import ResultsStore, new_run_id, utc_now

WORKLOAD = {"name": "synthetic-sharegpt", "synthetic": True, "num_prompts": 48, "seed": 0}


def summarize(samples: list[RequestSample]) -> dict[str, float]:
    """vLLM-named metrics from samples (test-side copy, so the tests do not depend on results.metrics)."""
    ok = [s for s in samples if s.success]
    duration_s = 2 * float(np.mean([s.e2el_s for s in ok]))  # as if the requests ran in two waves
    output = sum(s.output_len for s in ok)
    values = {"ttft": [s.ttft_s * 1e3 for s in ok], "e2el": [s.e2el_s * 1e3 for s in ok],
              "tpot": [(s.e2el_s - s.ttft_s) / (s.output_len - 1) * 1e3 for s in ok if s.output_len > 1],
              "itl": [v * 1e3 for s in ok for v in s.itl_s]}
    summary = {"completed": len(ok), "failed": len(samples) - len(ok), "duration_s": duration_s,
               "request_throughput": len(ok) / duration_s, "output_throughput": output / duration_s,
               "total_token_throughput": (output + sum(s.prompt_len for s in ok)) / duration_s}
    for name, data in values.items():
        summary[f"mean_{name}_ms"] = float(np.mean(data))
        summary[f"median_{name}_ms"] = float(np.median(data))
        summary[f"p90_{name}_ms"] = float(np.percentile(data, 90))
        summary[f"p99_{name}_ms"] = float(np.percentile(data, 99))
    return summary


def write_run(store: ResultsStore, seed: int, slowdown: float = 1.0, run_noise: float = 0.03, label: str | None = None,
              model: str = "opt-125m", runner: str = "pie", num_requests: int = 48, workload: dict | None = None,
              fingerprint: dict | None = None, sweep_id: str | None = None, sweep_point: dict | None = None,
              telemetry: dict | None = None, finish: bool = True, timeline: list | None = None):
    """One synthetic run; every latency is multiplied by `slowdown` and a seeded per-run noise factor."""
    rng = np.random.default_rng(seed)
    factor = slowdown * float(np.exp(rng.normal(0.0, run_noise)))
    header = RunHeader(run_id=new_run_id(runner) + f"-{seed}", created_at=utc_now(), model=model, runner=runner,
                       workload=workload or WORKLOAD, config={}, fingerprint=fingerprint or {"cpu": "test-cpu"},
                       label=label, sweep_id=sweep_id, sweep_point=sweep_point)
    samples = []
    for index in range(num_requests):
        output_len = int(rng.integers(8, 33))
        itl = tuple(float(v) * factor for v in rng.lognormal(np.log(0.02), 0.2, size=output_len - 1))
        ttft = float(rng.lognormal(np.log(0.05), 0.3)) * factor
        samples.append(RequestSample(request_id=str(index), prompt_len=int(rng.integers(16, 129)), output_len=output_len,
                                     arrival_s=0.0, ttft_s=ttft, e2el_s=ttft + sum(itl), itl_s=itl))
    with store.writer(header) as writer:
        for sample in samples:
            writer.add(sample)
        if finish:
            writer.finish(summarize(samples), telemetry, timeline or ())
    return writer.path


def synthetic_timeline(seed: int, capacity: int = 512, num_windows: int = 30, adaptive: bool = False) -> list[dict]:
    """Seeded timeline windows (results/timeline.py): a light stretch, then a burst that fills the pool."""
    rng = np.random.default_rng(seed)
    windows, limit = [], 0 if adaptive else capacity
    for index in range(num_windows):
        burst = index >= num_windows // 2
        pooled = int(min(limit, capacity * (0.6 + 0.3 * rng.random()))) if burst else 0
        move = None
        if adaptive and burst and limit < capacity:
            limit, move = min(capacity, limit + capacity // 4), "grow"
        windows.append({"t_s": 0.5 * (index + 1), "duration_s": 0.5, "num_steps": 16, "pool_limit_blocks": limit,
                        "pool_blocks_used": pooled, "device_blocks_used": 40, "running": 4 + (12 if burst else 0),
                        "waiting": int(rng.integers(0, 5)) if burst else 0, "preempted": 0,
                        "stall_fraction": 0.05 if pooled else 0.0, "output_tok_s": float(100 + (150 if burst else 0) + 20 * rng.random()),
                        "move": move, "reason": "synthetic" if move else None})
    return windows
