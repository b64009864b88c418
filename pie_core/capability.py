"""What the device can do, as a record, and the dtype and kernels that follow from it (torch-free).

`DeviceCapability` is measured once (`pie_core.device_probe.detect_capability`, the only part that
touches torch or the OS) and kept
in the machine fingerprint, so it rides along in every profile and run record. Everything that
decides a fast path is a pure function of it, so each branch can be tested on any machine with
an injected record:

- `dtype_support(cap, dtype)`: "native" (the device multiplies it in hardware), "emulated"
  (it runs, converted in software, far slower; README.md, "On the machine it meets") or "unsupported" (it does not run).
- `choose_dtype(cap)`: bfloat16 where it is native, else float32 on a CPU and float16 on a GPU.
- `select_kernels(cap, dtype)`: oneDNN weight prepacking for bf16 GEMMs (the engine's own AMX GEMM instead
  where AMX is in effect, `ONEDNN_MAX_CPU_ISA` included; its own AVX512-BF16 GEMM where that is the best the CPU
  has), and which variant of
  the C decode-attention kernel to build, with its compiler flags (explicit ISA flags, never
  `-march=native`, so a record limited to AVX2 really gets AVX2 code); on CUDA, Triton paged
  attention (`runners/engine/triton_attention.py`), which the engine tries before PyTorch's.

On x86 the record's features are what the CPU reports (/proc/cpuinfo) masked by the ISA torch
dispatches to (`ATEN_CPU_CAPABILITY` lowers it) and by oneDNN's limit (`ONEDNN_MAX_CPU_ISA`), so
a run limited to AVX2 on an AVX-512 machine chooses exactly what an AVX2 machine would.

Left out: measuring speed (profiler/memory.py does; this module only knows what is native),
Apple's and Windows' feature queries (no /proc/cpuinfo there: the record then names no features
and every choice takes its portable branch).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from pie_core.dtypes import AUTO, canonical_dtype
from pie_core.errors import BadInput

DTYPES = ("bfloat16", "float16", "float32")

# Features that decide a fast path; everything else in /proc/cpuinfo is ignored.
X86_FEATURES = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16",
                "avx512_fp16", "avx_ne_convert", "avx_vnni", "amx_tile", "amx_bf16")
ARM_FEATURES = ("asimd", "fphp", "asimdhp", "bf16", "sve", "sve2", "svebf16")
_AVX512_CORE = ("avx512f", "avx512bw", "avx512vl", "avx512dq")

# Feature groups each ISA level adds (torch's capability names and oneDNN's ISA names, upper-case).
_LEVELS = (
    ("DEFAULT", ()), ("AVX2", ("avx2", "fma", "f16c", "avx_vnni", "avx_ne_convert")),
    ("AVX512", _AVX512_CORE), ("AVX512_CORE_BF16", ("avx512_bf16",)), ("AVX512_CORE_FP16", ("avx512_fp16",)),
    ("AVX512_CORE_AMX", ("amx_tile", "amx_bf16")),
)
_LEVEL_ALIASES = {"SSE41": "DEFAULT", "AVX": "DEFAULT", "AVX2_VNNI": "AVX2", "AVX2_VNNI_2": "AVX2",
                  "AVX512_CORE": "AVX512", "AVX512_CORE_VNNI": "AVX512", "AVX512_CORE_AMX_FP16": "AVX512_CORE_AMX",
                  "ZVECTOR": "DEFAULT", "ALL": "AVX512_CORE_AMX"}


def _allowed_by(level: str | None) -> set[str] | None:
    """The x86 features an ISA level admits; None for no limit (unknown names limit nothing)."""
    if not level:
        return None
    name = _LEVEL_ALIASES.get(level.upper(), level.upper())
    names = [n for n, _ in _LEVELS]
    if name not in names:
        return None
    allowed: set[str] = set()
    for level_name, features in _LEVELS[:names.index(name) + 1]:
        allowed.update(features)
    return allowed


@dataclass(frozen=True)
class DeviceCapability:
    kind: str  # cpu | cuda
    arch: str  # x86_64 | aarch64 | ... (the host's, also for cuda)
    torch_cpu_capability: str | None = None  # torch.backends.cpu.get_cpu_capability(): DEFAULT, AVX2, AVX512, ...
    cpu_flags: tuple[str, ...] = ()  # the deciding features the CPU reports (X86_FEATURES / ARM_FEATURES)
    onednn_max_isa: str | None = None  # $ONEDNN_MAX_CPU_ISA when set
    cuda_compute_capability: str | None = None  # "8.0" for an A100
    device_name: str | None = None
    runnable_dtypes: tuple[str, ...] = DTYPES  # dtypes a tiny matmul ran in (the probe in detect_capability)

    def __post_init__(self) -> None:
        if self.kind not in ("cpu", "cuda"):
            raise ValueError(f"capability kind must be cpu or cuda, got {self.kind!r}")
        if self.kind == "cuda" and self.cuda_compute_capability is None:
            raise ValueError("a cuda capability record needs cuda_compute_capability")

    # --- what the features add up to -------------------------------------------------------
    @property
    def is_x86(self) -> bool:
        return self.arch in ("x86_64", "amd64", "i686", "i386")

    @property
    def is_arm(self) -> bool:
        return self.arch in ("aarch64", "arm64")

    @property
    def features(self) -> frozenset[str]:
        """CPU features in effect: reported by the CPU and admitted by torch's ISA (x86)."""
        flags = set(self.cpu_flags)
        # torch's top x86 level (AVX512) limits nothing: oneDNN still uses BF16 and AMX beneath it.
        torch_level = self.torch_cpu_capability if self.torch_cpu_capability in ("DEFAULT", "AVX2") else None
        allowed = _allowed_by(torch_level) if self.is_x86 else None
        return frozenset(flags if allowed is None else flags & allowed)

    @property
    def onednn_features(self) -> frozenset[str]:
        """The effective features further limited by $ONEDNN_MAX_CPU_ISA (what oneDNN will use)."""
        allowed = _allowed_by(self.onednn_max_isa) if self.is_x86 else None
        return self.features if allowed is None else self.features & allowed

    @property
    def compute_capability(self) -> tuple[int, int] | None:
        if self.cuda_compute_capability is None:
            return None
        major, _, minor = self.cuda_compute_capability.partition(".")
        return int(major), int(minor or 0)

    def summary(self) -> str:
        """One line for messages: 'cpu x86_64 AVX512 (avx512_bf16)', 'cuda 8.0 (NVIDIA A100)'."""
        if self.kind == "cuda":
            return f"cuda {self.cuda_compute_capability}" + (f" ({self.device_name})" if self.device_name else "")
        keys = [f for f in ("avx512_bf16", "amx_bf16", "avx_ne_convert", "bf16", "asimdhp") if f in self.features]
        isa = self.torch_cpu_capability or "unknown ISA"
        return f"cpu {self.arch} {isa}" + (f" ({', '.join(keys)})" if keys else "")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "arch": self.arch, "torch_cpu_capability": self.torch_cpu_capability,
                "cpu_flags": list(self.cpu_flags), "onednn_max_isa": self.onednn_max_isa,
                "cuda_compute_capability": self.cuda_compute_capability, "device_name": self.device_name,
                "runnable_dtypes": list(self.runnable_dtypes), "effective_features": sorted(self.features),
                "native_dtypes": [d for d in DTYPES if dtype_support(self, d) == "native"],
                "auto_dtype": choose_dtype(self).dtype}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DeviceCapability":
        return cls(kind=data["kind"], arch=data["arch"], torch_cpu_capability=data.get("torch_cpu_capability"),
                   cpu_flags=tuple(data.get("cpu_flags", ())), onednn_max_isa=data.get("onednn_max_isa"),
                   cuda_compute_capability=data.get("cuda_compute_capability"), device_name=data.get("device_name"),
                   runnable_dtypes=tuple(data.get("runnable_dtypes", DTYPES)))

    def with_changes(self, **changes: Any) -> "DeviceCapability":
        return replace(self, **changes)


