"""`HardwareSpec`: the figures the cost model needs, from a measured profile or a datasheet preset.

A preset describes a machine the user does not have (H100 + PCIe 5, H200, A100 + PCIe 4, GH200
with NVLink-C2C, L4). Its figures are datasheet values scaled by an assumed achieved fraction
and are labelled as such everywhere they are shown: a `pie profile` of the real machine
replaces them. A spec built from a `HardwareProfile` carries the profile's fitted per-layer
decode and prefill coefficients, which the cost model prefers over the roofline.
Left out: measuring anything (the profiler does that) and choosing a plan (lp.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from pie_core.capability import DeviceCapability
from pie_core.errors import BadInput
from profiler.hardware_profile import DecodeLayerFit, EngineOverhead, HardwareProfile, PrefillLayerFit

GB = 1e9
DATASHEET_LABEL = "datasheet figures (replace with a `pie profile` measurement)"


@dataclass(frozen=True)
class HardwareSpec:
    name: str
    source: str  # "preset" | "profile"
    label: str  # shown next to every prediction
    device: str  # cuda | cpu
    device_memory_bytes: int  # physical device memory (the ceiling for --gpu-memory)
    host_memory_bytes: int  # physical host memory (the ceiling for --cpu-memory)
    link_h2d_gbps: float  # achieved pinned host->device bandwidth, 1e9 B/s
    memory_bandwidth_gbps: float  # achieved device memory bandwidth
    matmul_tflops: float  # achieved dense matmul rate for the dtype
    decode_fit: DecodeLayerFit | None = None  # measured; None for presets (roofline used instead)
    prefill_fit: PrefillLayerFit | None = None
    profiled_model: str | None = None
    profile_dtype: str | None = None
    link_is_memcpy: bool = False  # CPU-only machine: the "link" is a host memcpy
    # Engine work outside the layers and lm_head (scheduling, block tables, sampling), per decode
    # step: fixed + per sequence. Measured by an engine calibration run (0 when not measured).
    iteration_fixed_s: float = 0.0
    iteration_per_seq_s: float = 0.0
    # The engine's layers against the profiled single layer (same calibration): multiplies the decode
    # and the prefill fit (1 when not measured). runners/sim_calibration.py measures them.
    decode_scale: float = 1.0
    prefill_scale: float = 1.0
    capability: dict | None = None  # pie_core/capability.py record: the preset's datasheet one, or the profile's

    def __post_init__(self) -> None:
        if self.source not in ("preset", "profile"):
            raise BadInput(f"hardware source must be preset or profile, got '{self.source}'")
        for field in ("device_memory_bytes", "host_memory_bytes", "link_h2d_gbps", "memory_bandwidth_gbps", "matmul_tflops"):
            value = getattr(self, field)
            if not value > 0:
                raise BadInput(f"hardware '{self.name}': {field} must be positive, got {value}",
                               "re-run `pie profile` or pick a preset with --hardware")


@dataclass(frozen=True)
class _Datasheet:
    title: str
    device_memory_gb: float
    host_memory_gb: float  # assumed host of a typical server with this device
    memory_bandwidth_gbps: float
    bf16_tflops: float
    link_nominal_gbps: float
    link_achieved_gbps: float
    link_name: str
    compute_capability: str  # CUDA compute capability (decides the dtype `--dtype auto` plans in)
    host_arch: str = "x86_64"


# Achieved fractions of datasheet peaks used for presets (labelled assumptions, not measurements).
MEMORY_EFFICIENCY = 0.8
COMPUTE_EFFICIENCY = 0.6

_DATASHEETS: dict[str, _Datasheet] = {
    "h100-pcie": _Datasheet("H100 SXM 80 GB, PCIe 5.0 x16 host link", 80, 512, 3350, 989, 64, 52, "PCIe 5.0 x16", "9.0"),
    "h200": _Datasheet("H200 141 GB, PCIe 5.0 x16 host link", 141, 1024, 4800, 989, 64, 52, "PCIe 5.0 x16", "9.0"),
    "a100-pcie": _Datasheet("A100 80 GB SXM, PCIe 4.0 x16 host link", 80, 512, 2000, 312, 32, 25, "PCIe 4.0 x16", "8.0"),
    "gh200": _Datasheet("GH200 96 GB HBM3, NVLink-C2C to 480 GB LPDDR5X", 96, 480, 4000, 989, 450, 400, "NVLink-C2C",
                        "9.0", "aarch64"),
    "l4": _Datasheet("L4 24 GB, PCIe 4.0 x16 host link", 24, 192, 300, 121, 32, 25, "PCIe 4.0 x16", "8.9"),
}
_ALIASES = {"h100": "h100-pcie", "h100-sxm": "h100-pcie", "a100": "a100-pcie", "a100-80gb": "a100-pcie",
            "grace-hopper": "gh200"}
PRESET_NAMES = tuple(_DATASHEETS)


def preset(name: str) -> HardwareSpec:
    """A datasheet preset by name ('h100-pcie', 'h200', 'a100-pcie', 'gh200', 'l4')."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _DATASHEETS:
        raise BadInput(f"unknown hardware preset '{name}'", f"valid presets: {', '.join(PRESET_NAMES)}")
    sheet = _DATASHEETS[key]
    return HardwareSpec(
        name=key, source="preset", label=f"{sheet.title}: {DATASHEET_LABEL}", device="cuda",
        device_memory_bytes=int(sheet.device_memory_gb * GB), host_memory_bytes=int(sheet.host_memory_gb * GB),
        link_h2d_gbps=sheet.link_achieved_gbps, memory_bandwidth_gbps=sheet.memory_bandwidth_gbps * MEMORY_EFFICIENCY,
        matmul_tflops=sheet.bf16_tflops * COMPUTE_EFFICIENCY,
        capability=DeviceCapability(kind="cuda", arch=sheet.host_arch, cuda_compute_capability=sheet.compute_capability,
                                    device_name=sheet.title.split(",")[0]).to_dict())


