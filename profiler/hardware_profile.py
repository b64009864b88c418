"""`HardwareProfile`: what `pie profile` measured, as a versioned, self-describing JSON file.

This module is the contract between the profiler (which fills it) and the planner (which
reads it). It is torch-free. Loading (`from_dict`, `load`) checks the schema version, every field's
type, sign and finiteness (pie_core/json_fields.py), the fitted coefficients (none negative, not all
zero), the fingerprint's memory sizes and the engine calibration (`engine_overhead`), and turns any problem
into a one-line `BadInput` naming the file and the field.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pie_core.errors import BadInput
from pie_core.json_fields import NON_NEGATIVE, POSITIVE, Range, Where, number, read_dataclass
from pie_core.json_files import read_json_file, write_json_atomic

SCHEMA_VERSION = 1
HINT = "re-run `pie profile` to make a new one"
_WHOLE = Range(minimum=1)
_BOUNDS = {
    "HardwareProfile": {"memory_bandwidth_gbps": POSITIVE, "matmul_tflops": POSITIVE},
    "BandwidthSample": {"size_bytes": _WHOLE, "samples_s": NON_NEGATIVE, "median_gbps": POSITIVE, "p10_gbps": NON_NEGATIVE,
                        "p90_gbps": NON_NEGATIVE},
    "LayerTiming": {"batch_size": _WHOLE, "context_len": NON_NEGATIVE, "median_s": NON_NEGATIVE, "p10_s": NON_NEGATIVE,
                    "p90_s": NON_NEGATIVE, "samples_s": NON_NEGATIVE},
    "DecodeLayerFit": {name: NON_NEGATIVE for name in ("fixed_s", "per_token_s", "per_kv_token_s", "layer_weight_bytes",
                       "layer_flops_per_token", "kv_bytes_per_token_layer", "median_rel_error", "max_rel_error",
                       "num_fit_points", "num_holdout_points")},
    "PrefillLayerFit": {name: NON_NEGATIVE for name in ("fixed_s", "per_token_s", "per_token_sq_s", "median_rel_error")},
    "EngineOverhead": {"fixed_s": NON_NEGATIVE, "per_seq_s": NON_NEGATIVE, "decode_scale": POSITIVE, "prefill_scale": POSITIVE,
                       "pooled_copy_gbps": POSITIVE, "num_steps_fitted": NON_NEGATIVE},
}
# fingerprint sizes the planner reads (planner/hardware.py: from_profile)
_FINGERPRINT_BYTES = ("ram_bytes", "memory_bytes", "host_memory_bytes", "total_memory_bytes", "gpu_memory_bytes",
                      "device_memory_bytes", "cuda_memory_bytes")
LINK_DIRECTIONS = ("h2d", "d2h", "bidirectional")
HOST_MEMORY_KINDS = ("pinned", "pageable")


@dataclass(frozen=True)
class BandwidthSample:
    """One transfer measurement: a direction, a host-memory kind and a size, timed `len(samples_s)` times."""

    direction: str  # h2d | d2h | bidirectional (both at once; gbps is the sum of both ways)
    host_memory: str  # pinned | pageable
    size_bytes: int
    samples_s: tuple[float, ...]
    median_gbps: float
    p10_gbps: float
    p90_gbps: float

    def __post_init__(self) -> None:
        if self.direction not in LINK_DIRECTIONS:
            raise BadInput(f"bandwidth sample direction '{self.direction}' is not one of {LINK_DIRECTIONS}")
        if self.host_memory not in HOST_MEMORY_KINDS:
            raise BadInput(f"bandwidth sample host memory '{self.host_memory}' is not one of {HOST_MEMORY_KINDS}")


@dataclass(frozen=True)
class LayerTiming:
    """Median time of one decoder layer for a batch at a context length."""

    phase: str  # prefill | decode
    batch_size: int
    context_len: int  # decode: cached tokens per sequence; prefill: prompt tokens per sequence
    median_s: float
    p10_s: float
    p90_s: float
    samples_s: tuple[float, ...] = ()


@dataclass(frozen=True)
class DecodeLayerFit:
    """t_decode_layer(b, ctx) = fixed_s + per_token_s * b + per_kv_token_s * (b * ctx).

    fixed_s is dominated by reading the layer's weights (scale it by weight bytes to move to
    another model), per_token_s by the batch's matmul FLOPs, per_kv_token_s by reading the
    KV cache. The reference sizes of the profiled layer are kept so the planner can rescale.
    """

    fixed_s: float
    per_token_s: float
    per_kv_token_s: float
    layer_weight_bytes: int
    layer_flops_per_token: int
    kv_bytes_per_token_layer: int
    median_rel_error: float  # on held-out grid points
    max_rel_error: float
    num_fit_points: int
    num_holdout_points: int

    def predict_s(self, batch_size: int, context_len: float) -> float:
        return self.fixed_s + self.per_token_s * batch_size + self.per_kv_token_s * batch_size * context_len


@dataclass(frozen=True)
class PrefillLayerFit:
    """t_prefill_layer(tokens, sum_sq) = fixed_s + per_token_s * tokens + per_token_sq_s * sum(len^2)."""

    fixed_s: float
    per_token_s: float
    per_token_sq_s: float
    median_rel_error: float

    def predict_s(self, num_tokens: int, sum_squared_lens: float) -> float:
        return self.fixed_s + self.per_token_s * num_tokens + self.per_token_sq_s * sum_squared_lens


@dataclass(frozen=True)
class EngineOverhead:
    """What an engine calibration measured beyond the layers (runners/sim_calibration.py, benchmarks): a fixed
    and a per-sequence cost per iteration, scales on the fitted decode and prefill terms, and the rate the
    engine copies pooled blocks at (None: the profile's sustained link rate)."""

    fixed_s: float = 0.0
    per_seq_s: float = 0.0
    decode_scale: float = 1.0
    prefill_scale: float = 1.0
    pooled_copy_gbps: float | None = None
    num_steps_fitted: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EngineOverhead":
        return cls(**{item.name: data[item.name] for item in dataclasses.fields(cls) if item.name in data})


@dataclass(frozen=True)
class HardwareProfile:
    created_at: str
    device: str  # cpu | cuda
    device_name: str
    dtype: str
    fingerprint: dict[str, Any]  # CPU, RAM, GPU name/memory, driver, torch/CUDA versions
    link_is_memcpy: bool  # True on a CPU-only machine: "device" is another CPU buffer
    link: tuple[BandwidthSample, ...]
    memory_bandwidth_gbps: float  # large device-to-device copy (read + write counted once)
    matmul_tflops: float  # achieved, for `dtype`
    model: str | None  # shape name of the profiled layer, None when no layer was profiled
    model_shape: dict[str, Any] | None
    layer_timings: tuple[LayerTiming, ...]
    decode_fit: DecodeLayerFit | None
    prefill_fit: PrefillLayerFit | None
    quick: bool
    notes: tuple[str, ...] = ()
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    # dtype -> {"tflops", "shape" [M, K, N], "support": native|emulated}: each dtype the device runs
    matmul_by_dtype: dict[str, Any] = field(default_factory=dict)
    engine_overhead: EngineOverhead | None = None  # an engine calibration's terms, read by the planner and the simulator

    @property
    def capability(self) -> dict[str, Any]:
        """The device's capability record (pie_core/capability.py), as the fingerprint keeps it; {} in older profiles."""
        return (self.fingerprint or {}).get("capability") or {}

    # --- what the planner reads ----------------------------------------------------------
    def best_gbps(self, direction: str = "h2d", host_memory: str = "pinned") -> float:
        """Highest median bandwidth over sizes for a direction and host-memory kind (GB/s, 1e9 B/s)."""
        values = [s.median_gbps for s in self.link if s.direction == direction and s.host_memory == host_memory]
        if not values:
            raise BadInput(f"profile has no {host_memory} {direction} measurements", "re-run `pie profile`")
        return max(values)

    @property
    def link_h2d_gbps(self) -> float:
        return self.best_gbps("h2d", "pinned")

    # --- persistence ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "profile") -> "HardwareProfile":
        where = Where(source, HINT)
        if not isinstance(data, dict):
            raise BadInput(f"{source} is not a pie hardware profile (expected a JSON object)", HINT)
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise where.at("schema_version").error(f"is {version!r}; this pie reads schema version {SCHEMA_VERSION}")
        fields = {k: v for k, v in data.items() if k != "capability"}  # derived from the fingerprint
        extra = fields.get("extra")
        if isinstance(extra, dict) and "engine_iteration_overhead" in extra and not fields.get("engine_overhead"):
            extra = dict(extra)  # older profiles kept the engine calibration in extra
            fields["engine_overhead"], fields["extra"] = extra.pop("engine_iteration_overhead"), extra
        nested = {kind: _BOUNDS[kind.__name__] for kind in (BandwidthSample, LayerTiming, DecodeLayerFit, PrefillLayerFit,
                                                             EngineOverhead)}
        profile = read_dataclass(cls, fields, where, _BOUNDS["HardwareProfile"], nested)
        _check_profile(profile, where)
        return profile

    @classmethod
    def load(cls, path: Path) -> "HardwareProfile":
        data = read_json_file(path, "profile", "run `pie profile` first, or pass the JSON file it saved", HINT)
        return cls.from_dict(data, source=f"profile '{path}'")


def _check_profile(profile: HardwareProfile, where: Where) -> None:
    """What types alone do not say: a fit that predicts zero time, a link without H2D, sizes and calibration."""
    for name, fit in (("decode_fit", profile.decode_fit), ("prefill_fit", profile.prefill_fit)):
        if fit is not None and not (fit.fixed_s > 0 or fit.per_token_s > 0):
            raise where.at(name).error("predicts a layer takes no time (fixed_s and per_token_s are both 0)")
    for key in _FINGERPRINT_BYTES:
        if (profile.fingerprint or {}).get(key) is not None:
            number(profile.fingerprint[key], where.at("fingerprint").at(key), _WHOLE, integer=True)
    if profile.device.split(":")[0] not in ("cpu", "cuda"):
        raise where.at("device").expected('"cpu" or "cuda[:N]"', profile.device)
