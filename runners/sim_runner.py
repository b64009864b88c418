"""The `sim` runner: a workload through the engine's own core (engine_core.py) on a virtual clock.

No model and no torch: the `EngineCore` the real engine steps (scheduler, block manager, finish
rule, `IterationStats`) runs with a `CostModelExecutor` instead of a model runner. Each
iteration the real `Scheduler` decides the batch, the tier moves and the preemptions;
`planner.step_time.step_time` (the function the planner's predictions use) prices it from the
hardware's cost coefficients; the virtual clock advances by that time, and each sampled sequence
gets a dummy token (output lengths come from the workload; a stop token ends a request as in the
engine). The one request loop (`drive_engine`) runs on that clock, so TTFT/TPOT/ITL/E2EL, the
record, its telemetry (`summarize_stats`) and its timeline (`TimelineRecorder`) are those of a
real run.

Hardware: option `hardware` (a datasheet preset) or `profile` (a `pie profile` JSON), as the
resolve step chose it (runners/hardware_source.py; without either it finds this machine's saved
profile). Engine options are the pie runner's (`plan`, ENGINE_OPTIONS); without
`num_device_blocks` a preset's device is filled after weights and activations (as a server
would), a profile's machine gets the pie runner's default. The record's config says `simulated`
and `hardware_source`. Each iteration goes to a `runners.timeline.PoolControl`, built as the pie
runner builds it (`pool_control`: the timeline, and with `adaptive` the pool controller moving
the pool limit). Left out: sampling (tokens are not computed), wall-clock effects the cost model
does not price (see planner/step_time.py), options that only change how the real engine copies.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pie_core.dtypes import dtype_bytes
from pie_core.errors import BadInput
from pie_core.sizes import format_bytes
from planner.budgets import Budgets, activation_workspace_bytes, check_weights_fit
from planner.cost_model import ModelCosts, model_costs
from planner.hardware import HardwareSpec
from planner.step_time import IterationWork, step_time
from planner.tune import check_profile_matches
from runners.base import BenchRequest, PreparedRun, RequestDone, RunnerResult, RunnerSpec
from runners.engine.block_manager import CacheLayout
from runners.engine.config import EngineConfig, check_request
from runners.engine.engine_core import EngineCore
from runners.engine.outputs import StepResult
from runners.engine.sampling_params import SamplingParams
from runners.engine.scheduler import SchedulerOutput
from runners.engine.sequence import POOL
from runners.engine.sequence import Sequence as EngineSequence
from runners.hardware_source import explicit_source
from runners.pie_runner import (
    controller_config_from_spec,
    engine_config_from_spec,
    pool_control,
    summarize_stats,
    with_plan,
)
from runners.request_loop import TokenDelta, drive_engine
from runners.timeline import PoolControl, TimelineRecorder

SIM_OPTIONS = ("hardware", "profile")
CANNOT_VARY = {"copy_worker": "whether copies overlap compute is the hardware's (a CPU copies on its compute cores)",
               "batch_size": "the batch is the scheduler's each iteration; vary max_num_seqs"}
DUMMY_TOKEN = 0


@dataclass(frozen=True)
class SimTarget:
    """What is simulated: the hardware, where its figures come from, the engine config, the coefficients."""

    hardware: HardwareSpec
    source: str  # "preset h100-pcie" | "profile PATH"
    config: EngineConfig
    costs: ModelCosts


class VirtualClock:
    """The run's clock: `advance` by each iteration's predicted time; `sleep` jumps to the next arrival."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


def load_hardware(options: dict[str, Any]) -> tuple[HardwareSpec, str]:
    """The preset or profile the options name (runners/hardware_source.py decides and loads it)."""
    source = explicit_source(options.get("hardware"), options.get("profile"))
    if source is None:
        raise BadInput("the sim runner needs a hardware source", "pass --hardware PRESET (e.g. h100-pcie) or --profile FILE")
    return source.spec, source.label


