"""The kernels the engine really runs: the capability record's choice, tried, with its fallbacks named.

`pie_core/capability.py` says what should be fast on a device (a pure function of its record);
`resolve_kernels` turns that into what will run here, trying each fast path once:

- GEMMs: where the record selects AMX, the engine's AMX GEMM (models/linear.py;
  the library is built and smoke-tested like the C attention's, `c_kernels.py`); where it selects the
  AVX512-BF16 GEMM (no AMX), the engine's own on the vector units (in the avx512bf16 C library, smoke-tested
  with it); else, or if neither can run, oneDNN-prepacked bf16 weights where selected; if a trial reorder
  raises (oneDNN refuses the CPU), plain `F.linear`. The engine setting `prepack=onednn` skips the engine's
  own GEMMs, `prepack=off` forces plain.
- Prefill attention: where the record selects it (bf16, AVX512-BF16 and no AMX), the C build's own kernel
  (`prefill_attention.c`, in the library decode attention loads); else, or where the build lacks it or decode
  attention is not on C, PyTorch's (`attention.prefill_attention`).
- Decode attention: the selected C build (built and smoke-tested in a child process, see
  `cpu_attention.py`, `c_kernels.py`); if it cannot be built or fails its smoke test, the PyTorch path.
  On CUDA the Triton kernels (`triton_attention.py`, decode and paged-prefix prefill): Triton
  must import and, at the engine's dtype, heads, head_dim and block size, decode at every split
  count and prefill with and without a prefix must match the PyTorch path (triton_smoke.py; the
  same calls compile every variant before a step is timed), else PyTorch.
  The engine setting `decode_kernel=torch|c|triton` forces one (c and triton fail loudly when they
  cannot run); the resolve step takes its default from `PIE_DECODE_KERNEL` once (runners/resolve.py).
  A CPU run never imports Triton.

The result, `KernelPaths`, is what the engine and the profiler report (`fallbacks` lists each
fast path that was selected but not taken, and why). Nothing here aborts a run.

Left out: CUDA GEMM choices beyond PyTorch's, CUDA graphs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pie_core.capability import DeviceCapability, select_kernels
from pie_core.device_probe import detect_capability
from runners.engine.models.linear import Linear, packable
from runners.engine.triton_smoke import AttentionGeometry

LINEAR_PATHS = ("amx", "avx512bf16", "onednn-prepacked", "torch-linear")
OWN_GEMMS = LINEAR_PATHS[:2]  # the engine's own GEMMs, each with oneDNN's behind it


@dataclass(frozen=True)
class KernelPaths:
    dtype: str
    linear: str  # amx | avx512bf16 | onednn-prepacked | torch-linear
    decode_attention: str  # "c-<variant>" | "triton" | "torch"
    c_variant: str | None  # the C build in use, None on the PyTorch path
    capability: str  # one-line summary of the record the choice came from
    fallbacks: tuple[str, ...] = ()
    prefill_attention: str = "torch"  # "c-<variant>" | "triton" | "torch"

    @property
    def prepack(self) -> bool | str:
        """What `build_model(prepack=...)` takes: "amx", "avx512bf16", True (oneDNN) or False (plain weights)."""
        return self.linear if self.linear in OWN_GEMMS else self.linear == "onednn-prepacked"

    @property
    def decode_variant(self) -> str:
        """What `attention.paged_decode_attention(variant=...)` takes."""
        return self.c_variant or ("triton" if self.decode_attention == "triton" else "torch")

    @property
    def prefill_variant(self) -> str | None:
        """The C build `attention.prefill_attention(c_variant=...)` takes; None: PyTorch's (or Triton's)."""
        return self.c_variant if self.prefill_attention.startswith("c-") else None

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "linear": self.linear, "decode_attention": self.decode_attention,
                "prefill_attention": self.prefill_attention, "capability": self.capability,
                "fallbacks": list(self.fallbacks)}

    def describe(self) -> str:
        text = (f"kernels: GEMMs {self.linear}, decode attention {self.decode_attention}, prefill attention "
                f"{self.prefill_attention} ({self.dtype}; {self.capability})")
        return text + "".join(f"; fallback: {why}" for why in self.fallbacks)


def _try_prepack() -> str | None:
    """None when a bf16 weight reorders and multiplies through oneDNN here, else why not."""
    weight = torch.ones(32, 32, dtype=torch.bfloat16)
    if not packable(weight):
        return "no oneDNN prepack in this torch"
    linear = Linear(weight, prepack=True)
    if not linear.packed:
        return linear.fallback
    try:
        out = linear(torch.ones(4, 32, dtype=torch.bfloat16))
    except RuntimeError as err:
        return f"oneDNN prepacked GEMM failed ({(str(err).strip().splitlines() or [''])[0]})"
    return None if float(out[0, 0]) == 32.0 else f"oneDNN prepacked GEMM gave {float(out[0, 0])}, expected 32"


def _try_triton(device: str, geometry: AttentionGeometry) -> str | None:
    """None when the Triton kernels import and match the PyTorch paths at the engine's geometry on `device`,
    else why not; the same calls compile every variant the engine's steps launch (triton_smoke.py)."""
    from runners.engine import triton_smoke

    return triton_smoke.trial(geometry, device)


