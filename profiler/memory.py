"""Device memory bandwidth (a large device-to-device copy) and achieved matmul FLOP/s for a dtype.

Memory bandwidth counts the bytes read plus the bytes written (a copy of N bytes moves 2N),
the convention datasheet figures use (H100 SXM: 3.35 TB/s). On a CPU-only machine the
"device" is host memory, so this is the same kind of copy as the link's memcpy, counted both ways.

FLOP/s is 2*M*N*K per matmul of [M, K] x [K, N] in the profile's dtype, timed after warm-up
(so library kernel selection is not in the figure). The shape defaults to one large enough to
reach the machine's steady rate; pass the model's hidden size to measure a layer-like GEMM.

Left out: attention kernels and per-layer timing (`profiler.layer`), and cache-resident
bandwidth (the copy is sized well above the last-level cache when memory allows).
"""
from __future__ import annotations

from dataclasses import dataclass

from pie_core.dtypes import canonical_dtype
from pie_core.errors import BadInput
from pie_core.sizes import GIB, MIB
from profiler.timing import Timing, calls_for_duration, time_call


@dataclass(frozen=True)
class MemoryMeasurement:
    copy_size_bytes: int
    copy_timing: Timing
    memory_bandwidth_gbps: float  # (read + written bytes) / median time, 1e9 B/s
    matmul_shape: tuple[int, int, int]  # (M, K, N)
    matmul_timing: Timing
    matmul_tflops: float  # achieved, median

    def __post_init__(self) -> None:
        if self.memory_bandwidth_gbps <= 0 or self.matmul_tflops <= 0:
            raise ValueError("measured bandwidth and FLOP/s must be positive")


def torch_dtype(name: str):
    import torch

    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[canonical_dtype(name)]


def default_copy_size(device: str, quick: bool) -> int:
    if device.startswith("cuda"):
        return 2 * GIB if not quick else GIB
    return GIB if not quick else 256 * MIB


def default_matmul_shape(device: str, hidden_size: int | None = None) -> tuple[int, int, int]:
    """(M, K, N): a big square GEMM on CUDA; on the CPU a batch-of-512 layer-like (h -> 4h) GEMM, h capped at 4096."""
    if device.startswith("cuda"):
        return (8192, 8192, 8192)
    width = min(hidden_size or 2048, 4096)  # wider layers run at the same rate; keep the timing short
    return (512, width, 4 * width)


def measure_copy_bandwidth(device: str, size_bytes: int, repeats: int = 9) -> tuple[Timing, float]:
    """Time `dst.copy_(src)` of `size_bytes` on the device; returns the timing and GB/s (read + write)."""
    import torch

    if size_bytes < MIB:
        raise BadInput(f"memory-bandwidth copy of {size_bytes} B is too small to measure bandwidth")
    source = torch.empty(size_bytes, dtype=torch.uint8, device=device).fill_(1)
    destination = torch.empty_like(source).fill_(0)
    copy = lambda: destination.copy_(source)  # noqa: E731
    calls = calls_for_duration(copy, device, target_sample_s=0.01)
    timing = time_call(copy, device=device, repeats=repeats, warmup=2, calls_per_sample=calls)
    return timing, 2 * size_bytes / timing.median_s / 1e9


def measure_matmul(device: str, dtype: str, shape: tuple[int, int, int], repeats: int = 7, seed: int = 0,
                   max_calls: int = 100) -> tuple[Timing, float]:
    """Time `a @ b` for a seeded [M, K] x [K, N] pair; returns the timing and achieved TFLOP/s."""
    import torch

    rows, inner, cols = shape
    generator = torch.Generator(device="cpu").manual_seed(seed)
    a = torch.randn(rows, inner, generator=generator).to(device=device, dtype=torch_dtype(dtype))
    b = torch.randn(inner, cols, generator=generator).to(device=device, dtype=torch_dtype(dtype))
    out = torch.empty(rows, cols, device=device, dtype=a.dtype)
    multiply = lambda: torch.matmul(a, b, out=out)  # noqa: E731
    calls = calls_for_duration(multiply, device, target_sample_s=0.02, max_calls=max_calls)
    timing = time_call(multiply, device=device, repeats=repeats, warmup=1 if max_calls < 10 else 2, calls_per_sample=calls)
    return timing, 2.0 * rows * inner * cols / timing.median_s / 1e12


# A small GEMM for the rates of the dtypes a profile is not taken in: an emulated bf16 matmul on an
# AVX2 CPU is so slow (README.md, "On the machine it meets") that the profile's own shape would
# take seconds per call.
SIDE_MATMUL_SHAPE = (64, 512, 2048)


def matmul_rates(device: str, dtypes: tuple[str, ...], shape: tuple[int, int, int] = SIDE_MATMUL_SHAPE,
                 repeats: int = 3) -> dict[str, float]:
    """Achieved TFLOP/s of a `shape` matmul in each of `dtypes` (median of a few short samples)."""
    rates = {}
    for dtype in dtypes:
        timing, tflops = measure_matmul(device, dtype, shape, repeats=repeats, max_calls=4)
        rates[dtype] = tflops
    return rates


def emulated_dtype_warning(dtype: str, device: str, cap) -> str:
    """One line: `dtype` is emulated on this device, with the measured matmul rate of each dtype it runs."""
    from pie_core.capability import choose_dtype

    rates = matmul_rates(device, cap.runnable_dtypes)
    shown = ", ".join(f"{name} {rate * 1e3:,.1f}" for name, rate in rates.items())
    return (f"{dtype} is emulated on {cap.summary()} (matmul GFLOP/s at {'x'.join(map(str, SIDE_MATMUL_SHAPE))}, measured: "
            f"{shown}); it runs on the plain path, and --dtype auto picks {choose_dtype(cap).dtype}")


def measure_memory(device: str, dtype: str, copy_size_bytes: int, matmul_shape: tuple[int, int, int],
                   repeats: int = 9) -> MemoryMeasurement:
    copy_timing, bandwidth = measure_copy_bandwidth(device, copy_size_bytes, repeats)
    matmul_timing, tflops = measure_matmul(device, dtype, matmul_shape, repeats=max(3, repeats - 2))
    return MemoryMeasurement(copy_size_bytes=copy_size_bytes, copy_timing=copy_timing,
                             memory_bandwidth_gbps=bandwidth, matmul_shape=matmul_shape,
                             matmul_timing=matmul_timing, matmul_tflops=tflops)
