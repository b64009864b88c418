"""The planner's front door: a `TuneRequest` in, a `Plan` out (search, baseline, explanation).

Checks what makes a request unplannable before searching (weights over the device budget,
budgets beyond the machine, a profile measured for another model or dtype) and turns the best
prediction into engine settings in blocks. Left out: the online refinement (hill_climber.py,
runners/online_tuner.py) and any I/O beyond building the Plan object.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import datetime, timezone

from pie_core.dtypes import canonical_dtype
from pie_core.errors import BadInput
from pie_core.shapes import ModelShape
from planner.budgets import Budgets, WorkloadStats, check_weights_fit
from planner.cost_model import Prediction, Problem, model_costs
from planner.explain import explain
from planner.hardware import HardwareSpec
from planner.plan import Performance, Plan
from runners.engine.settings import EngineSettings
from planner.search import search, without_pool


@dataclass(frozen=True)
class TuneRequest:
    shape: ModelShape
    dtype: str
    hardware: HardwareSpec
    budgets: Budgets
    workload: WorkloadStats
    max_tpot_ms: float | None = None
    max_batch_size: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        if self.max_tpot_ms is not None and not self.max_tpot_ms > 0:
            raise BadInput(f"--max-tpot-ms must be positive, got {self.max_tpot_ms:g}")
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise BadInput(f"--max-num-seqs must be at least 1, got {self.max_batch_size}")


def check_profile_matches(hardware: HardwareSpec, shape: ModelShape, dtype: str) -> None:
    """A measured profile is only used for the model and dtype it timed."""
    if hardware.source != "profile":
        return
    profiled = (hardware.profiled_model or "").strip().lower().split("/")[-1]
    if profiled != shape.name.strip().lower().split("/")[-1]:
        raise BadInput(f"the profile timed layers of '{hardware.profiled_model}', not '{shape.name}'",
                       f"run `pie profile --model {shape.name}` or use --hardware PRESET")
    if hardware.profile_dtype and canonical_dtype(hardware.profile_dtype) != dtype:
        raise BadInput(f"the profile was measured in {hardware.profile_dtype}, not {dtype}",
                       f"pass --dtype {hardware.profile_dtype} or re-run `pie profile --dtype {dtype}`")


def problem_for(request: TuneRequest) -> Problem:
    request.budgets.check_physical(request.hardware.device_memory_bytes, request.hardware.host_memory_bytes,
                                   request.hardware.name)
    check_profile_matches(request.hardware, request.shape, request.dtype)
    check_weights_fit(request.shape, request.shape.weight_bytes(request.dtype), request.budgets)
    return Problem(request.shape, request.dtype, model_costs(request.shape, request.hardware, request.dtype),
                   request.budgets, request.workload)


def performance(problem: Problem, prediction: Prediction) -> Performance:
    layers = problem.costs.num_layers
    return Performance(
        batch_size=prediction.batch_size, output_tok_s=prediction.output_tok_s, tpot_ms=prediction.tpot_ms,
        decode_step_ms=prediction.decode_step_s * 1e3, stall_ms_per_step=prediction.stall_step_s * 1e3,
        pooled_fraction=min(1.0, prediction.pooled_bytes / problem.kv_need_bytes(prediction.batch_size)),
        device_kv_bytes=int(prediction.split.device_kv_bytes), pool_bytes=int(prediction.pooled_bytes),
        rebuilt_bytes=int(prediction.split.rebuilt_kv_bytes), staging_bytes=int(prediction.split.staging_bytes),
        streamed_bytes_per_step=int(prediction.streamed_bytes_per_step),
        copy_ms_per_step=prediction.copy_layer_s * layers * 1e3, compute_ms_per_step=prediction.compute_layer_s * layers * 1e3)


def settings_for(request: TuneRequest, problem: Problem, prediction: Prediction) -> EngineSettings:
    block = problem.block_bytes
    split = prediction.split
    pooled = split.copied_kv_bytes + split.rebuilt_kv_bytes
    # The engine takes the device KV budget including staging and charges staging against it itself.
    return EngineSettings(
        block_size=request.budgets.block_size,
        num_device_blocks=max(1, int((split.device_kv_bytes + split.staging_bytes) // block)),
        num_pool_blocks=int(math.ceil(pooled / block - 1e-9)) if pooled > 0 else 0,
        prefetch_depth=prediction.prefetch_depth,
        rebuild_fraction=round(split.rebuilt_kv_bytes / pooled, 4) if pooled > 0 else 0.0,
        max_num_seqs=prediction.batch_size, max_num_batched_tokens=request.budgets.max_num_batched_tokens)


def make_plan(request: TuneRequest) -> Plan:
    problem = problem_for(request)
    result = search(problem, request.max_tpot_ms, request.max_batch_size)
    baseline = search(without_pool(problem), None, request.max_batch_size)
    binding, lines = explain(problem, result, baseline.best, request.max_tpot_ms)
    hw = request.hardware
    return Plan(
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), model=request.shape.name, dtype=request.dtype,
        hardware={"name": hw.name, "source": hw.source, "label": hw.label, "link_h2d_gbps": hw.link_h2d_gbps,
                  "memory_bandwidth_gbps": hw.memory_bandwidth_gbps, "matmul_tflops": hw.matmul_tflops,
                  "cost_coefficients": problem.costs.source},
        budgets=dataclasses.asdict(request.budgets), workload=dataclasses.asdict(request.workload),
        settings=settings_for(request, problem, result.best), predicted=performance(problem, result.best),
        baseline=performance(problem, baseline.best), binding=binding, explanation=lines,
        solver={"candidates": result.num_candidates + baseline.num_candidates,
                "lp_variables": result.num_variables + baseline.num_variables,
                "lp_solve_ms": (result.lp_solve_s + baseline.lp_solve_s) * 1e3,
                "lp_solves": len(result.lp_solve_s_each) + len(baseline.lp_solve_s_each),
                "lp_solve_ms_max": max(result.lp_solve_s_each + baseline.lp_solve_s_each) * 1e3,
                "lp_build_ms": (result.lp_build_s + baseline.lp_build_s) * 1e3,
                "max_tpot_ms": request.max_tpot_ms})
