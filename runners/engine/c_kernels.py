"""The engine's C library for the CPU, built once with the system compiler and loaded with ctypes.

Five sources beside this module (package data), compiled into one library:
- `paged_decode.c`: paged decode attention (`cpu_attention.py` says why it is C, and how it works);
- `greedy_argmax.c`: greedy sampling's argmax over bf16 logit rows (`sampler.py`);
- `kv_rows.c`: writing a step's new keys and values into their cache slots (`attention.write_kv`);
- `bf16_gemm.c`: the bf16 GEMM on AVX512-BF16 vector units that `models/linear.py` runs where the capability
  record selects it (in the avx512bf16 build only: `has_gemm`);
- `prefill_attention.c`: causal prefill attention of one sequence on AVX512-BF16 vector units, which
  `attention.prefill_attention` runs where the record selects it (in the avx512bf16 build only: `has_prefill`).
The last two share their register block, `bf16_dot.h` (`HEADERS`: written beside the sources for the build).
A second library, variant `amx` (`AMX`), holds `amx_gemm.c` alone: the bf16 GEMM on Intel AMX tiles that
`models/linear.py` runs where the capability record selects it.

One library per variant (pie_core/capability.py `C_VARIANT_FLAGS`: avx512bf16, avx512, avx2,
neon-bf16, neon, portable; explicit ISA flags, never `-march=native`, so the variant follows the
capability record), compiled on first use into `~/.cache/pie/kernels/` (or `$PIE_KERNEL_CACHE`)
with `cc -O3 -fopenmp <flags>`, then called once in a child process on tiny inputs (an instruction
the CPU lacks kills the child, not the run) before it is loaded. Work spreads over OpenMP threads
(the libgomp torch already loaded, so one thread pool). The C is portable: the AVX-512 parts sit
behind `#if`, and every other build takes loops the compiler vectorises for its flags.
`load(variant)` returns None when the build or that smoke test fails, with the reason in
`load_error(variant)`; the engine then takes its PyTorch paths and says so.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pie_core.capability import C_VARIANT_FLAGS, c_variant
from pie_core.device_probe import detect_capability

SOURCES = ("paged_decode.c", "greedy_argmax.c", "kv_rows.c", "bf16_gemm.c", "prefill_attention.c")
AMX = "amx"  # the AMX GEMM library's variant (pie_core/capability.py C_VARIANT_FLAGS; never a decode build)
AMX_SOURCES = ("amx_gemm.c",)
HEADERS = ("bf16_dot.h",)  # included by SOURCES; written beside them for the build, part of the library's digest
_TEXTS = {name: Path(__file__).with_name(name).read_text() for name in (*SOURCES, *AMX_SOURCES, *HEADERS)}

_BASE_FLAGS = ("-O3", "-fopenmp", "-fPIC", "-shared")
_DECODE_ARGS = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 8 + [ctypes.c_float, ctypes.c_int64, ctypes.c_int64]
# paged_decode_bf16_generic: the token-by-token path paged_decode_bf16 takes where its AVX512-BF16 one does not apply
# (the engine never calls it directly; benchmarks/bench_decode_step.py compares the two)
SIGNATURES = {"paged_decode_bf16": _DECODE_ARGS, "paged_decode_bf16_generic": _DECODE_ARGS, "paged_decode_f32": _DECODE_ARGS,
              "argmax_rows_bf16": [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p],
              "kv_write_rows": [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                                ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64],
              # only in builds with AVX512-BF16 (bf16_gemm.c, prefill_attention.c)
              "bf16_linear": [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                              ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p],
              "prefill_attention_bf16": [ctypes.c_void_p, ctypes.c_int64] * 4 + [ctypes.c_int64] * 5 + [ctypes.c_float]}
# entry points of some builds only (has_gemm and has_prefill say whether a library has them)
OPTIONAL = frozenset({"bf16_linear", "prefill_attention_bf16"})
_RESTYPES = {"kv_write_rows": ctypes.c_int64, "amx_linear_argmax": ctypes.c_int64}
_PACK_ARGS = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
AMX_SIGNATURES = {"amx_pack_weight": _PACK_ARGS, "amx_unpack_weight": _PACK_ARGS,
                  "amx_linear": [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                                 ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p],
                  "amx_linear_argmax": [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_void_p, ctypes.c_void_p]}
_libraries: dict[str, ctypes.CDLL | None] = {}
_load_errors: dict[str, str] = {}

# Run in a fresh interpreter against a just-built library: every entry point on tiny inputs.
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
    fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 8 + [ctypes.c_float, ctypes.c_int64, ctypes.c_int64]
    fn(ctypes.addressof(q), ctypes.addressof(cache), ctypes.addressof(tables), ctypes.addressof(lens),
       ctypes.addressof(out), 1, heads, heads, dh, bs, 1, 1, 3, 0.5, 1, heads * dh)
    first = struct.unpack(fmt, bytes(out)[:size])[0]
    value = first if fmt == "f" else struct.unpack("f", struct.pack("I", first << 16))[0]
    if abs(value - 1.0) > 1e-2:
        sys.exit(f"{name}: attention over values of 1 gave {value}")
cols = 40  # two 16-lane steps and a tail; the maximum (2.0, 0x4000) first at 21, again at 37
row = [0x3F80] * cols
row[21] = row[37] = 0x4000
logits = (ctypes.c_char * (2 * cols)).from_buffer_copy(struct.pack("H" * cols, *row))
index = (ctypes.c_int64 * 1)(-1)
lib.argmax_rows_bf16.restype = None
lib.argmax_rows_bf16.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
lib.argmax_rows_bf16(ctypes.addressof(logits), 1, cols, ctypes.addressof(index))
if index[0] != 21:
    sys.exit(f"argmax_rows_bf16 gave {index[0]}, expected 21")
cache, k, v = (ctypes.c_uint8 * 64)(), (ctypes.c_uint8 * 8)(*range(1, 9)), (ctypes.c_uint8 * 8)(*range(11, 19))
slots = (ctypes.c_int64 * 2)(3, 4)  # 2 blocks of 2 slots, rows of 4 bytes: K rows 5 and 8, V rows 7 and 10
lib.kv_write_rows.restype = ctypes.c_int64
lib.kv_write_rows.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                              ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64]
if lib.kv_write_rows(cache, 3, 2, 4, slots, 2, k, 4, v, 4) != -1 or bytes(cache)[20:24] != bytes(range(1, 5)) \
        or bytes(cache)[40:44] != bytes(range(15, 19)):
    sys.exit("kv_write_rows wrote the wrong rows")
if hasattr(lib, "bf16_linear"):  # 3 rows of ones times a 32 x 64 weight of ones, in its tile layout, bias 1, ReLU: 65
    n, k, m = 32, 64, 3
    ones = lambda count: (ctypes.c_uint16 * count)(*[0x3F80] * count)
    out = (ctypes.c_uint16 * (m * n))()
    lib.bf16_linear.restype = None
    lib.bf16_linear.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                                ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
    lib.bf16_linear(ones(m * k), m, k, ones(n * k), n, ones(n), 1, out)
    values = {struct.unpack("f", struct.pack("I", v << 16))[0] for v in out}
    if values != {65.0}:
        sys.exit(f"bf16_linear gave {sorted(values)}, expected 65")
if hasattr(lib, "prefill_attention_bf16"):  # 3 tokens, 2 heads of 16; values of head h are h + 1: so is its output
    t, heads, dh = 3, 2, 16
    qk = (ctypes.c_uint16 * (t * heads * dh))(*[0x3F80] * (t * heads * dh))
    v = (ctypes.c_uint16 * (t * heads * dh))(*[0x3F80 if i % (heads * dh) < dh else 0x4000 for i in range(t * heads * dh)])
    out = (ctypes.c_uint16 * (t * heads * dh))()
    lib.prefill_attention_bf16.restype = None
    lib.prefill_attention_bf16.argtypes = [ctypes.c_void_p, ctypes.c_int64] * 4 + [ctypes.c_int64] * 5 + [ctypes.c_float]
    lib.prefill_attention_bf16(qk, heads * dh, qk, heads * dh, v, heads * dh, out, heads * dh, t, 0, heads, heads, dh, 0.25)
    if list(out) != list(v):
        sys.exit(f"prefill_attention_bf16 gave {sorted(set(out))}, expected 0x3F80 and 0x4000")
"""

