"""The `pie` runner: the Pie engine in-process, configured from a `Plan` (`--plan`) or engine flags.

The engine is driven by the one request loop (`runners.request_loop.drive_engine`): requests are
handed to `LLMEngine.add_request` no earlier than their release time (and with no more than
`max_concurrency` in flight), greedy with `ignore_eos` so each makes exactly its `output_len`
tokens; the engine's per-token timestamps give TTFT/ITL/E2EL. One short untimed
warm-up request runs first (its time is reported as `warmup_s`). A request the
engine refuses (too long for the budgets) is a failed sample, not an error. Telemetry sums
the engine's `IterationStats`: stall fraction, bytes over the link each way, pool and device
block use, preemptions, rebuilt tokens.

Options (runner-specific, in `RunnerSpec.options`): `plan` (path to a `pie tune` plan; its
model must match `--model`), and any `EngineConfig` field in ENGINE_OPTIONS, which override
the plan's settings; `adaptive` (or a plan with `adaptive: true`) moves the pool limit while the
workload runs (planner/pool_controller.py), within `num_pool_blocks`, after every window of
`window_steps` iterations or `window_s` seconds. Every run keeps a timeline of those windows (results/timeline.py) in its record.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pie_core.errors import BadInput
from pie_core.inputs import OptionType, parse_options
from pie_core.shapes import resolve_model
from runners.base import (
    BenchRequest,
    PreparedRun,
    RequestDone,
    RunnerResult,
    RunnerSpec,
    machine_fingerprint,
    peak_host_memory_bytes,
)
from runners.engine.settings import option_types
from runners.request_loop import TokenDelta, drive_engine

# `-O` options: every engine setting (declared once, runners/engine/settings.py; ranges are its own checks),
# then the controller's and the plan's.
ENGINE_OPTIONS: dict[str, OptionType] = option_types()
CONTROL_OPTIONS: dict[str, OptionType] = {
    "adaptive": OptionType(bool), "window_steps": OptionType(int, minimum=1, example="16"),
    "window_s": OptionType(float, above=0, example="0.5"), "max_stall_fraction": OptionType(float, example="0.1")}
PIE_OPTIONS: dict[str, OptionType] = {**ENGINE_OPTIONS, **CONTROL_OPTIONS, "plan": OptionType(str, example="plan.json")}
DEFAULT_WINDOW_STEPS = 16
DEFAULT_WINDOW_S = 0.5  # a window also closes after this long (long prefill steps)
# On a CPU the "link" is a memcpy on the compute's own cores: pooled copies never hide, they buy
# batch: benchmarks/bench_adaptive_phases.py finds the best static pools running the burst well
# above the GPU's limit, and the controller backing off at this one matches the best static pool's
# burst throughput (the figures: docs/adaptive-and-traces.md); on a GPU, where copies should hide on
# the copy engine, the controller's 10 % stands.
CPU_MAX_STALL_FRACTION = 0.20


def _same_model(plan_model: str, model: str) -> bool:
    plan_shape, shape = resolve_model(plan_model), resolve_model(model)
    return dataclasses.replace(plan_shape, name="") == dataclasses.replace(shape, name="")


def engine_config_from_spec(spec: RunnerSpec) -> Any:
    """The `EngineConfig` for this run: plan settings (if any), then explicit engine options on top."""
    from runners.engine.config import EngineConfig

    options = parse_options("pie runner", spec.options, PIE_OPTIONS)
    settings: dict[str, Any] = {"dtype": spec.dtype}
    plan, plan_path = plan_of(spec), options.get("plan")
    if plan is not None:
        if not _same_model(plan.model, spec.model):
            raise BadInput(f"plan '{plan_path}' is for model '{plan.model}', not '{spec.model}'",
                           f"run with --model {plan.model}, or make a plan for this model with `pie tune --model {spec.model}`")
        # The dtype is the run's (`pie bench --dtype auto` resolves to the plan's; an explicit one wins).
        settings.update(plan.settings.to_dict())
    settings.update({k: v for k, v in options.items() if k in ENGINE_OPTIONS and v is not None})
    return EngineConfig(model=spec.model, device=spec.device, seed=spec.seed, **settings)


def control_option(spec: RunnerSpec, name: str, default: Any = None) -> Any:
    """One control option (CONTROL_OPTIONS, or the plan's path) of `spec`, parsed by its declared type."""
    value = spec.options.get(name)
    return default if value is None else PIE_OPTIONS[name].parse("pie runner", name, value)


def plan_of(spec: RunnerSpec) -> Any:
    """The run's plan: loaded once by the resolve step (`spec.plan`), or read here when a caller built the
    spec by hand with only the path (`options["plan"]`)."""
    if spec.plan is not None or not spec.options.get("plan"):
        return spec.plan
    from planner.plan import Plan

    return Plan.load(Path(str(spec.options["plan"])))


def with_plan(spec: RunnerSpec) -> RunnerSpec:
    """`spec` with its plan loaded (once), for a spec built by hand with only `options["plan"]`."""
    return dataclasses.replace(spec, plan=plan_of(spec)) if spec.plan is None and spec.options.get("plan") else spec


def plan_asks_adaptive(spec: RunnerSpec) -> bool:
    plan = plan_of(spec)
    return bool(plan is not None and plan.adaptive)


def window_of(spec: RunnerSpec) -> tuple[int, float]:
    """(window_steps, window_s): a timeline window closes after that many iterations or seconds."""
    return control_option(spec, "window_steps", DEFAULT_WINDOW_STEPS), float(control_option(spec, "window_s", DEFAULT_WINDOW_S))


def controller_config_from_spec(spec: RunnerSpec, num_pool_blocks: int) -> Any:
    """The adaptive pool controller's settings when `adaptive` (or the plan's) asks for one, else None."""
    if not (control_option(spec, "adaptive", False) or plan_asks_adaptive(spec)):
        return None
    if num_pool_blocks < 1:
        raise BadInput("--adaptive needs a pool to size, but this run has no pool blocks",
                       "give its capacity with --pool-blocks N (or a plan with a pool)")
    from planner.pool_controller import ControllerConfig

    stall = control_option(spec, "max_stall_fraction", CPU_MAX_STALL_FRACTION if spec.device == "cpu" else None)
    return ControllerConfig(capacity_blocks=num_pool_blocks, **({"max_stall_fraction": float(stall)} if stall is not None else {}))


def pool_control(spec: RunnerSpec, config: Any, set_limit: Any, start: float, pool_blocks_needed: Any = None) -> Any:
    """The timeline recorder, with the adaptive pool controller when `config` (a prepared run's
    `ControllerConfig`, or None) asks for one; `pool_blocks_needed` is the scheduler's
    (`Scheduler.pool_blocks_needed`), read once per window."""
    from runners.timeline import PoolControl, TimelineRecorder

    recorder = TimelineRecorder(start, *window_of(spec), pool_blocks_needed=pool_blocks_needed)
    if config is None:
        return PoolControl(recorder)
    from planner.pool_controller import PoolController

    return PoolControl(recorder, PoolController(config), set_limit)


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

    def prepare(self, spec: RunnerSpec) -> PreparedRun:
        """The engine config and effective settings, checked before anything runs (bad options, plans, weights
        and memory fit fail here); the plan is read at most once."""
        spec = with_plan(spec)
        config = engine_config_from_spec(spec)
        from runners.engine.loader import check_weights, has_weights
        from runners.engine.memory_fit import check_engine_fits

        window_of(spec)  # bad window or controller settings fail here, before any record
        controller = controller_config_from_spec(spec, config.num_pool_blocks)
        path = Path(spec.model).expanduser()
        random_weights = not (path.is_dir() and has_weights(path)) if config.random_weights is None else config.random_weights
        if not random_weights:
            check_weights(config.shape, path)  # corrupt, truncated or wrong-shape weights: here, not mid-run
        check_engine_fits(config)  # staging beyond the budget, or more memory than is free (a plan for another machine)
        described = dataclasses.asdict(config)
        described["random_weights"] = random_weights
        if spec.options.get("plan"):
            described["plan"] = str(spec.options["plan"])
        described["adaptive"] = controller is not None
        return PreparedRun(spec, described, machine_fingerprint(spec.device), (config, controller))

    def run(self, prepared: PreparedRun, requests: Sequence[BenchRequest], on_request_done: RequestDone) -> RunnerResult:
        from runners.engine.llm_engine import LLMEngine

        config, _ = prepared.state
        with LLMEngine(config) as engine:  # closed when the run ends, however it ends
            return self._run_engine(engine, prepared, requests, on_request_done)

    def _run_engine(self, engine: Any, prepared: PreparedRun, requests: Sequence[BenchRequest],
                    on_request_done: RequestDone) -> RunnerResult:
        import torch

        from runners.engine.sampling_params import SamplingParams

        spec, (_, controller) = prepared.spec, prepared.state
        described = {**prepared.config, "num_resident_device_blocks": engine.num_device_blocks,
                     "random_weights": bool(engine.model.random_weights), "kernels": engine.kernels.to_dict()}
        warmup_s = _warm_up(engine, requests, SamplingParams)
        first_step = len(engine.stats)
        device = torch.device(spec.device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        control = pool_control(spec, controller, engine.set_pool_limit, time.perf_counter(),
                               engine.scheduler.pool_blocks_needed)
        driven = drive_engine(_PieStepEngine(engine, SamplingParams, control), requests, spec.max_concurrency,
                              spec.save_outputs, on_request_done,
                              hold_for_arrivals=spec.precise_arrivals)
        peak_device = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
        telemetry = {**summarize_stats(engine.stats[first_step:], driven.duration_s), "warmup_s": warmup_s}
        return RunnerResult(duration_s=driven.duration_s, config=described, telemetry=telemetry,
                            peak_device_memory_bytes=peak_device, peak_host_memory_bytes=peak_host_memory_bytes(),
                            timeline=tuple(control.recorder.close()))


class _PieStepEngine:
    """The Pie engine behind `runners.request_loop.StepEngine`: greedy, ignore_eos, exactly `output_len` tokens.

    Token times are the engine's own (stamped when the step that sampled them returns). Each
    iteration goes to `control` (runners/timeline.py PoolControl): the timeline, and the adaptive
    pool controller when there is one.
    """

    name = "pie"

    def __init__(self, engine: Any, params_cls: Any, control: Any = None):
        self.engine, self.params_cls, self.control = engine, params_cls, control
        self.emitted: dict[str, int] = {}

    def add(self, request: BenchRequest) -> None:
        params = self.params_cls(max_tokens=request.output_len, temperature=0.0, ignore_eos=True)
        self.engine.add_request(request.request_id, list(request.prompt_token_ids), params)  # BadInput: refused
        self.emitted[request.request_id] = 0

    def step(self) -> list[TokenDelta]:
        num_stats = len(self.engine.stats)
        deltas = []
        for output in self.engine.step():
            seen = self.emitted.get(output.request_id)
            if seen is None:
                continue
            error = output.error or (f"finished with {output.finish_reason}"
                                     if output.finish_reason in ("error", "abort") else None)
            deltas.append(TokenDelta(output.request_id, output.output_token_ids[seen:], output.finished,
                                     output.token_times[seen:], error))
            self.emitted[output.request_id] = len(output.output_token_ids)
            if output.finished:
                del self.emitted[output.request_id]
        if self.control is not None and len(self.engine.stats) > num_stats:
            self.control.after_step(self.engine.stats[-1], time.perf_counter(), sum(len(d.token_ids) for d in deltas))
        return deltas
