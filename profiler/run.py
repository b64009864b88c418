"""Orchestrate a profile: check the request, then link -> memory -> one layer -> fit, into a `HardwareProfile`.

`ProfileRequest` is validated before anything is allocated (unknown model, CUDA asked for but
absent, transfer sizes that exceed free memory all fail here, as `BadInput`). `run_profile`
reports progress through a small callback protocol (the CLI draws it with rich) and never
throws away what it measured: a fit that cannot be made leaves the timings in the profile with
a note instead of failing the run.

Left out: rendering (pie_cli/profile_cmd.py) and where the file goes (the caller saves it).
"""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

from pie_core.capability import dtype_support, resolve_dtype
from pie_core.device_probe import check_device, detect_capability, free_device_bytes
from pie_core.errors import BadInput, PieError
from pie_core.fingerprint import collect_fingerprint, cpu_model
from pie_core.inputs import check_seed, check_threads
from pie_core.shapes import ModelShape, resolve_model
from pie_core.sizes import format_bytes, free_host_bytes
from profiler.hardware_profile import HardwareProfile
from profiler.link import LinkSweep, default_max_size, measure_link, sweep_sizes

NOISY_SPREAD = 0.5  # (p90 - p10) / median above this marks a layer timing as disturbed


class Progress(Protocol):
    def start(self, stage: str, total: int) -> None: ...

    def advance(self, detail: str) -> None: ...


class NoProgress:
    def start(self, stage: str, total: int) -> None:
        pass

    def advance(self, detail: str) -> None:
        pass


