"""The `pie` runner: the Pie engine in-process, configured from a `Plan` (`--plan`) or engine flags.

Requests are handed to `LLMEngine.add_request` no earlier than their release time (and with
no more than `max_concurrency` in flight), greedy with `ignore_eos` so each makes exactly its
`output_len` tokens; the engine's per-token timestamps give TTFT/ITL/E2EL. One short untimed
warm-up request runs first (its time is reported as `warmup_s`). A request the
engine refuses (too long for the budgets) is a failed sample, not an error. Telemetry sums
the engine's `IterationStats`: stall fraction, bytes over the link each way, pool and device
block use, preemptions, rebuilt tokens.

Options (runner-specific, in `RunnerSpec.options`): `plan` (path to a `pie tune` plan; its
model must match `--model`), and any `EngineConfig` field in ENGINE_OPTIONS, which override
the plan's settings. Left out: adaptive pool sizing during a bench (that is `pie tune --online`).
"""
from __future__ import annotations

import dataclasses
import itertools
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pie_cli.errors import BadInput, suggest
from planner.shapes import resolve_model
from runners.base import (BenchRequest, RequestDone, RunnerResult, RunnerSpec, failed_sample, injected_slowdown_fraction,
                          peak_host_memory_bytes, sample_from_token_times)

ENGINE_OPTIONS = ("block_size", "num_device_blocks", "num_pool_blocks", "prefetch_depth", "copy_worker",
                  "rebuild_fraction", "max_num_batched_tokens", "max_num_seqs", "max_model_len")


def _same_model(plan_model: str, model: str) -> bool:
    plan_shape, shape = resolve_model(plan_model), resolve_model(model)
    return dataclasses.replace(plan_shape, name="") == dataclasses.replace(shape, name="")


def engine_config_from_spec(spec: RunnerSpec) -> Any:
    """The `EngineConfig` for this run: plan settings (if any), then explicit engine options on top."""
    from runners.engine.config import EngineConfig

    unknown = sorted(set(spec.options) - set(ENGINE_OPTIONS) - {"plan"})
    if unknown:
        raise BadInput(f"pie runner: unknown option(s) {', '.join(unknown)}", suggest(unknown[0], ENGINE_OPTIONS))
    settings: dict[str, Any] = {"dtype": spec.dtype}
    plan_path = spec.options.get("plan")
    if plan_path:
        from planner.plan import Plan

        plan = Plan.load(Path(plan_path))
        if not _same_model(plan.model, spec.model):
            raise BadInput(f"plan '{plan_path}' is for model '{plan.model}', not '{spec.model}'",
                           f"run with --model {plan.model}, or make a plan for this model with `pie tune --model {spec.model}`")
        # The dtype is the run's (`pie bench --dtype auto` resolves to the plan's; an explicit one wins).
        settings.update({k: v for k, v in plan.settings.engine_kwargs().items() if k not in ("model", "dtype")})
    settings.update({k: v for k, v in spec.options.items() if k in ENGINE_OPTIONS and v is not None})
    return EngineConfig(model=spec.model, device=spec.device, seed=spec.seed, **settings)


def summarize_stats(stats: Sequence[Any], duration_s: float) -> dict[str, Any]:
    """Engine telemetry over a run, from its `IterationStats`."""
    compute_s = sum(s.compute_s for s in stats)
    stall_s = sum(s.stall_s for s in stats)
    h2d, d2h = sum(s.h2d_bytes for s in stats), sum(s.d2h_bytes for s in stats)
    return {
        "num_steps": len(stats), "compute_s": compute_s, "stall_s": stall_s,
        "stall_fraction": stall_s / (compute_s + stall_s) if compute_s + stall_s > 0 else 0.0,
        "h2d_bytes": h2d, "d2h_bytes": d2h,
        "h2d_gbps_over_run": h2d / duration_s / 1e9 if duration_s > 0 else 0.0,
        "peak_pool_blocks_used": max((s.pool_blocks_used for s in stats), default=0),
        "peak_device_blocks_used": max((s.device_blocks_used for s in stats), default=0),
        "pool_limit_blocks": stats[-1].pool_limit_blocks if stats else None,
        "num_preemptions": sum(s.num_preempted for s in stats),
        "rebuilt_tokens": sum(s.rebuilt_tokens for s in stats),
        "mean_batch_size": sum(s.batch_size for s in stats) / len(stats) if stats else 0.0,
        "max_batch_size": max((s.batch_size for s in stats), default=0),
        "num_prefill_tokens": sum(s.num_prefill_tokens for s in stats),
        "num_decode_tokens": sum(s.num_decode_tokens for s in stats),
    }