def sim_target(spec: RunnerSpec) -> SimTarget:
    """Resolve hardware, engine config and coefficients; every bad input fails here, before a record."""
    for key, why in CANNOT_VARY.items():
        if key in spec.options:
            raise BadInput(f"the simulator cannot vary {key}: {why}", f"drop {key} (or run it on --runner pie)")
    hardware, source = load_hardware(spec.options)
    engine_options = {k: v for k, v in spec.options.items() if k not in SIM_OPTIONS}
    config = engine_config_from_spec(dataclasses.replace(spec, device=hardware.device, options=engine_options))
    shape = config.shape
    check_profile_matches(hardware, shape, config.dtype)
    budgets = Budgets(hardware.device_memory_bytes, hardware.host_memory_bytes, block_size=config.block_size,
                      max_num_batched_tokens=config.max_num_batched_tokens)
    weights = shape.weight_bytes(config.dtype)
    check_weights_fit(shape, weights, budgets)
    block_bytes = shape.kv_bytes_per_token(config.dtype) * config.block_size
    workspace = activation_workspace_bytes(shape, dtype_bytes(config.dtype), config.max_num_seqs, config.max_num_batched_tokens)
    free = budgets.usable_device_bytes() - weights - workspace
    fits = int(free // block_bytes)
    given = "num_device_blocks" in engine_options or bool(engine_options.get("plan"))
    if not given and hardware.source == "preset":
        if fits < 1:
            raise BadInput(f"{shape.name} leaves no room for KV on {hardware.name}: {format_bytes(weights)} of weights and "
                           f"activations fill {format_bytes(budgets.usable_device_bytes())}",
                           "pick a preset with more device memory (e.g. h200) or a smaller model")
        config = config.replace(num_device_blocks=fits)
    elif config.num_device_blocks > fits:
        raise BadInput(f"num_device_blocks {config.num_device_blocks} ({format_bytes(config.num_device_blocks * block_bytes)}) "
                       f"does not fit {hardware.name} beside {shape.name}'s {format_bytes(weights)} of weights",
                       f"give at most {max(0, fits)} device blocks, or a preset with more device memory")
    if config.num_pool_blocks * block_bytes > hardware.host_memory_bytes:
        raise BadInput(f"num_pool_blocks {config.num_pool_blocks} ({format_bytes(config.num_pool_blocks * block_bytes)}) "
                       f"exceeds the {format_bytes(hardware.host_memory_bytes)} of host memory of {hardware.name}",
                       f"give at most {hardware.host_memory_bytes // block_bytes} pool blocks")
    CacheLayout.from_config(config, shape.num_layers)  # budgets that cannot hold the staging fail here
    return SimTarget(hardware, source, config, model_costs(shape, hardware, config.dtype))


class CostModelExecutor:
    """The engine core's executor with no tensors: each iteration is priced by `step_time` and advances `clock`."""

    def __init__(self, core: EngineCore, costs: ModelCosts, clock: VirtualClock, keep_work: bool = False):
        """`keep_work`: keep each iteration's (IterationWork, StepTime) in `works` (calibration reads them)."""
        config, shape, layout = core.config, core.config.shape, core.layout
        self.core, self.costs, self.clock = core, costs, clock
        self.block_manager, self.scheduler = core.block_manager, core.scheduler
        self.works: list[tuple[IterationWork, Any]] | None = [] if keep_work else None
        self.depth = max(1, layout.prefetch_depth)
        self.block_size = config.block_size
        self.block_bytes = shape.kv_bytes_per_token(config.dtype) * config.block_size
        self.activation_block_bytes = shape.activation_bytes_per_token(config.dtype) * config.block_size
        self.capture_bytes_per_token = shape.activation_bytes_per_token(config.dtype) if layout.num_pool_rebuild_blocks else 0

    def _pooled_of(self, seq: EngineSequence) -> tuple[int, int]:
        """(K/V-kind, rebuild-kind) pooled blocks of one sequence."""
        kv = rebuild = 0
        for ref in seq.block_table:
            if ref.tier == POOL:
                if self.block_manager.is_rebuild(ref.index):
                    rebuild += 1
                else:
                    kv += 1
        return kv, rebuild

    def _streamed_blocks(self, out: SchedulerOutput) -> tuple[int, int]:
        """Pooled blocks this forward reads: all pooled blocks, less those of running sequences it does not read."""
        manager = self.block_manager
        if not manager.pool_used:
            return 0, 0
        kv, rebuild = manager.pool_used - manager.num_rebuild_used, manager.num_rebuild_used
        prefix_chunks = [seq for seq in out.prefill if seq.num_computed_tokens]
        if len(out.decode) + len(prefix_chunks) == len(self.scheduler.running):
            return kv, rebuild  # every running sequence reads this iteration (the common case)
        readers = {id(seq) for seq in out.decode} | {id(seq) for seq in prefix_chunks}
        for seq in self.scheduler.running:
            if id(seq) not in readers:
                skip_kv, skip_rebuild = self._pooled_of(seq)
                kv, rebuild = kv - skip_kv, rebuild - skip_rebuild
        return kv, rebuild

    def work(self, out: SchedulerOutput) -> tuple[IterationWork, int, int]:
        """This iteration's `IterationWork`, and its bytes to the device and to the pool."""
        pairs = 0
        for seq in out.prefill:
            prefix, end = seq.num_computed_tokens, seq.num_computed_tokens + seq.num_scheduled_tokens
            pairs += end * end - prefix * prefix
        kv, rebuild = self._streamed_blocks(out)
        rebuild_restores = sum(1 for move in out.restores if move.rebuild)
        rebuild_evictions = sum(1 for move in out.evictions if move.rebuild)
        restore_bytes = ((len(out.restores) - rebuild_restores) * self.block_bytes
                         + rebuild_restores * self.activation_block_bytes)
        evict_bytes = ((len(out.evictions) - rebuild_evictions) * self.block_bytes
                       + rebuild_evictions * self.activation_block_bytes)
        num_prefill_tokens = out.num_prefill_tokens
        capture = self.capture_bytes_per_token * (num_prefill_tokens + len(out.decode))
        streamed = kv * self.block_bytes + rebuild * self.activation_block_bytes
        work = IterationWork(
            num_decode=len(out.decode), decode_context_tokens=sum(seq.num_tokens for seq in out.decode),
            num_prefill_tokens=num_prefill_tokens, prefill_attention_pairs=pairs,
            num_sampled=len(out.decode) + sum(1 for seq in out.prefill if seq.completes_this_step),
            streamed_bytes=streamed, rebuilt_tokens=(rebuild + rebuild_restores) * self.block_size,
            moved_bytes=restore_bytes + evict_bytes + capture)
        return work, restore_bytes + streamed, evict_bytes + capture

    def execute(self, scheduled: SchedulerOutput) -> StepResult:
        work, h2d, d2h = self.work(scheduled)
        predicted = step_time(self.costs, work, self.depth, num_sequences=len(scheduled.prefill) + len(scheduled.decode))
        self.clock.now += float(predicted.total_s)
        if self.works is not None:
            self.works.append((work, predicted))
        return StepResult(tokens=[DUMMY_TOKEN] * int(work.num_sampled), compute_s=float(predicted.forward_s),
                          stall_s=float(predicted.stall_s), h2d_bytes=int(h2d), d2h_bytes=int(d2h),
                          rebuilt_tokens=int(work.rebuilt_tokens))


class SimStepEngine:
    """The engine core with a `CostModelExecutor` behind `StepEngine`, on a virtual clock."""

    name = "sim"

    def __init__(self, target: SimTarget, clock: VirtualClock, make_control: Callable[..., PoolControl] | None = None,
                 keep_work: bool = False):
        """`make_control(set_limit, start, pool_blocks_needed)`: the run's PoolControl (default: a timeline of 16-step
        windows, no controller); `keep_work`: the executor keeps each iteration's work (`works`)."""
        self.config, self.clock = target.config, clock
        self.core = EngineCore(target.config, lambda core: CostModelExecutor(core, target.costs, clock, keep_work),
                               clock=clock)
        self.layout, self.block_manager, self.scheduler = self.core.layout, self.core.block_manager, self.core.scheduler
        self.stats, self.executor = self.core.stats, self.core.executor
        self.works = self.executor.works
        self.block_bytes = self.executor.block_bytes
        needed = self.scheduler.pool_blocks_needed
        self.control = (make_control(self.set_pool_limit, clock(), needed) if make_control is not None
                        else PoolControl(TimelineRecorder(clock(), 16, pool_blocks_needed=needed)))
        self.vocab_size, self._order = target.config.shape.vocab_size, 0

    def add(self, request: BenchRequest) -> None:
        """Refuse what the engine refuses (`runners.engine.config.check_request`), then queue a sequence."""
        prompt = list(request.prompt_token_ids)
        check_request(request.request_id, prompt, request.output_len, self.config, self.vocab_size,
                      self.layout.num_device_blocks)
        params = SamplingParams(max_tokens=request.output_len, ignore_eos=True)
        self.scheduler.add(EngineSequence(request.request_id, prompt, params, self.clock(), self._order))
        self._order += 1

    def set_pool_limit(self, num_blocks: int) -> None:
        self.core.set_pool_limit(num_blocks)

    def step(self) -> list[TokenDelta]:
        scheduled, committed = self.core.step()
        if scheduled.is_empty:
            return []
        now = self.clock.now
        self.control.after_step(self.stats[-1], now, len(committed))
        return [TokenDelta(seq.request_id, (token,), reason is not None, (now,)) for seq, token, reason in committed]


def sim_fingerprint(_device: str = "cpu") -> dict[str, Any]:
    """The machine that ran the simulation, without torch (pie_core.fingerprint's torch-free fields)."""
    from pie_core.fingerprint import cpu_model, hostname_hash
    from pie_core.sizes import total_host_bytes

    return {"cpu_model": cpu_model(), "cpu_cores": os.cpu_count(), "host_memory_bytes": total_host_bytes(),
            "gpu_name": None, "python_version": platform.python_version(),
            "os": f"{platform.system()} {platform.release()}", "hostname_sha256": hostname_hash(), "simulated": True}


class SimRunner:
    name = "sim"

    def prepare(self, spec: RunnerSpec) -> PreparedRun:
        spec = with_plan(spec)
        target = sim_target(spec)
        controller = controller_config_from_spec(spec, target.config.num_pool_blocks)
        hw = target.hardware
        described = {**dataclasses.asdict(target.config), "simulated": True, "hardware_source": target.source,
                     "hardware": hw.name, "hardware_label": hw.label, "cost_coefficients": target.costs.source,
                     "num_resident_device_blocks": CacheLayout.from_config(target.config, target.config.shape.num_layers).num_device_blocks}
        if spec.options.get("plan"):
            described["plan"] = str(spec.options["plan"])
        return PreparedRun(spec, described, sim_fingerprint(spec.device), (target, controller))

    def run(self, prepared: PreparedRun, requests: Sequence[BenchRequest], on_request_done: RequestDone) -> RunnerResult:
        began = time.perf_counter()
        spec, (target, controller) = prepared.spec, prepared.state
        clock = VirtualClock()
        engine = SimStepEngine(target, clock, lambda set_limit, start, needed: pool_control(
            spec, controller, set_limit, start, needed))
        driven = drive_engine(engine, requests, spec.max_concurrency, spec.save_outputs, on_request_done,
                              clock=clock, sleep=clock.sleep)
        shape, config = engine.config.shape, engine.config
        peak_blocks = max((s.device_blocks_used for s in engine.stats), default=0) + engine.layout.staging_charge_blocks
        telemetry = {**summarize_stats(engine.stats, driven.duration_s), "simulated": True,
                     "simulated_s": clock.now, "simulator_wall_s": time.perf_counter() - began,
                     "simulated_peak_device_bytes": shape.weight_bytes(config.dtype) + peak_blocks * engine.block_bytes}
        return RunnerResult(duration_s=driven.duration_s, config=prepared.config, telemetry=telemetry,
                            timeline=tuple(engine.control.recorder.close()))
