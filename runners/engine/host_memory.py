"""How the engine asks the OS for CPU memory: 2 MiB pages for the KV cache, a warm heap for activations.

Two measured problems on the CPU (docs/engine-cpu-performance.md):

- Decode attention reads each sequence's KV blocks (48 KiB per block and layer for OPT-125m)
  from wherever the block manager put them in a cache of about a gigabyte. With 4 KiB pages
  every block spans a dozen pages, each a TLB miss and a fresh start for the hardware
  prefetcher: the decode kernel ran several times faster over the same cache of shuffled blocks
  on 2 MiB pages (docs/engine-cpu-performance.md, item 2). `zeros()` therefore allocates large CPU
  tensors 2 MiB-aligned and asks for transparent huge pages (`madvise(MADV_HUGEPAGE)`, which works in
  the kernel's default `madvise` THP mode) before the first touch.
- Every step allocates activation buffers of several MiB (prefill: tokens x 3072 for OPT's MLP).
  glibc serves those with fresh `mmap`s and returns them on free, so each step page-faults
  them in again (a ReLU over a prefill's activations took many times its warm time:
  docs/engine-cpu-performance.md, item 3). `keep_freed_memory()` raises glibc's mmap and trim
  thresholds (`mallopt`) so freed buffers stay in the heap and the next step reuses warm pages --
  what vLLM-CPU gets from preloading tcmalloc.

- The AMX GEMM streams every packed weight from memory once a decode step, 4 KiB page after 4 KiB page,
  between decode attention's reads of the KV cache, which evict the page-table entries the weights' walks
  would find. `weight_buffer()` therefore carves packed weights (written once, at build time) from chunks of
  2 MiB pages, one after another, so small weights (OPT-125m's qkv and out are 1.2-3.5 MB) share huge pages
  too. With a layer's worth of KV read between layers, the GEMMs of OPT-125m's 12 layers and lm_head took
  9-12% less time at 4-96 rows (docs/engine-cpu-performance.md, "Packed weights on 2 MiB pages").

All are best effort: on a kernel or libc without them nothing changes but the speed.
`PIE_HUGE_PAGES=0` and `PIE_MALLOC_TUNING=0` switch them off.

On CUDA machines the pool and the bounce buffers must be page-locked, and `pin_memory=True`
gives blocks of torch's caching host allocator, which rounds each one up to a power of two: a
40 GiB pool would lock 64 GiB of RAM, which may not exist. `pinned_zeros()` therefore takes
large tensors as ordinary aligned memory of exactly their size and page-locks that range
(`cudaHostRegister`, undone when the tensor goes). If the driver refuses (a locked-memory limit, too
little RAM), the memory stays pageable, `pageable_reason(tensor)` says why, and the engine names what
that costs (kernels' fallbacks); CUDA's last-error state is cleared first, because the failed call
leaves it set and torch's next kernel-launch check would report it as that kernel's error. torch's
`cudart()` has no `cudaGetLastError`, so it is called in the libcudart torch already loaded (found in
/proc/self/maps) through ctypes.
Left out: explicit hugetlbfs pages, NUMA placement (these machines have one node).
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys
import threading
import weakref
from pathlib import Path

import torch

HUGE_PAGE = 2 * 2**20
_MADV_HUGEPAGE = 14
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit
_TRIM_THRESHOLD = 1 * 2**30
_MIN_HUGE_BYTES = 2 * HUGE_PAGE  # smaller tensors are not worth the alignment slack

_libc: ctypes.CDLL | None = None
_malloc_tuned = False


def _c_library() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        try:
            _libc = ctypes.CDLL("libc.so.6", use_errno=True)
            _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            _libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        except (OSError, AttributeError):
            _libc = None
    return _libc


def huge_pages_enabled() -> bool:
    return os.environ.get("PIE_HUGE_PAGES", "1") != "0" and _c_library() is not None


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def _aligned_empty(numel: int, dtype: torch.dtype, advise: bool) -> tuple[torch.Tensor, int]:
    """(raw allocation of `dtype`, element offset of its first 2 MiB boundary): `numel` elements from there on,
    untouched, madvised for huge pages before the first touch if `advise`. Views cut from it in its own dtype keep
    it alive (their `_base`)."""
    raw = torch.empty(numel + HUGE_PAGE // dtype.itemsize, dtype=dtype)  # untouched: no page is faulted in yet
    offset = -raw.data_ptr() % HUGE_PAGE  # a multiple of 64 bytes (torch aligns allocations), so of the item size
    if advise:
        advised = (numel * dtype.itemsize // HUGE_PAGE) * HUGE_PAGE
        _c_library().madvise(raw.data_ptr() + offset, advised, _MADV_HUGEPAGE)  # refusal only costs speed
    return raw, offset // dtype.itemsize


def _aligned_zeros(shape: tuple[int, ...], dtype: torch.dtype, advise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(tensor, its raw allocation): zeroed, 2 MiB-aligned, madvised for huge pages before the first touch if `advise`."""
    numel = math.prod(shape)
    raw, offset = _aligned_empty(numel, dtype, advise)
    tensor = raw[offset:offset + numel].view(shape)
    tensor.zero_()
    return tensor, raw


def zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zeroed, contiguous CPU tensor that the kernel may back with 2 MiB pages."""
    if _nbytes(shape, dtype) < _MIN_HUGE_BYTES or not huge_pages_enabled():
        return torch.zeros(shape, dtype=dtype)
    return _aligned_zeros(shape, dtype, advise=True)[0]


WEIGHT_CHUNK = 32 * 2**20  # packed weights are carved from chunks of 16 huge pages; a larger weight gets its own
_WEIGHT_ALIGN = 64  # a cache line: the AMX GEMM loads 1 KiB tiles


class _WeightChunks:
    """Hands out uninitialised tensors one after another from the current chunk of 2 MiB pages (one per dtype); a
    chunk lives as long as a tensor carved from it (each is a view of it), so an engine that closes gives its chunks
    back. Space inside a chunk is not reused: an engine built while another is alive may start in the other's last
    chunk, which then lives until both are gone (at most one chunk per dtype kept past a close)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: dict[torch.dtype, tuple[weakref.ref[torch.Tensor], int, int]] = {}  # chunk, next, end

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        numel = math.prod(shape)
        if numel * dtype.itemsize > WEIGHT_CHUNK:
            raw, start = _aligned_empty(numel, dtype, advise=True)
            return raw[start:start + numel].view(shape)
        align = _WEIGHT_ALIGN // dtype.itemsize
        with self._lock:
            chunk, start, end = self._current.get(dtype, (None, 0, 0))
            raw = chunk() if chunk is not None else None
            start = -(-start // align) * align
            if raw is None or start + numel > end:
                raw, start = _aligned_empty(WEIGHT_CHUNK // dtype.itemsize, dtype, advise=True)
                end = start + WEIGHT_CHUNK // dtype.itemsize
            self._current[dtype] = (weakref.ref(raw), start + numel, end)
        return raw[start:start + numel].view(shape)


_weight_chunks = _WeightChunks()


def weight_buffer(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised, contiguous CPU tensor for a weight written once and then only read (a packed GEMM weight),
    on 2 MiB pages shared with the weights carved before it (module docstring); plain `torch.empty` with huge pages
    off."""
    if not huge_pages_enabled():
        return torch.empty(shape, dtype=dtype)
    return _weight_chunks.take(shape, dtype)


_PIN_EXACT_BYTES = 64 * 2**20  # below this, the power-of-two rounding of pin_memory=True costs little


class _Registration:
    """Keeps a page-locked range's allocation alive; unlocks it before the memory can go back."""

    def __init__(self, runtime, pointer: int, raw: torch.Tensor):
        self.runtime, self.pointer, self.raw = runtime, pointer, raw

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit the runtime may already be gone
            self.runtime.cudaHostUnregister(self.pointer)


def loaded_library(name: str, maps: str | None = None) -> str | None:
    """Path of a shared library this process has mapped whose file name starts with `name` (from /proc/self/maps)."""
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return None
    for line in maps.splitlines():
        path = line.split()[-1] if len(line.split()) >= 6 else ""
        if os.path.basename(path).startswith(name):
            return path
    return None


def clear_cuda_error(runtime) -> bool:
    """Reset this thread's CUDA last-error state after a failed runtime call; False when no way to do it was found."""
    get_last_error = getattr(runtime, "cudaGetLastError", None)
    if get_last_error is None:
        path = loaded_library("libcudart.so")
        if path is None:
            return False
        try:
            get_last_error = ctypes.CDLL(path).cudaGetLastError  # the library torch loaded: same per-thread state
        except (OSError, AttributeError):
            return False
        get_last_error.restype = ctypes.c_int
    get_last_error()
    return True


def _error_name(runtime, result) -> str:
    with contextlib.suppress(Exception):
        return str(runtime.cudaGetErrorString(result))
    return f"CUDA error {int(result)}"


def pinned_zeros(shape: tuple[int, ...], dtype: torch.dtype, cudart=None) -> torch.Tensor:
    """Zeroed page-locked host memory of exactly `shape` (for CUDA copies); `cudart`: torch.cuda.cudart().

    When the driver refuses to lock it, the tensor is pageable and `pageable_reason` says why."""
    nbytes = _nbytes(shape, dtype)
    if nbytes < _PIN_EXACT_BYTES:
        return torch.zeros(shape, dtype=dtype, pin_memory=True)
    runtime = cudart if cudart is not None else torch.cuda.cudart()
    tensor, raw = _aligned_zeros(shape, dtype, advise=huge_pages_enabled())
    pointer = tensor.data_ptr()
    result = runtime.cudaHostRegister(pointer, nbytes, 0)
    if int(result) != 0:  # cudaSuccess is 0
        cleared = clear_cuda_error(runtime)
        tensor._pie_pageable = (f"cudaHostRegister refused to lock {nbytes / 2**30:.2f} GiB ({_error_name(runtime, result)})"
                                + ("" if cleared else "; CUDA's last error could not be cleared"))
        return tensor
    tensor._pie_pinned = _Registration(runtime, pointer, raw)  # unregistered when the tensor goes
    return tensor


def pageable_reason(tensor: torch.Tensor) -> str | None:
    """Why `pinned_zeros` had to leave `tensor` pageable; None when it is page-locked (or was never meant to be)."""
    return getattr(tensor, "_pie_pageable", None)


def keep_freed_memory() -> bool:
    """Keep freed allocations below 32 MiB in glibc's heap (once per process); True when applied."""
    global _malloc_tuned
    if _malloc_tuned:
        return True
    library = _c_library()
    if library is None or os.environ.get("PIE_MALLOC_TUNING", "1") == "0":
        return False
    try:
        applied = bool(library.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
            library.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    except AttributeError:  # not glibc
        return False
    _malloc_tuned = applied
    return applied