def _warm_up(engine: Any, requests: Sequence[BenchRequest], params_cls: Any) -> float:
    """One short untimed request (the first prompt, 2 tokens) so one-time start-up costs stay out of the timings."""
    if not requests:
        return 0.0
    began = time.perf_counter()
    try:
        engine.add_request("__pie_warmup__", list(requests[0].prompt_token_ids), params_cls(max_tokens=2, ignore_eos=True))
    except BadInput:
        return 0.0  # the request itself will be refused and counted as failed
    while engine.has_unfinished_requests():
        engine.step()
    return time.perf_counter() - began


class PieRunner:
    name = "pie"

    def describe(self, spec: RunnerSpec) -> dict[str, Any]:
        """The effective engine settings, before anything runs (bad options and plans fail here)."""
        config = engine_config_from_spec(spec)
        from runners.engine.block_manager import CacheLayout
        from runners.engine.loader import has_weights

        CacheLayout.from_config(config, config.shape.num_layers)  # budgets that cannot hold the staging fail here

        path = Path(spec.model).expanduser()
        described = dataclasses.asdict(config)
        described["random_weights"] = not (path.is_dir() and has_weights(path)) if config.random_weights is None else config.random_weights
        if spec.options.get("plan"):
            described["plan"] = str(spec.options["plan"])
        return described

    def run(self, requests: Sequence[BenchRequest], spec: RunnerSpec, on_request_done: RequestDone) -> RunnerResult:
        import torch

        from runners.engine.llm_engine import LLMEngine
        from runners.engine.sampling_params import SamplingParams

        described = self.describe(spec)
        engine = LLMEngine(engine_config_from_spec(spec))
        described.update(num_resident_device_blocks=engine.num_device_blocks, random_weights=bool(engine.model.random_weights),
                         kernels=engine.kernels.to_dict())
        warmup_s = _warm_up(engine, requests, SamplingParams)
        first_step = len(engine.stats)
        device = torch.device(spec.device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        slowdown = injected_slowdown_fraction()
        pending = deque(sorted(requests, key=lambda r: r.arrival_s))
        in_flight: dict[str, tuple[BenchRequest, float]] = {}
        held: set[str] = set()  # arrived while max_concurrency requests were in flight
        limit = spec.max_concurrency
        start = time.perf_counter()
        while pending or in_flight:
            while pending and pending[0].arrival_s <= time.perf_counter() - start and (limit is None or len(in_flight) < limit):
                request = pending.popleft()
                # A request is sent at its arrival time; waiting for the next step is server-side queueing and
                # counts in TTFT (as in vLLM's serving bench). Held back by --max-concurrency, it is sent when a
                # slot frees, which is now.
                release = time.perf_counter() if request.request_id in held else start + request.arrival_s
                params = SamplingParams(max_tokens=request.output_len, temperature=0.0, ignore_eos=True)
                try:
                    engine.add_request(request.request_id, list(request.prompt_token_ids), params, arrival_time=release)
                except BadInput as err:
                    on_request_done(failed_sample(request, err.one_line()))
                    continue
                in_flight[request.request_id] = (request, release)
            if not in_flight:
                if pending:
                    time.sleep(max(0.0, pending[0].arrival_s - (time.perf_counter() - start)))
                continue
            step_start = time.perf_counter()
            outputs = engine.step()
            if limit is not None and len(in_flight) >= limit:  # every slot was busy through this step
                now = time.perf_counter() - start
                held.update(r.request_id for r in itertools.takewhile(lambda r: r.arrival_s <= now, pending))
            for output in outputs:
                if not output.finished or output.request_id not in in_flight:
                    continue
                request, release = in_flight.pop(output.request_id)
                if output.finish_reason in ("error", "abort") or output.error:
                    on_request_done(failed_sample(request, output.error or f"finished with {output.finish_reason}"))
                else:
                    on_request_done(sample_from_token_times(request, start, release, output.token_times,
                                                            output.output_token_ids, spec.save_outputs))
            if slowdown:
                time.sleep(slowdown * (time.perf_counter() - step_start))
        duration = time.perf_counter() - start
        peak_device = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
        telemetry = {**summarize_stats(engine.stats[first_step:], duration), "warmup_s": warmup_s}
        return RunnerResult(duration_s=duration, config=described, telemetry=telemetry, peak_device_memory_bytes=peak_device, peak_host_memory_bytes=peak_host_memory_bytes())