@dataclass(frozen=True)
class ProfileRequest:
    device: str = "cpu"
    dtype: str | None = None  # None or "auto": what the device multiplies natively (pie_core/capability.py)
    model: str | None = "opt-125m"  # None: skip the per-layer part
    quick: bool = False
    max_size_bytes: int | None = None  # largest link transfer; None: 1 GiB (256 MiB quick), shrunk to fit
    threads: int | None = None  # torch intra-op threads; None leaves torch's default
    seed: int = 0
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        check_threads(self.threads)  # before torch sees it: 100000 threads crashed OpenMP
        check_seed(self.seed)
        check_device(self.device)
        object.__setattr__(self, "dtype", resolve_dtype(self.dtype, detect_capability(self.device)).dtype)
        if self.model is not None:
            resolve_model(self.model)  # unknown names and directories without config.json fail here

    @property
    def shape(self) -> ModelShape | None:
        return resolve_model(self.model) if self.model is not None else None

    def link_sweep(self) -> tuple[LinkSweep, tuple[str, ...]]:
        """The sizes to sweep, checked against free memory; an explicit size that cannot fit is an error."""
        on_cuda = self.device.startswith("cuda")
        free_host = free_host_bytes()
        free_device = free_device_bytes(self.device) if on_cuda else free_host
        notes: list[str] = []

        def need(size: int) -> tuple[int, int]:
            """(host, device) bytes of a sweep up to `size`: two host buffers of that size, two device buffers per size."""
            device_bytes = 2 * sum(sweep_sizes(size, self.quick))
            return (2 * size, device_bytes) if on_cuda else (2 * size + device_bytes, 0)

        if self.max_size_bytes is not None:
            sweep_sizes(self.max_size_bytes, self.quick)  # below 64 KiB: its own one-line error
            host, device = need(self.max_size_bytes)
            if host > free_host:
                raise BadInput(f"--max-size {format_bytes(self.max_size_bytes)} needs {format_bytes(host)} of host memory "
                               f"(the sweep keeps two host and two device buffers per size) but only {format_bytes(free_host)} is free",
                               f"give --max-size of at most {format_bytes(free_host // 5)}")
            if device > free_device:
                raise BadInput(f"--max-size {format_bytes(self.max_size_bytes)} needs {format_bytes(device)} of device memory "
                               f"but only {format_bytes(free_device)} is free on {self.device}",
                               f"give --max-size of at most {format_bytes(free_device // 3)}")
            max_size = self.max_size_bytes
        else:
            max_size = default_max_size(self.quick)
            while max_size > 64 * 1024 and any(n > free // 2 for n, free in zip(need(max_size), (free_host, free_device))):
                max_size //= 2
            if max_size < default_max_size(self.quick):
                notes.append(f"largest link transfer cut to {format_bytes(max_size)} to stay within half of free memory")
        repeats = 7 if self.quick else 15
        return LinkSweep(sizes_bytes=sweep_sizes(max_size, self.quick), repeats=repeats,
                         target_sample_s=0.003 if self.quick else 0.01), tuple(notes)


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_profile(request: ProfileRequest, progress: Progress | None = None) -> HardwareProfile:
    """Measure everything the request asks for and return the profile (not saved).

    torch's thread count is set for the run and restored afterwards. If timing the layer fails,
    the link and memory figures are still returned, with the failure in `extra["layer_error"]`.
    """
    import torch

    threads_before = torch.get_num_threads()
    if request.threads is not None:
        torch.set_num_threads(request.threads)
    try:
        return _measure(request, progress or NoProgress())
    finally:
        torch.set_num_threads(threads_before)


def _measure(request: ProfileRequest, progress: Progress) -> HardwareProfile:
    import torch

    from profiler.memory import SIDE_MATMUL_SHAPE, default_copy_size, default_matmul_shape, matmul_rates, measure_memory

    started = time.perf_counter()
    sweep, notes = request.link_sweep()
    notes = list(request.notes) + list(notes)
    device, dtype, shape = request.device, request.dtype, request.shape
    on_cuda = device.startswith("cuda")
    if not on_cuda:
        notes.append("CPU-only machine: the link is a memcpy between two host buffers (link_is_memcpy); "
                     "'pinned' host buffers are page-locked with mlock; each size cycles through a host buffer as large as "
                     "the largest size, so small copies read memory rather than a warm cache")

    fingerprint = collect_fingerprint(device)
    progress.start("link bandwidth", sweep.num_points)
    link, link_notes = measure_link(device, sweep, progress.advance)
    notes.extend(link_notes)

    progress.start("memory bandwidth and FLOP/s", 1)
    copy_size = default_copy_size(device, request.quick)
    while copy_size > 16 * 1024 * 1024 and 2 * copy_size > free_device_bytes(device) // 4:
        copy_size //= 2  # source and destination within a quarter of free memory
    matmul_shape = default_matmul_shape(device, shape.hidden_size if shape else None)
    memory = measure_memory(device, dtype, copy_size, matmul_shape, repeats=7 if request.quick else 11)
    # Every dtype the device runs, side by side: the profile's own at its full shape, the others at a
    # small one (an emulated dtype is far slower: README.md); each says whether it is native here.
    capability = detect_capability(device)
    others = tuple(d for d in capability.runnable_dtypes if d != dtype)
    matmul_by_dtype = {dtype: {"tflops": memory.matmul_tflops, "shape": list(matmul_shape),
                               "support": dtype_support(capability, dtype)}}
    for other, tflops in matmul_rates(device, others).items():
        matmul_by_dtype[other] = {"tflops": tflops, "shape": list(SIDE_MATMUL_SHAPE), "support": dtype_support(capability, other)}
    progress.advance(f"memory {memory.memory_bandwidth_gbps:.1f} GB/s, matmul {memory.matmul_tflops:.2f} TFLOP/s")

    extra: dict = {"threads": torch.get_num_threads(), "seed": request.seed,
                   "memory_copy_size_bytes": copy_size, "memory_copy_samples_s": list(memory.copy_timing.samples_s),
                   "matmul_shape": list(matmul_shape), "matmul_samples_s": list(memory.matmul_timing.samples_s)}
    layer_timings, decode_fit, prefill_fit = (), None, None
    if shape is not None:
        try:
            layer_timings, decode_fit, prefill_fit = _measure_layer(shape, request, memory, progress, notes, extra)
        except (MemoryError, RuntimeError, ImportError, PieError) as err:  # keep the link and memory figures
            first_line = (str(err).strip().splitlines() or [""])[0]
            message = err.one_line() if isinstance(err, PieError) else f"{type(err).__name__}: {first_line}"
            extra["layer_error"] = message
            notes.append(f"timing the {shape.name} layer failed: {message}")
    if on_cuda:
        extra["peak_device_bytes"] = int(torch.cuda.max_memory_allocated())
    extra["peak_rss_bytes"] = peak_rss_bytes()
    extra["wall_s"] = time.perf_counter() - started
    device_name = fingerprint.get("gpu_name") if on_cuda else cpu_model()
    return HardwareProfile(
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), device=device.split(":")[0],
        device_name=str(device_name), dtype=dtype, fingerprint=fingerprint, link_is_memcpy=not on_cuda,
        link=link, memory_bandwidth_gbps=memory.memory_bandwidth_gbps, matmul_tflops=memory.matmul_tflops,
        model=shape.name if shape else None, model_shape=shape.to_dict() if shape else None,
        layer_timings=layer_timings, decode_fit=decode_fit, prefill_fit=prefill_fit, quick=request.quick,
        notes=tuple(notes), extra=extra, matmul_by_dtype=matmul_by_dtype)