# --- dtype -------------------------------------------------------------------------------------
def dtype_support(cap: DeviceCapability, dtype: str) -> str:
    """'native', 'emulated' or 'unsupported' for `dtype` (canonical name) on this device."""
    if dtype not in cap.runnable_dtypes:
        return "unsupported"
    if dtype == "float32":
        return "native"
    if cap.kind == "cuda":
        major, minor = cap.compute_capability or (0, 0)
        if dtype == "float16":
            return "native" if (major, minor) >= (5, 3) else "emulated"
        return "native" if major >= 8 else "emulated"
    features = cap.onednn_features
    if cap.is_x86:
        if dtype == "bfloat16":
            native = {"avx512_bf16", "amx_bf16"} & features or {"avx_ne_convert", "avx_vnni"} <= features
            return "native" if native else "emulated"
        return "native" if "avx512_fp16" in features else "emulated"
    if cap.is_arm:
        if dtype == "bfloat16":
            return "native" if {"bf16", "svebf16"} & features else "emulated"
        return "native" if {"fphp", "asimdhp"} & features else "emulated"
    return "emulated"


@dataclass(frozen=True)
class DtypeChoice:
    dtype: str
    reason: str  # one line: why this dtype


def choose_dtype(cap: DeviceCapability) -> DtypeChoice:
    """bfloat16 where the device multiplies it natively; otherwise float32 on a CPU, float16 on a GPU."""
    if dtype_support(cap, "bfloat16") == "native":
        return DtypeChoice("bfloat16", f"{cap.summary()} multiplies bfloat16 natively")
    if cap.kind == "cuda" and dtype_support(cap, "float16") == "native":
        return DtypeChoice("float16", f"{cap.summary()} has no native bfloat16 (compute capability below 8.0)")
    return DtypeChoice("float32", f"{cap.summary()} only emulates bfloat16")


