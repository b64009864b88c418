"""A small C kernel for paged decode attention on the CPU, built once with the system compiler.

Why C: decode attention on these CPUs is memory-bound, and any pure-PyTorch version must
first gather each sequence's scattered KV blocks into a contiguous tensor (the flat
`[blocks, 2, block_size, Hkv, dh]` layout has no uniform token stride), which reads and writes
the whole context again and page-faults a fresh buffer every layer, several times the cost of
reading the KV once (docs/engine-cpu-performance.md). This kernel reads K and V in place through
the block table, once each: pass 1 `q·k` per token (fp32 accumulate), softmax, pass 2 `p·v`.
A work item is one sequence (or, for small batches, a range of its KV heads). Each block is
visited once, flash-decoding style: q·k for the block's tokens with all heads of a token
together (K rows in memory order), an online-softmax update, then p·v over the block's V rows,
which sit right after its K rows; so K and V stream through memory in one pass, and the next
block is prefetched meanwhile. q·k uses AVX512-BF16 dot products in the build that has them
(bf16 products, fp32 sums, as a bf16 GEMM); softmax and p·v are in fp32. Items spread over
OpenMP threads (the libgomp torch already loaded, so one thread pool). The C is portable: the
AVX-512 parts sit behind `#if`, and every other build (AVX2, NEON, plain) takes loops the
compiler vectorises for its flags.

The C source is `paged_decode.c` beside this module (package data). One library per variant
(pie_core/capability.py `C_VARIANT_FLAGS`: avx512bf16, avx512, avx2, neon-bf16, neon, portable;
explicit ISA flags, never `-march=native`, so the variant follows the capability record), compiled
on first use into `~/.cache/pie/kernels/` (or `$PIE_KERNEL_CACHE`) with `cc -O3 -fopenmp <flags>`,
then called once in a child process on a tiny cache (an instruction the CPU lacks kills the child,
not the run) before it is loaded with ctypes.
`load(variant)` returns None when the build or that smoke test fails, with the reason in
`load_error(variant)`, and `runners.engine.attention` then uses its PyTorch path and says so.

Left out: fp16 caches (PyTorch path), CUDA (PyTorch path), prefill (matmul-bound; PyTorch).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from pie_core.capability import C_VARIANT_FLAGS, c_variant
from pie_core.device_probe import detect_capability

# The kernel's source ships beside this module as package data (pyproject.toml).
_SOURCE = (Path(__file__).with_name("paged_decode.c")).read_text()

_BASE_FLAGS = ("-O3", "-fopenmp", "-fPIC", "-shared")
_FUNCTIONS = {torch.bfloat16: "paged_decode_bf16", torch.float32: "paged_decode_f32"}
_libraries: dict[str, ctypes.CDLL | None] = {}
_load_errors: dict[str, str] = {}

# Run in a fresh interpreter against a just-built library: both entry points on a tiny cache.
# An instruction this CPU lacks kills that process (SIGILL), not the caller.
_SMOKE_TEST = r"""
import ctypes, struct, sys
lib = ctypes.CDLL(sys.argv[1])
heads, dh, bs = 2, 8, 4
for name, fmt, size in (("paged_decode_f32", "f", 4), ("paged_decode_bf16", "H", 2)):
    one = 1.0 if fmt == "f" else 0x3F80
    q = (ctypes.c_char * (heads * dh * size)).from_buffer_copy(struct.pack(fmt * (heads * dh), *[one] * (heads * dh)))
    cache = (ctypes.c_char * (2 * bs * heads * dh * size)).from_buffer_copy(
        struct.pack(fmt * (2 * bs * heads * dh), *[one] * (2 * bs * heads * dh)))
    tables, lens = (ctypes.c_int64 * 1)(0), (ctypes.c_int64 * 1)(3)
    out = (ctypes.c_char * (heads * dh * size))()
    fn = getattr(lib, name)
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 8 + [ctypes.c_float, ctypes.c_int64]
    fn(ctypes.addressof(q), ctypes.addressof(cache), ctypes.addressof(tables), ctypes.addressof(lens),
       ctypes.addressof(out), 1, heads, heads, dh, bs, 1, 1, 3, 0.5, 1)
    first = struct.unpack(fmt, bytes(out)[:size])[0]
    value = first if fmt == "f" else struct.unpack("f", struct.pack("I", first << 16))[0]
    if abs(value - 1.0) > 1e-2:
        sys.exit(f"{name}: attention over values of 1 gave {value}")
