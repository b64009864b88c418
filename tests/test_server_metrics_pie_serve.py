"""`pie bench --runner openai` against `pie serve --adaptive`: the record's windows hold `pie serve`'s pool limit and
pooled blocks, and both move under load (docs/server-metrics.md).

One `pie serve` subprocess on 127.0.0.1 (a tiny seeded OPT with its tokenizer, a small device budget and a CPU pool
the adaptive controller sizes), a bounded start-up wait, and its process group stopped at the end (tests/serve_helpers.py `ServeProcess`). Skipped where
`pie serve` (runners/serve) is not part of this checkout.
"""
from __future__ import annotations

import importlib.util

import pytest

from results.timeline import timeline_windows
from runners.base import BenchRequest, RunnerSpec
from runners.openai_runner import OpenAIRunner
from serve_helpers import ServeProcess

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("runners.serve") is None, reason="pie serve is not in this checkout")]


def _calm_burst_calm() -> list[BenchRequest]:
    """One request at a time for 1 s (nobody waits: the limit stays 0 over several scrapes), then 80 at once (8 run,
    each needs 12 of the 20 device blocks: requests wait and the controller grows the pool, however fast the machine),
    with the trickle going on for 8 s, so the engine keeps stepping after the burst drains and the unused pool shrinks.
    A trickle at the arrival rate of the old test (24/s) let a fast machine serve everything with at most a few
    waiting for 0.1 s, between two 0.2 s scrapes."""
    def request(i: int, at: float) -> BenchRequest:
        return BenchRequest(f"r{i}", None, tuple(5 + (7 * i + j) % 40 for j in range(16)), 32, arrival_s=at)

    trickle = [request(i, 0.2 * i) for i in range(45)]
    burst = [request(100 + i, 1.05) for i in range(80)]
    return sorted(trickle + burst, key=lambda r: r.arrival_s)


def test_pool_limit_and_pooled_blocks_appear_and_move_under_adaptive(tmp_path):
    from tiny_hf_model import vllm_model_dir

    model_dir = vllm_model_dir(tmp_path / "opt", "opt")
    server = ServeProcess(model_dir, "--device-blocks", "30", "--pool-blocks", "20", "-O", "block_size=4", "-O", "max_num_seqs=8",
                          "-O", "prefetch_depth=1", "-O", "window_steps=2", "--adaptive", "--served-model-name", "tiny",
                          "--dtype", "float32", log_path=tmp_path / "serve.log")
    try:
        server.wait_ready()
        samples = []
        runner = OpenAIRunner()
        spec = RunnerSpec(model="tiny", options={"base_url": server.url, "scrape_interval_s": 0.2, "request_timeout_s": 120})
        result = runner.run(runner.prepare(spec), _calm_burst_calm(), samples.append)
    finally:
        server.stop()
    assert all(s.success for s in samples), next(s.error for s in samples if not s.success)
    scraped = result.telemetry["server_metrics"]
    assert scraped["kind"] == "pie" and not scraped["token_check"]["mismatch"]
    windows = [w for w in timeline_windows(result.timeline) if w.server is not None]
    limits = [w.server["pie:pool_limit_blocks"] for w in windows]
    pooled = [w.server["pie:pool_blocks_used"] for w in windows]
    log = server.log()
    assert len(set(limits)) > 1 and max(limits) > 0, f"the limit did not move in the scrapes {limits}:\n{log}"
    assert len(set(pooled)) > 1 and max(pooled) > 0, f"the pooled blocks did not move in the scrapes {pooled}:\n{log}"