@dataclass(frozen=True)
class DtypeResolution:
    dtype: str
    requested: str  # "auto" or the canonical name that was asked for
    support: str  # native | emulated
    reason: str

    def message(self) -> str:
        return (f"dtype {self.dtype} (auto: {self.reason})" if self.requested == AUTO
                else f"dtype {self.dtype} ({self.support} here)")


def resolve_dtype(requested: str | None, cap: DeviceCapability) -> DtypeResolution:
    """'auto' (or None) -> `choose_dtype`; a named dtype is checked against the device.

    A dtype the device cannot run at all is bad input that says what to use instead; one it only
    emulates is allowed (`support` says so, and the caller warns with measured rates).
    """
    name = canonical_dtype(requested or AUTO, allow_auto=True)
    if name == AUTO:
        choice = choose_dtype(cap)
        return DtypeResolution(choice.dtype, AUTO, dtype_support(cap, choice.dtype), choice.reason)
    support = dtype_support(cap, name)
    if support == "unsupported":
        runnable = [d for d in DTYPES if dtype_support(cap, d) != "unsupported"]
        raise BadInput(f"{name} does not run on {cap.summary()} (this torch build has no {name} matmul for it)",
                       f"use --dtype auto ({choose_dtype(cap).dtype}) or one of: {', '.join(runnable)}")
    return DtypeResolution(name, name, support, f"{name} is {support} on {cap.summary()}")


# --- kernels -----------------------------------------------------------------------------------
C_VARIANT_FLAGS: dict[str, tuple[str, ...]] = {
    "avx512bf16": ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mavx2", "-mfma", "-mf16c",
                   "-mprefer-vector-width=512"),
    "avx512": ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c",
               "-mprefer-vector-width=512"),
    "avx2": ("-mavx2", "-mfma", "-mf16c"),
    "neon-bf16": ("-march=armv8.2-a+bf16",),
    "neon": ("-march=armv8-a",),
    "portable": (),
    # not a decode build: the AMX GEMM library (runners/engine/amx_gemm.c), where `select_kernels` sets `amx`
    "amx": ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mamx-tile", "-mamx-bf16"),
}
C_DTYPES = ("bfloat16", "float32")  # cache dtypes the C kernel has an entry point for