_resolved: dict[tuple, KernelPaths] = {}


def resolve_kernels(device: str, dtype: str, capability: DeviceCapability | None = None,
                    decode_kernel: str = "auto", prepack: str = "auto",
                    geometry: AttentionGeometry | None = None) -> KernelPaths:
    """The kernels to run for `dtype` on `device`, given its record (default: this machine's, detected), and the
    engine settings `decode_kernel` (auto|c|torch|triton) and `prepack` (auto|onednn|off). `geometry`: the attention
    the engine will run (heads, head_dim, block size), which a Triton trial uses (None: a small GQA one)."""
    cap = capability or detect_capability(device)
    forced = ({"off": "0", "onednn": "onednn"}.get(prepack, "1"), decode_kernel)
    geometry = geometry or AttentionGeometry(dtype, num_heads=4, num_kv_heads=2, head_dim=16, block_size=16)
    key = (cap, dtype, forced, geometry)
    if key in _resolved:
        return _resolved[key]
    choice = select_kernels(cap, dtype)
    fallbacks: list[str] = []
    prepack = choice.prepack and torch.device(device).type == "cpu"
    amx = prepack and choice.amx and forced[0] == "1"
    avx512_gemm = prepack and choice.avx512_gemm and forced[0] == "1"
    if amx or avx512_gemm:
        from runners.engine import c_kernels

        gemm_build = c_kernels.AMX if amx else choice.c_variant
        library = c_kernels.load(gemm_build)
        if library is None or not (amx or c_kernels.has_gemm(library)):
            why = c_kernels.load_error(gemm_build) or f"the {gemm_build} C kernels have no bf16_linear"
            fallbacks.append(f"{why}; oneDNN GEMMs")
            amx = avx512_gemm = False
    own = LINEAR_PATHS[0] if amx else LINEAR_PATHS[1] if avx512_gemm else None
    if prepack and forced[0] == "0":
        prepack = False
    elif prepack and not own:
        failure = _try_prepack()
        if failure:
            fallbacks.append(f"{failure}; plain GEMMs")
            prepack = False
    variant = choice.c_variant if choice.decode == "c" else None
    if forced[1] == "c":  # asked for: this record's C build, or this machine's own; failing is an error, not a fallback
        from runners.engine import c_kernels

        variant = variant or c_kernels.default_variant()
        if torch.device(device).type != "cpu" or c_kernels.load(variant) is None:
            raise RuntimeError(f"decode_kernel=c but the C kernel cannot run here: "
                               f"{c_kernels.load_error(variant) or device}")
    elif variant and forced[1] in ("torch", "triton"):
        variant = None
    elif variant:
        from runners.engine import c_kernels

        if c_kernels.load(variant) is None:
            fallbacks.append(f"{c_kernels.load_error(variant)}; PyTorch decode attention")
            variant = None
    decode = f"c-{variant}" if variant else "torch"
    prefill = "torch"
    if choice.c_prefill and variant and torch.device(device).type == "cpu":
        from runners.engine import c_kernels

        if c_kernels.has_prefill(c_kernels.load(variant)):
            prefill = decode
        else:
            fallbacks.append(f"the {variant} C kernels have no prefill_attention_bf16; PyTorch prefill attention")
    if forced[1] == "triton":
        failure = _try_triton(device, geometry)
        if failure:
            raise RuntimeError(f"decode_kernel=triton but {failure}")
        decode = prefill = "triton"
    elif choice.decode == "triton" and torch.device(device).type == "cuda" and forced[1] != "torch":
        failure = _try_triton(device, geometry)
        if failure:
            fallbacks.append(f"{failure}; PyTorch attention")
        else:
            decode = prefill = "triton"
    paths = KernelPaths(dtype=dtype, linear=own or (LINEAR_PATHS[2] if prepack else LINEAR_PATHS[3]),
                        decode_attention=decode, c_variant=variant,
                        capability=cap.summary(), fallbacks=tuple(fallbacks), prefill_attention=prefill)
    _resolved[key] = paths
    return paths
