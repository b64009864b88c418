"""The kernels the engine really runs: the capability record's choice, tried, with its fallbacks named.

`pie_core/capability.py` says what should be fast on a device (a pure function of its record);
`resolve_kernels` turns that into what will run here, trying each fast path once:

- GEMMs: oneDNN-prepacked bf16 weights where selected; if a trial reorder raises (oneDNN
  refuses the CPU), plain `F.linear`. The engine setting `prepack=off` forces plain.
- Decode attention: the selected C build (built and smoke-tested in a child process, see
  `cpu_attention.py`); if it cannot be built or fails its smoke test, the PyTorch path.
  On CUDA the Triton kernels (`triton_attention.py`, decode and paged-prefix prefill): Triton
  must import and one tiny decode and prefill must match the PyTorch path, else PyTorch.
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

LINEAR_PATHS = ("onednn-prepacked", "torch-linear")


@dataclass(frozen=True)
class KernelPaths:
    dtype: str
    linear: str  # onednn-prepacked | torch-linear
    decode_attention: str  # "c-<variant>" | "triton" | "torch"
    c_variant: str | None  # the C build in use, None on the PyTorch path
    capability: str  # one-line summary of the record the choice came from
    fallbacks: tuple[str, ...] = ()

    @property
    def prepack(self) -> bool:
        return self.linear == "onednn-prepacked"

    @property
    def decode_variant(self) -> str:
        """What `attention.paged_decode_attention(variant=...)` takes."""
        return self.c_variant or ("triton" if self.decode_attention == "triton" else "torch")

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "linear": self.linear, "decode_attention": self.decode_attention,
                "capability": self.capability, "fallbacks": list(self.fallbacks)}

    def describe(self) -> str:
        text = f"kernels: GEMMs {self.linear}, decode attention {self.decode_attention} ({self.dtype}; {self.capability})"
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


def _try_triton(device: str) -> str | None:
    """None when the Triton kernels import and match the PyTorch paths on a tiny case on `device`, else why not."""
    from runners.engine import attention

    kernels = attention.triton_kernels()
    if kernels is None:
        return attention.triton_error()
    generator = torch.Generator().manual_seed(0)
    cache = torch.randn(6, 2, 16, 2, 16, generator=generator).to(device, torch.float16)
    tables = torch.tensor([[3, 1, -1], [0, 5, 2]], device=device)
    lens = torch.tensor([20, 40], device=device)
    q = torch.randn(2, 4, 16, generator=generator).to(device, torch.float16)
    k, v = cache[0, 0], cache[0, 1]  # 16 packed tokens, one sequence
    cu = torch.tensor([0, 16], device=device)
    try:
        pairs = [(kernels.paged_decode(q, cache, tables, lens, 0.25),
                  attention.paged_decode_attention_torch(q, cache, tables, lens, 0.25)),
                 (kernels.prefill(q[0].expand(16, 4, 16), k, v, cu, 0.25, cache, tables[:1], lens[:1]),
                  attention.prefill_attention(q[0].expand(16, 4, 16), k, v, cu, 0.25,
                                              [attention.gather_prefix(cache, tables[0], 20)]))]
        error = max(float((got.float() - want.float()).abs().max()) for got, want in pairs)
    except Exception as err:  # noqa: BLE001 - a compiler or driver failure is a fallback, not a crash
        return f"Triton attention failed its smoke test ({type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]})"
    return None if error < 1e-2 else f"Triton attention differs from the PyTorch path by {error:.3g} on its smoke test"


_resolved: dict[tuple, KernelPaths] = {}


def resolve_kernels(device: str, dtype: str, capability: DeviceCapability | None = None,
                    decode_kernel: str = "auto", prepack: str = "auto") -> KernelPaths:
    """The kernels to run for `dtype` on `device`, given its record (default: this machine's, detected), and the
    engine settings `decode_kernel` (auto|c|torch|triton) and `prepack` (auto|off)."""
    cap = capability or detect_capability(device)
    forced = ("0" if prepack == "off" else "1", decode_kernel)
    key = (cap, dtype, forced)
    if key in _resolved:
        return _resolved[key]
    choice = select_kernels(cap, dtype)
    fallbacks: list[str] = []
    prepack = choice.prepack and torch.device(device).type == "cpu"
    if prepack and forced[0] == "0":
        prepack = False
    elif prepack:
        failure = _try_prepack()
        if failure:
            fallbacks.append(f"{failure}; plain GEMMs")
            prepack = False
    variant = choice.c_variant if choice.decode == "c" else None
    if forced[1] == "c":  # asked for: this record's C build, or this machine's own; failing is an error, not a fallback
        from runners.engine import cpu_attention

        variant = variant or cpu_attention.default_variant()
        if torch.device(device).type != "cpu" or cpu_attention.load(variant) is None:
            raise RuntimeError(f"decode_kernel=c but the C kernel cannot run here: "
                               f"{cpu_attention.load_error(variant) or device}")
    elif variant and forced[1] in ("torch", "triton"):
        variant = None
    elif variant:
        from runners.engine import cpu_attention

        if cpu_attention.load(variant) is None:
            fallbacks.append(f"{cpu_attention.load_error(variant)}; PyTorch decode attention")
            variant = None
    decode = f"c-{variant}" if variant else "torch"
    if forced[1] == "triton":
        failure = _try_triton(device)
        if failure:
            raise RuntimeError(f"decode_kernel=triton but {failure}")
        decode = "triton"
    elif choice.decode == "triton" and torch.device(device).type == "cuda" and forced[1] != "torch":
        failure = _try_triton(device)
        if failure:
            fallbacks.append(f"{failure}; PyTorch attention")
        else:
            decode = "triton"
    paths = KernelPaths(dtype=dtype, linear=LINEAR_PATHS[0] if prepack else LINEAR_PATHS[1],
                        decode_attention=decode, c_variant=variant,
                        capability=cap.summary(), fallbacks=tuple(fallbacks))
    _resolved[key] = paths
    return paths