# The AMX library's: the process asks Linux for AMX state, packs a 32 x 64 weight of ones and multiplies rows of
# ones (3 rows: padded to 32) with a bias of 1 and ReLU; every output must be 65. Without AMX this dies (SIGILL).
_AMX_SMOKE_TEST = r"""
import ctypes, struct, sys
lib = ctypes.CDLL(sys.argv[1])
lib.amx_gemm_init.restype = ctypes.c_int64
if lib.amx_gemm_init() != 0:
    sys.exit("Linux refused AMX state to this process (arch_prctl ARCH_REQ_XCOMP_PERM)")
n, k, m = 32, 64, 3
weight = (ctypes.c_uint16 * (n * k))(*[0x3F80] * (n * k))
packed = (ctypes.c_uint16 * (n * k))()
x = (ctypes.c_uint16 * (m * k))(*[0x3F80] * (m * k))
bias = (ctypes.c_uint16 * n)(*[0x3F80] * n)
out = (ctypes.c_uint16 * (m * n))()
lib.amx_pack_weight(weight, ctypes.c_int64(n), ctypes.c_int64(k), packed)
lib.amx_linear(x, ctypes.c_int64(m), ctypes.c_int64(k), packed, ctypes.c_int64(n), bias, ctypes.c_int64(1), out)
values = {struct.unpack("f", struct.pack("I", v << 16))[0] for v in out}
if values != {65.0}:
    sys.exit(f"amx_linear gave {sorted(values)}, expected 65")
bumped = (ctypes.c_uint16 * n)(*[0x4000 if c == 17 else 0x3F80 for c in range(n)])  # column 17's logit is 66
tokens = (ctypes.c_int64 * m)()
lib.amx_linear_argmax.restype = ctypes.c_int64
done = lib.amx_linear_argmax(x, ctypes.c_int64(m), ctypes.c_int64(k), packed, ctypes.c_int64(n), bumped, tokens)
if done != 0 or list(tokens) != [17] * m:
    sys.exit(f"amx_linear_argmax gave {list(tokens)} (returned {done}), expected 17 for each row")
"""


