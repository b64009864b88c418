"""Host<->device link bandwidth: H2D, D2H and both at once, pinned and pageable host memory, over a size sweep.

On CUDA the "device" buffer lives in GPU memory; pinned host buffers come from
`pin_memory=True` (page-locked, DMA-able), pageable ones from an ordinary allocation (the
driver stages those through its own pinned buffer, which is why they are slower). Samples are
timed with CUDA events (see `profiler.timing`).

On a CPU-only machine there is no link: the "device" is a second CPU buffer and every copy is
a memcpy (`link_is_memcpy=True` in the profile, and the CLI says so). "Pinned" then means a
page-locked (`mlock`) host buffer, which is what pinning is on the host; when the kernel
refuses the lock the buffer stays ordinary and a note says so.

The host side plays the KV pool, which is far larger than any cache: every transfer size
cycles through consecutive slices of one host buffer as large as the sweep's largest size, so
a 64 KiB copy reads memory, not a cache line it wrote a microsecond ago (without this, small
copies on a CPU-only machine measure the L2/L3 cache instead of the pool). The device side is
one buffer per size (a staging slot, reused).

"Both at once" runs an H2D and a D2H copy of the same size concurrently (two threads, each
with its own CUDA stream on a GPU) and reports the sum of both directions.

Left out: multi-GPU peer links and NUMA placement (buffers go where the allocator puts them).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pie_core.errors import BadInput
from pie_core.sizes import GIB, KIB, MIB, format_bytes
from profiler.hardware_profile import HOST_MEMORY_KINDS, LINK_DIRECTIONS, BandwidthSample
from profiler.timing import calls_for_duration, time_interleaved

MIN_SIZE_BYTES = 64 * KIB
BIDIRECTIONAL_BYTES_PER_CALL = 64 * MIB
ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class LinkSweep:
    """Which transfers to time: sizes, directions, host memory kinds, and how many samples."""

    sizes_bytes: tuple[int, ...]
    repeats: int = 9
    warmup: int = 2
    target_sample_s: float = 0.005  # small copies are batched until one sample lasts this long
    directions: tuple[str, ...] = LINK_DIRECTIONS
    host_memory_kinds: tuple[str, ...] = HOST_MEMORY_KINDS

    def __post_init__(self) -> None:
        if not self.sizes_bytes or any(s <= 0 for s in self.sizes_bytes):
            raise BadInput(f"link sweep sizes must be positive, got {self.sizes_bytes}")
        if self.repeats < 1:
            raise BadInput(f"link sweep repeats must be >= 1, got {self.repeats}")
        for direction in self.directions:
            if direction not in LINK_DIRECTIONS:
                raise BadInput(f"unknown link direction '{direction}'", f"one of {', '.join(LINK_DIRECTIONS)}")
        for kind in self.host_memory_kinds:
            if kind not in HOST_MEMORY_KINDS:
                raise BadInput(f"unknown host memory kind '{kind}'", f"one of {', '.join(HOST_MEMORY_KINDS)}")

    @property
    def num_points(self) -> int:
        return len(self.sizes_bytes) * len(self.directions) * len(self.host_memory_kinds)

    @property
    def peak_bytes(self) -> int:
        """Two host buffers of the largest size, and two device buffers per size (all alive at once)."""
        return 2 * max(self.sizes_bytes) + 2 * sum(self.sizes_bytes)


def sweep_sizes(max_size_bytes: int, quick: bool) -> tuple[int, ...]:
    """64 KiB, then x4 (x16 when quick) up to `max_size_bytes`, which is always included."""
    if max_size_bytes < MIN_SIZE_BYTES:
        raise BadInput(f"largest transfer size {format_bytes(max_size_bytes)} is below the smallest, "
                       f"{format_bytes(MIN_SIZE_BYTES)}", "give --max-size of at least 64KiB")
    step = 16 if quick else 4
    sizes = []
    size = MIN_SIZE_BYTES
    while size < max_size_bytes:
        sizes.append(size)
        size *= step
    sizes.append(max_size_bytes)
    return tuple(sizes)


def default_max_size(quick: bool) -> int:
    return 256 * MIB if quick else GIB


# --- page-locking host memory on a CPU-only machine --------------------------------------
def _libc():
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name, use_errno=True) if name else None


def lock_pages(tensor) -> bool:
    """mlock a host tensor's memory; False when the kernel (or platform) refuses."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mlock"):
        return False
    nbytes = tensor.numel() * tensor.element_size()
    return libc.mlock(ctypes.c_void_p(tensor.data_ptr()), ctypes.c_size_t(nbytes)) == 0


def unlock_pages(tensor) -> None:
    libc = _libc()
    if libc is not None and hasattr(libc, "munlock"):
        libc.munlock(ctypes.c_void_p(tensor.data_ptr()), ctypes.c_size_t(tensor.numel() * tensor.element_size()))