def _measure_layer(shape: ModelShape, request: ProfileRequest, memory, progress: Progress, notes: list[str], extra: dict):
    """Time one engine layer over the grid and fit the cost model; notes and extra are filled in place."""
    import torch

    from profiler import layer as layer_module
    from profiler.fit import fit_decode, fit_prefill

    dtype, device = request.dtype, request.device
    spec = layer_module.GridSpec.for_run(request.quick)
    roofline = layer_module.Roofline(memory.memory_bandwidth_gbps, memory.matmul_tflops)
    progress.start(f"building one {shape.name} layer (seeded random weights)", 1)
    layer_timings, extra["kernels"] = layer_module.measure_layer(
        shape, dtype, device, spec, roofline, seed=request.seed, progress=progress.advance,
        on_built=lambda count: progress.start(f"{shape.name} layer: prefill and decode grid", count))
    extra["decode_kernel"] = extra["kernels"]["decode_attention"]
    notes.append(f"per-layer times are one {shape.name} layer of the Pie engine with seeded random weights")
    notes.extend(f"kernel fallback: {why}" for why in extra["kernels"]["fallbacks"])
    noisy = [t for t in layer_timings if (t.p90_s - t.p10_s) / t.median_s > NOISY_SPREAD]
    if noisy:
        notes.append(f"{len(noisy)} of {len(layer_timings)} layer timings varied by more than {NOISY_SPREAD:.0%} "
                     "(p10..p90): other processes were likely using the machine"
                     + ("; try --threads 1 or a quieter moment" if torch.get_num_threads() > 1 else "; try a quieter moment"))
    progress.start("fitting the cost model", 1)
    decode_fit = prefill_fit = None
    try:
        decode_fit, decode_result = fit_decode(layer_timings, shape.layer_weight_bytes(dtype),
                                               shape.layer_flops_per_token(), shape.kv_bytes_per_token_per_layer(dtype))
        extra["decode_holdout_rel_errors"] = list(decode_result.holdout_errors)
    except PieError as err:
        notes.append(f"no decode fit: {err.one_line()}")
    try:
        prefill_fit, prefill_result = fit_prefill(layer_timings)
        extra["prefill_holdout_rel_errors"] = list(prefill_result.holdout_errors)
        extra["prefill_max_rel_error"] = prefill_result.max_rel_error
    except PieError as err:
        notes.append(f"no prefill fit: {err.one_line()}")
    progress.advance("fit done")
    return layer_timings, decode_fit, prefill_fit