def _sources(variant: str) -> tuple[str, ...]:
    return AMX_SOURCES if variant == AMX else SOURCES


def _cache_dir() -> Path:
    return Path(os.environ.get("PIE_KERNEL_CACHE", Path.home() / ".cache" / "pie" / "kernels"))


def _flags(variant: str) -> tuple[str, ...]:
    return (*_BASE_FLAGS, *C_VARIANT_FLAGS[variant])


def _build(target: Path, variant: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    compiler = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as work:
        for name in HEADERS:
            (Path(work) / name).write_text(_TEXTS[name])
        sources = []
        for name in _sources(variant):
            (Path(work) / name).write_text(_TEXTS[name])
            sources.append(str(Path(work) / name))
        built = Path(work) / target.name
        subprocess.run([compiler, *_flags(variant), *sources, "-o", str(built), "-lm"],
                       check=True, capture_output=True, text=True, timeout=120)
        os.replace(built, target)  # atomic: a concurrent builder never sees half a file


def _smoke_test(target: Path, variant: str) -> None:
    """Call the library in a child process; raises SubprocessError when it crashes or computes wrong."""
    script = _AMX_SMOKE_TEST if variant == AMX else _SMOKE_TEST
    result = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        why = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        if result.returncode < 0:
            why = f"killed by signal {-result.returncode} (an instruction this CPU lacks?)"
        raise subprocess.SubprocessError(f"the built kernel failed its smoke test: {why}")


def default_variant() -> str:
    """The C variant this machine's own capability record selects (pie_core/capability.py)."""
    return c_variant(detect_capability("cpu"))


def load(variant: str | None = None) -> ctypes.CDLL | None:
    """The compiled library for `variant` (default: this machine's), built and smoke-tested on first use; None when it cannot run."""
    variant = variant or default_variant()
    if variant in _libraries:
        return _libraries[variant]
    _libraries[variant] = None
    text = "".join(_TEXTS[name] for name in (*_sources(variant), *HEADERS))
    digest = hashlib.sha256((text + " ".join(_flags(variant)) + os.uname().machine).encode()).hexdigest()[:16]
    target = _cache_dir() / f"pie_{'gemm' if variant == AMX else 'kernels'}_{variant}_{digest}.so"
    try:
        if not target.exists():
            _build(target, variant)
        _smoke_test(target, variant)
        library = ctypes.CDLL(str(target))
        if variant == AMX:
            library.amx_gemm_init.restype = ctypes.c_int64
            if library.amx_gemm_init() != 0:  # this process's own AMX state (the smoke test asked for its child)
                raise OSError("Linux refused AMX state to this process (arch_prctl ARCH_REQ_XCOMP_PERM)")
    except (OSError, subprocess.SubprocessError) as err:
        lines = (getattr(err, "stderr", "") or "").strip().splitlines()
        detail = next((line for line in lines if "error" in line), lines[-1]) if lines else str(err)
        _load_errors[variant] = f"C kernels ({variant}) unavailable: {detail}"
        return None
    for name, argtypes in (AMX_SIGNATURES if variant == AMX else SIGNATURES).items():
        if name in OPTIONAL and not hasattr(library, name):
            continue
        function = getattr(library, name)
        function.restype = _RESTYPES.get(name)
        function.argtypes = argtypes
    _libraries[variant] = library
    return library


def has_gemm(library: ctypes.CDLL | None) -> bool:
    """Whether a loaded C kernel library carries the AVX512-BF16 GEMM (bf16_gemm.c; the avx512bf16 build only)."""
    return library is not None and hasattr(library, "bf16_linear")


def has_prefill(library: ctypes.CDLL | None) -> bool:
    """Whether a loaded C kernel library carries the AVX512-BF16 prefill attention (prefill_attention.c; avx512bf16 only)."""
    return library is not None and hasattr(library, "prefill_attention_bf16")


def load_error(variant: str | None = None) -> str | None:
    return _load_errors.get(variant or default_variant())