class _HostBuffers:
    """Two host buffers of one kind; pinned ones are page-locked (CUDA pinning or mlock)."""

    def __init__(self, size_bytes: int, kind: str, device: str):
        import torch

        self.locked: list = []
        self.lock_refused = False
        pin = kind == "pinned" and device.startswith("cuda")
        self.buffers = [torch.empty(size_bytes, dtype=torch.uint8, pin_memory=pin) for _ in range(2)]
        for buffer in self.buffers:
            buffer.fill_(1)  # touch every page: an untouched source would read the shared zero page
            if kind == "pinned" and not pin:
                if lock_pages(buffer):
                    self.locked.append(buffer)
                else:
                    self.lock_refused = True

    def close(self) -> None:
        for buffer in self.locked:
            unlock_pages(buffer)
        self.locked.clear()
        self.buffers.clear()


def _slices(buffer, size_bytes: int) -> Callable[[], object]:
    """A function returning the next `size_bytes` slice of `buffer`, cycling over all of it."""
    count = max(1, buffer.numel() // size_bytes)
    return itertools.cycle([buffer[i * size_bytes:(i + 1) * size_bytes] for i in range(count)]).__next__


def _copy_function(device: str, host: list, dev: list, direction: str) -> Callable[[], None]:
    """A no-argument function doing one transfer (or one of each direction at once)."""
    import torch

    on_cuda = device.startswith("cuda")
    size = dev[0].numel()
    next_source, next_destination = _slices(host[0], size), _slices(host[1], size)
    if direction == "h2d":
        return lambda: dev[0].copy_(next_source(), non_blocking=on_cuda)
    if direction == "d2h":
        return lambda: next_destination().copy_(dev[1], non_blocking=on_cuda)

    streams = [torch.cuda.Stream(), torch.cuda.Stream()] if on_cuda else [None, None]

    def run_one(index: int, calls: int) -> None:
        if streams[index] is not None:
            torch.cuda.set_device(dev[0].device)  # a new thread starts on device 0
            with torch.cuda.stream(streams[index]):
                for _ in range(calls):
                    if index == 0:
                        dev[0].copy_(next_source(), non_blocking=True)
                    else:
                        next_destination().copy_(dev[1], non_blocking=True)
                streams[index].synchronize()
        else:
            for _ in range(calls):
                if index == 0:
                    dev[0].copy_(next_source())
                else:
                    next_destination().copy_(dev[1])

    copies = bidirectional_copies_per_call(size)

    def both_at_once() -> None:
        worker = threading.Thread(target=run_one, args=(1, copies))
        worker.start()
        run_one(0, copies)
        worker.join()

    return both_at_once


def bidirectional_copies_per_call(size_bytes: int) -> int:
    """Copies each thread makes per call, so a thread start is amortised over >= 64 MiB each way."""
    return max(1, BIDIRECTIONAL_BYTES_PER_CALL // size_bytes)


def measure_link(device: str, sweep: LinkSweep, progress: ProgressFn | None = None) -> tuple[tuple[BandwidthSample, ...], tuple[str, ...]]:
    """Time every (size, direction, host memory kind) of the sweep; returns samples and notes.

    For each host memory kind, all sizes and directions are timed round-robin
    (`time_interleaved`), so a burst of interference from other processes spreads over the
    whole sweep instead of wiping out the sizes that happened to be running.
    """
    import torch

    samples: list[BandwidthSample] = []
    notes: list[str] = []
    pool_bytes = max(sweep.sizes_bytes)
    for kind in sweep.host_memory_kinds:
        host = _HostBuffers(pool_bytes, kind, device)
        if host.lock_refused:
            notes.append("the kernel refused to page-lock (mlock) host buffers: 'pinned' rows used ordinary memory")
        try:
            points, copies, calls = [], [], []
            for size in sweep.sizes_bytes:
                dev = [torch.empty(size, dtype=torch.uint8, device=device).fill_(2) for _ in range(2)]
                for direction in sweep.directions:
                    copy = _copy_function(device, host.buffers, dev, direction)
                    points.append((size, direction))
                    copies.append(copy)
                    calls.append(calls_for_duration(copy, device, sweep.target_sample_s))
            timings = time_interleaved(copies, device=device, repeats=[sweep.repeats] * len(copies),
                                       warmup=sweep.warmup, calls_per_sample=calls)
            del copies
            for (size, direction), timing in zip(points, timings):
                moved = size if direction != "bidirectional" else 2 * size * bidirectional_copies_per_call(size)
                median, p10, p90 = timing.rate(moved / 1e9)
                samples.append(BandwidthSample(direction=direction, host_memory=kind, size_bytes=size,
                                               samples_s=timing.samples_s, median_gbps=median, p10_gbps=p10, p90_gbps=p90))
                if progress:
                    progress(f"link {direction} {kind} {format_bytes(size)}: {median:.1f} GB/s")
        finally:
            host.close()
    order = {(d, k): i for i, (d, k) in enumerate((d, k) for d in sweep.directions for k in sweep.host_memory_kinds)}
    samples.sort(key=lambda s: (s.size_bytes, order[(s.direction, s.host_memory)]))
    return tuple(samples), tuple(notes)