"""


def _cache_dir() -> Path:
    return Path(os.environ.get("PIE_KERNEL_CACHE", Path.home() / ".cache" / "pie" / "kernels"))


def _flags(variant: str) -> tuple[str, ...]:
    return (*_BASE_FLAGS, *C_VARIANT_FLAGS[variant])


def _build(target: Path, variant: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    compiler = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / "paged_decode.c"
        source.write_text(_SOURCE)
        built = Path(work) / target.name
        subprocess.run([compiler, *_flags(variant), str(source), "-o", str(built), "-lm"],
                       check=True, capture_output=True, text=True, timeout=120)
        os.replace(built, target)  # atomic: a concurrent builder never sees half a file


def _smoke_test(target: Path) -> None:
    """Call the library in a child process; raises SubprocessError when it crashes or computes wrong."""
    result = subprocess.run([sys.executable, "-c", _SMOKE_TEST, str(target)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        why = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        if result.returncode < 0:
            why = f"killed by signal {-result.returncode} (an instruction this CPU lacks?)"
        raise subprocess.SubprocessError(f"the built kernel failed its smoke test: {why}")


def default_variant() -> str:
    """The C variant this machine's own capability record selects (pie_core/capability.py)."""
    return c_variant(detect_capability("cpu"))


def load(variant: str | None = None) -> ctypes.CDLL | None:
    """The compiled kernel for `variant` (default: this machine's), built and smoke-tested on first use; None when it cannot run."""
    variant = variant or default_variant()
    if variant in _libraries:
        return _libraries[variant]
    _libraries[variant] = None
    digest = hashlib.sha256((_SOURCE + " ".join(_flags(variant)) + os.uname().machine).encode()).hexdigest()[:16]
    target = _cache_dir() / f"paged_decode_{variant}_{digest}.so"
    try:
        if not target.exists():
            _build(target, variant)
        _smoke_test(target)
        library = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as err:
        lines = (getattr(err, "stderr", "") or "").strip().splitlines()
        detail = next((line for line in lines if "error" in line), lines[-1]) if lines else str(err)
        _load_errors[variant] = f"C decode kernel ({variant}) unavailable: {detail}"
        return None
    for name in _FUNCTIONS.values():
        function = getattr(library, name)
        function.restype = None
        function.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 8 + [ctypes.c_float, ctypes.c_int64]
    _libraries[variant] = library
    return library


def load_error(variant: str | None = None) -> str | None:
    return _load_errors.get(variant or default_variant())


def supports(q: torch.Tensor, kv_cache: torch.Tensor, variant: str | None = None) -> bool:
    return (q.device.type == "cpu" and kv_cache.device.type == "cpu" and kv_cache.dtype in _FUNCTIONS
            and kv_cache.is_contiguous() and load(variant) is not None)


def _splits(batch: int, kv_heads: int) -> int:
    """Split each sequence's KV heads over work items only when there are too few sequences to share out."""
    threads = torch.get_num_threads()
    return 1 if batch >= 4 * threads else min(kv_heads, -(-4 * threads // batch))


def paged_decode(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                 context_lens: torch.Tensor, scale: float, variant: str | None = None,
                 max_len: int | None = None) -> torch.Tensor:
    """Same contract as `attention.paged_decode_attention`; caller checked `supports` for this variant.

    `max_len`: the longest context, known on the host (None: read from `context_lens`)."""
    batch, heads, head_dim = q.shape
    num_blocks, _, block_size, kv_heads, _ = kv_cache.shape
    query = q.to(kv_cache.dtype).contiguous()
    tables = block_tables.to(torch.int64).contiguous()
    lens = context_lens.to(torch.int64).contiguous()
    if max_len is None:
        max_len = int(lens.max()) if batch else 0
    if batch and tables.shape[1] * block_size < max_len:
        raise ValueError(f"block table width {tables.shape[1]} x block size {block_size} < context length {max_len}")
    out = torch.empty_like(query)
    if batch:
        getattr(load(variant), _FUNCTIONS[kv_cache.dtype])(
            query.data_ptr(), kv_cache.data_ptr(), tables.data_ptr(), lens.data_ptr(), out.data_ptr(),
            batch, heads, kv_heads, head_dim, block_size, tables.shape[1], num_blocks, max(max_len, 1), float(scale),
            _splits(batch, kv_heads))
    return out.to(q.dtype)
