"""Shared builders for the planner tests: problems on presets and a synthetic measured profile."""
from __future__ import annotations

import dataclasses

from pie_core.shapes import resolve_model
from planner.budgets import Budgets, builtin_workload
from planner.cost_model import Problem, model_costs
from planner.hardware import HardwareSpec, preset
from profiler.hardware_profile import BandwidthSample, DecodeLayerFit, HardwareProfile, PrefillLayerFit

GB = 10**9


def problem(model: str = "opt-30b", hardware: str | HardwareSpec = "h100-pcie", device_gb: float | None = None,
            host_gb: float = 200, workload: str = "sharegpt", dtype: str = "float16") -> Problem:
    spec = preset(hardware) if isinstance(hardware, str) else hardware
    shape = resolve_model(model)
    device = int(device_gb * GB) if device_gb else spec.device_memory_bytes
    return Problem(shape, dtype, model_costs(shape, spec, dtype), Budgets(device, int(host_gb * GB)), builtin_workload(workload))


def link_starved(hardware: str = "a100-pcie", link_gbps: float = 4.0, tflops_scale: float = 4.0) -> HardwareSpec:
    """A preset with a slow link and fast compute: where rebuilding from activations pays."""
    spec = preset(hardware)
    return dataclasses.replace(spec, link_h2d_gbps=link_gbps, matmul_tflops=spec.matmul_tflops * tflops_scale)


def synthetic_profile(model: str = "opt-125m", dtype: str = "bfloat16", schema_version: int = 1) -> HardwareProfile:
    """A CPU profile shaped like what `pie profile` writes, with a decode fit for `model`'s layer."""
    shape = resolve_model(model)
    sample = BandwidthSample("h2d", "pinned", 256 * 2**20, (0.01,), 25.0, 24.0, 26.0)
    fit = DecodeLayerFit(fixed_s=2e-4, per_token_s=4e-6, per_kv_token_s=2e-9,
                         layer_weight_bytes=shape.layer_weight_bytes(dtype), layer_flops_per_token=shape.layer_flops_per_token(),
                         kv_bytes_per_token_layer=shape.kv_bytes_per_token_per_layer(dtype), median_rel_error=0.05,
                         max_rel_error=0.1, num_fit_points=12, num_holdout_points=4)
    prefill = PrefillLayerFit(fixed_s=3e-4, per_token_s=3e-6, per_token_sq_s=1e-9, median_rel_error=0.05)
    return HardwareProfile(created_at="2026-01-01T00:00:00+00:00", device="cpu", device_name="test cpu", dtype=dtype,
                           fingerprint={"host_memory_bytes": 24 * 2**30}, link_is_memcpy=True, link=(sample,),
                           memory_bandwidth_gbps=30.0, matmul_tflops=0.4, model=model, model_shape=shape.to_dict(),
                           layer_timings=(), decode_fit=fit, prefill_fit=prefill, quick=True, schema_version=schema_version)