@dataclass(frozen=True)
class KernelChoice:
    prepack: bool  # reorder bf16 weights once for oneDNN (`models/linear.py`)
    decode: str  # "c", "triton" or "torch": the decode-attention path to try first
    c_variant: str | None  # key of C_VARIANT_FLAGS when decode == "c"
    reasons: tuple[str, ...]  # why each choice, one line each
    amx: bool = False  # bf16 GEMMs on the engine's AMX kernel (runners/engine/amx_gemm.c), oneDNN's behind it
    avx512_gemm: bool = False  # bf16 GEMMs on the engine's AVX512-BF16 kernel (runners/engine/bf16_gemm.c), oneDNN's behind it
    c_prefill: bool = False  # bf16 prefill attention on the C build's AVX512-BF16 kernel (prefill_attention.c), PyTorch's behind it

    @property
    def c_flags(self) -> tuple[str, ...]:
        return C_VARIANT_FLAGS[self.c_variant] if self.c_variant else ()


def c_variant(cap: DeviceCapability) -> str:
    """The best C decode kernel this CPU can run: explicit ISA flags from its effective features."""
    features = cap.features
    if cap.is_x86:
        if set(_AVX512_CORE) <= features and "avx512_bf16" in features:
            return "avx512bf16"
        if set(_AVX512_CORE) <= features:
            return "avx512"
        if {"avx2", "fma"} <= features:
            return "avx2"
        return "portable"
    if cap.is_arm:
        return "neon-bf16" if "bf16" in features else "neon"
    return "portable"


def select_kernels(cap: DeviceCapability, dtype: str) -> KernelChoice:
    """The fast paths for `dtype` on this device; each has a slower one behind it (the engine's fallbacks)."""
    if cap.kind == "cuda":
        return KernelChoice(prepack=False, decode="triton", c_variant=None,
                            reasons=("cuda: plain GEMMs", "cuda: Triton paged attention (PyTorch behind it)"))
    reasons = []
    onednn_bf16 = cap.is_x86 and (set(_AVX512_CORE) <= cap.onednn_features or "avx_ne_convert" in cap.onednn_features)
    prepack = dtype == "bfloat16" and onednn_bf16
    amx = prepack and {*_AVX512_CORE, "avx512_bf16", "amx_tile", "amx_bf16"} <= cap.onednn_features
    # without AMX, the engine's own GEMM on AVX512-BF16 (in the avx512bf16 build of the C kernels) beats oneDNN's
    # prepacked kernels at decode sizes (docs/engine-cpu-performance.md, "Zen 4")
    avx512_gemm = prepack and not amx and c_variant(cap) == "avx512bf16"
    if dtype != "bfloat16":
        reasons.append(f"plain GEMMs: prepacking is for bfloat16 weights, not {dtype}")
    elif amx:
        reasons.append("bf16 weights packed for AMX tiles: the engine's AMX GEMM (AMX and AVX512-BF16 present), "
                       "oneDNN's behind it")
    elif avx512_gemm:
        reasons.append("bf16 weights packed for the engine's AVX512-BF16 GEMM (AVX512-BF16 present, no AMX), "
                       "oneDNN's behind it")
    elif prepack:
        reasons.append("bf16 weights prepacked for oneDNN (AVX-512 BW/VL/DQ or AVX-NE-CONVERT present)")
    else:
        reasons.append("plain bf16 GEMMs: oneDNN's bf16 prepack needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT on x86")
    if dtype not in C_DTYPES:
        return KernelChoice(prepack, "torch", None, (*reasons, f"PyTorch decode attention: the C kernel has no {dtype} path"),
                            amx=amx, avx512_gemm=avx512_gemm)
    variant = c_variant(cap)
    # PyTorch's flash attention runs its bf16 products on AMX where oneDNN may use it; without AMX the C kernel
    # beats it by 2-3x (docs/engine-cpu-performance.md, "Zen 4")
    c_prefill = dtype == "bfloat16" and variant == "avx512bf16" and not amx
    prefill = (f"C prefill attention, {variant} build (AVX512-BF16, no AMX)" if c_prefill
               else "PyTorch prefill attention (flash attention for bf16 and fp16)")
    return KernelChoice(prepack, "c", variant, (*reasons, f"C decode attention, {variant} build", prefill), amx=amx,
                        avx512_gemm=avx512_gemm, c_prefill=c_prefill)
