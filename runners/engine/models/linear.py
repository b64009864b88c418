"""`Linear`: a weight (and bias) laid out once, at build time, for the GEMMs of this device.

On the CPU with bf16 weights, `F.linear` hands oneDNN a plain row-major weight and oneDNN
reorders it into its blocked layout on every call: for decode-sized batches that reorder
costs as much as the GEMM (OPT-125m shapes, 64 tokens: docs/engine-cpu-performance.md, item 1).
So on the CPU a bf16 weight is reordered once with `torch.ops.mkldnn._reorder_linear_weight` and multiplied with
`torch.ops.mkldnn._linear_pointwise`, which also fuses the ReLU of OPT's fc1 -- the same
prepacking vLLM-CPU and torch.compile's CPU freezing do. Everywhere else (CUDA, fp32/fp16,
torch builds without oneDNN, or `PIE_PREPACK=0`) it is plain `F.linear`, so the fp32 models the
correctness tests compare against transformers take exactly the path they always did.
Whether to prepack is the engine's choice (pie_core/capability.py `select_kernels`: oneDNN's bf16
path needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT); if the reorder still raises, the weight stays
plain, `packed` is False and `fallback` says why, and the run goes on.

The prepacked tensor replaces the plain one (no second copy of the weights is kept).
oneDNN (and ideep) keep one primitive per distinct (token count, weight shape), so a long run
that meets every token count from 1 to `max_num_batched_tokens` grows its RSS for thousands of
requests (benchmarks/bench_engine_memory.py; the figure is in README.md's results table). A prepacked
GEMM therefore runs a call of more than 64 rows at a bucket (`padded_rows`: 16 buckets per
octave, so at most 1/16 more rows, about 3 % on average), which bounds the primitives to about
64 + 16 per doubling of the token budget per weight. Up to 64 rows (decode batches) it runs as
is: there the GEMM time grows with the rows (docs/engine-cpu-performance.md, "Smaller
measurements"), so padding them to a bucket would cost time.
Where the capability record selects AMX (pie_core/capability.py `select_kernels`: AMX tiles and AVX512-BF16
in effect), the weight is packed instead into the tile layout of the engine's own AMX GEMM
(runners/engine/amx_gemm.c, which says why and how), and every bf16 call runs there: decode steps faster
than oneDNN's prepacked kernels, 2,048-token prefill chunks a little slower (one OPT-125m layer's four GEMMs,
weights in cache, 2-core Xeon: 96 rows 1.15 vs 1.35 ms, 1,024 rows 9.3 vs 12.3 ms, 2,048 rows 20.5-21.2 vs
16.4-17.7 ms), so a run of many decode steps gains; one layout, one copy of the weights. If the AMX
library cannot be built or loaded, or a shape is not a multiple of 32, the weight takes the oneDNN path
above, and `amx_refused` says why. Packed AMX weights sit on 2 MiB pages shared between weights
(runners/engine/host_memory.py `weight_buffer`).
Where the record selects the AVX512-BF16 GEMM instead (AVX512-BF16 without AMX: AMD Zen 4 and later), the weight
is put in the same tile layout (a permutation, done here with torch) and every bf16 call runs on the engine's
vector-unit GEMM (runners/engine/bf16_gemm.c, which says why): on a 2-core Zen 4 a decode step's GEMMs of
OPT-125m took 1.2-1.5x less time than oneDNN's at 1-16 rows, 1.04-1.1x at 32-96 and the same at 2,048. Its
refusals (no such build, a weight not a multiple of 16 x 32) are in `amx_refused` too, and take the oneDNN path.
Left out: int8/fp8 weights, prepacking for fp16.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from runners.engine import host_memory

# Batch size oneDNN is told to expect when it picks the blocked layout; measured on these
# machines the layout chosen for 64 tokens serves 1..2048-token calls within a few percent.
_PACK_HINT_TOKENS = 64


EXACT_ROWS = 64
BUCKETS_PER_OCTAVE_LOG2 = 4  # 16 buckets per doubling


def padded_rows(rows: int) -> int:
    """The bucket a GEMM of `rows` token rows runs at (module docstring)."""
    if rows <= EXACT_ROWS:
        return rows
    step = 1 << (rows.bit_length() - 1 - BUCKETS_PER_OCTAVE_LOG2)
    return -(-rows // step) * step


def packable(weight: torch.Tensor) -> bool:
    """Whether `weight` can be prepacked: a bf16 CPU tensor, and oneDNN present."""
    return (weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def prepack_available(weight: torch.Tensor) -> bool:
    """`packable`, unless PIE_PREPACK=0 (read here only for callers that leave the choice open; the engine
    decides once, from its `prepack` setting, runners/engine/kernels.py)."""
    return os.environ.get("PIE_PREPACK", "1") != "0" and packable(weight)


class Linear:
    """y = x @ weightᵀ + bias (optionally ReLU'd), with the weight in the layout its GEMM wants."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, prepack: bool | str | None = None):
        """`prepack`: None decides by `prepack_available`; True still needs a bf16 CPU weight and oneDNN;
        "amx" packs for the AMX GEMM, "avx512bf16" for the AVX512-BF16 GEMM, each with oneDNN behind it."""
        self.out_features, self.in_features = weight.shape
        self.bias = bias
        self.fallback: str | None = None  # why oneDNN refused the weight (it is then plain)
        self.amx = None  # the AMX library when the weight is in its tile layout
        self.avx512 = None  # the C kernel library whose bf16_linear multiplies the weight in that layout, else None
        self.amx_refused: str | None = None  # why an "amx" or "avx512bf16" weight is not (it then takes oneDNN's path)
        self.packed = prepack_available(weight) if prepack is None else bool(prepack) and packable(weight)
        self.weight = weight
        if self.packed and prepack == "amx":
            self.amx, self.amx_refused = _amx_library(weight)
            if self.amx is not None:
                self.bias = None if bias is None else bias.to(torch.bfloat16).contiguous()
                source = weight.contiguous()  # held by a name: a temporary copy could be freed before the call reads it
                self.weight = host_memory.weight_buffer(tuple(source.shape), source.dtype)  # on 2 MiB pages
                self.amx.amx_pack_weight(source.data_ptr(), self.out_features, self.in_features, self.weight.data_ptr())
                self.packed = False  # not a oneDNN-packed weight
                return
        if self.packed and prepack == "avx512bf16":
            self.avx512, self.amx_refused = _avx512_library(weight)
            if self.avx512 is not None:
                self.bias = None if bias is None else bias.to(torch.bfloat16).contiguous()
                self.weight = host_memory.weight_buffer(tuple(weight.shape), weight.dtype)  # on 2 MiB pages
                n, k = weight.shape  # [n/16][k/32][16 k pairs][16 columns][2]: amx_gemm.c's tile layout
                self.weight.view(n // 16, k // 32, 16, 16, 2).copy_(weight.view(n // 16, 16, k // 32, 16, 2).permute(0, 2, 3, 1, 4))
                self.packed = False
                return
        if self.packed:
            try:
                self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), _PACK_HINT_TOKENS)
            except RuntimeError as err:  # oneDNN refused this CPU: the plain GEMM still works
                self.packed = False
                self.fallback = f"oneDNN bf16 prepack failed ({(str(err).strip().splitlines() or [''])[0]})"

    def __call__(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        if self.amx is not None or self.avx512 is not None:
            return self._amx_call(x, relu)
        if self.packed:
            rows = x.shape[0]
            padded = padded_rows(rows) if x.dim() == 2 else rows
            if padded != rows:
                x = F.pad(x, (0, 0, 0, padded - rows))
            out = torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "relu" if relu else "none", [], "")
            return out[:rows] if padded != rows else out
        out = F.linear(x, self.weight, self.bias)
        return F.relu(out) if relu else out

    def _amx_call(self, x: torch.Tensor, relu: bool) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if x.dtype != torch.bfloat16:  # not the engine's own calls; a plain product on an unpacked copy
            out = F.linear(x, self.plain_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
            return F.relu(out) if relu else out
        x = x.contiguous()
        out = torch.empty(*x.shape[:-1], self.out_features, dtype=torch.bfloat16)
        gemm = self.amx.amx_linear if self.amx is not None else self.avx512.bf16_linear  # one layout, one signature
        gemm(x.data_ptr(), rows, self.in_features, self.weight.data_ptr(), self.out_features,
             None if self.bias is None else self.bias.data_ptr(), int(relu), out.data_ptr())
        return out

    def greedy_tokens(self, x: torch.Tensor) -> list[int] | None:
        """The index of the first largest value of each row of `self(x)`, as greedy sampling's C argmax picks it from
        those bf16 logits, computed in the AMX GEMM's epilogue without writing them (for a decode step of 96 rows and
        a 50,272-token vocabulary, 9.7 MB not written and read back). None where the weight is not on AMX tiles."""
        if self.amx is None or x.dtype != torch.bfloat16 or x.dim() != 2:
            return None
        if x.shape[0] == 0:
            return []
        x = x.contiguous()
        tokens = torch.empty(x.shape[0], dtype=torch.int64)
        if self.amx.amx_linear_argmax(x.data_ptr(), x.shape[0], self.in_features, self.weight.data_ptr(), self.out_features,
                                      None if self.bias is None else self.bias.data_ptr(), tokens.data_ptr()) != 0:
            return None  # its scratch could not be allocated: the logits path instead
        return tokens.tolist()

    def plain_weight(self) -> torch.Tensor:
        """The weight as [out, in], unpacked from the AMX tiles into a new tensor (the weight itself otherwise)."""
        if self.avx512 is not None:
            n, k = self.out_features, self.in_features
            return self.weight.view(n // 16, k // 32, 16, 16, 2).permute(0, 3, 1, 2, 4).reshape(n, k)
        if self.amx is None:
            return self.weight
        plain = torch.empty(self.out_features, self.in_features, dtype=torch.bfloat16)
        self.amx.amx_unpack_weight(self.weight.data_ptr(), self.out_features, self.in_features, plain.data_ptr())
        return plain


def _amx_library(weight: torch.Tensor):
    """(the AMX GEMM library, None) for a weight it takes, else (None, why not)."""
    rows, cols = weight.shape
    if rows % 32 or cols % 32:
        return None, f"AMX GEMM needs both weight dimensions a multiple of 32, not {rows} x {cols}; oneDNN for it"
    from runners.engine import c_kernels

    library = c_kernels.load(c_kernels.AMX)
    return (library, None) if library is not None else (None, f"{c_kernels.load_error(c_kernels.AMX)}; oneDNN GEMMs")


def _avx512_library(weight: torch.Tensor):
    """(the C kernel library with the AVX512-BF16 GEMM, None) for a weight it takes, else (None, why not)."""
    rows, cols = weight.shape
    if rows % 16 or cols % 32:
        return None, f"AVX512-BF16 GEMM needs a weight of a multiple of 16 x 32, not {rows} x {cols}; oneDNN for it"
    from runners.engine import c_kernels

    library = c_kernels.load("avx512bf16")
    if not c_kernels.has_gemm(library):
        return None, f"{c_kernels.load_error('avx512bf16') or 'the avx512bf16 C kernels have no bf16_linear'}; oneDNN GEMMs"
    return library, None


def amx_refusals(model) -> list[str]:
    """Why some weights of `model` (its lm_head and first layer's `Linear`s: the layers share shapes) are not on
    the engine's own GEMM, AMX or AVX512-BF16 (and, where oneDNN refused them too, that they are plain), once each."""
    layers = model.layers[:1]
    linears = [model.lm_head, *(value for layer in layers for value in vars(layer).values() if isinstance(value, Linear))]
    return list(dict.fromkeys(linear.amx_refused + (f"; {linear.fallback}; plain GEMM" if linear.fallback else "")
                              for linear in linears if linear.amx_refused))