def physical_host_memory_bytes() -> int:
    """Installed RAM of this machine (POSIX sysconf)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def _first_int(mapping: dict, keys: tuple[str, ...]) -> int:
    for key in keys:
        value = mapping.get(key)
        if isinstance(value, (int, float)) and value > 0:
            return int(value)
    return 0


def sustained_link_gbps(profile: HardwareProfile) -> float:
    """Pinned host-to-device bandwidth at the largest size measured.

    The best size is not used: on a CPU-only machine small copies run at cache speed, which a
    pool of cold blocks never sees; the largest transfer is the sustained rate.
    """
    samples = [s for s in profile.link if s.direction == "h2d" and s.host_memory == "pinned"]
    if not samples:
        return profile.link_h2d_gbps  # raises the profile's own one-line error
    return max(samples, key=lambda s: s.size_bytes).median_gbps


def from_profile(profile: HardwareProfile, source: str = "profile") -> HardwareSpec:
    """A spec from a measured profile; the fitted layer coefficients come along."""
    if profile.decode_fit is None:
        raise BadInput(f"{source} has no per-layer decode fit", "re-run `pie profile --model NAME` so layers are timed")
    fingerprint = profile.fingerprint or {}
    # Written by an engine calibration, if any: per-step overhead and the engine's pooled copy rate.
    overhead = profile.engine_overhead or EngineOverhead()
    host_bytes = _first_int(fingerprint, ("ram_bytes", "memory_bytes", "host_memory_bytes", "total_memory_bytes")) \
        or physical_host_memory_bytes()
    if profile.device.startswith("cuda"):
        device_bytes = _first_int(fingerprint, ("gpu_memory_bytes", "device_memory_bytes", "cuda_memory_bytes"))
        if not device_bytes:
            raise BadInput(f"{source} does not record the GPU's memory size", "re-run `pie profile` with this pie")
    else:
        device_bytes = host_bytes  # on a CPU the "device" tier is host RAM too
    return HardwareSpec(
        name=profile.device_name or profile.device, source="profile",
        label=f"measured profile of {profile.device_name or profile.device} ({profile.created_at})",
        device="cuda" if profile.device.startswith("cuda") else "cpu",
        device_memory_bytes=device_bytes, host_memory_bytes=host_bytes,
        link_h2d_gbps=float(overhead.pooled_copy_gbps or sustained_link_gbps(profile)),
        memory_bandwidth_gbps=profile.memory_bandwidth_gbps, matmul_tflops=profile.matmul_tflops,
        decode_fit=profile.decode_fit, prefill_fit=profile.prefill_fit, profiled_model=profile.model,
        profile_dtype=profile.dtype, link_is_memcpy=profile.link_is_memcpy,
        iteration_fixed_s=float(overhead.fixed_s), iteration_per_seq_s=float(overhead.per_seq_s),
        decode_scale=float(overhead.decode_scale), prefill_scale=float(overhead.prefill_scale),
        capability=profile.capability or None)
