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
Left out: int8/fp8 weights, prepacking for fp16.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

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

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, prepack: bool | None = None):
        """`prepack`: None decides by `prepack_available`; True still needs a bf16 CPU weight and oneDNN."""
        self.out_features, self.in_features = weight.shape
        self.bias = bias
        self.fallback: str | None = None
        self.packed = prepack_available(weight) if prepack is None else bool(prepack) and packable(weight)
        self.weight = weight
        if self.packed:
            try:
                self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), _PACK_HINT_TOKENS)
            except RuntimeError as err:  # oneDNN refused this CPU: the plain GEMM still works
                self.packed = False
                self.fallback = f"oneDNN bf16 prepack failed ({(str(err).strip().splitlines() or [''])[0]})"

    def __call__(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        if self.packed:
            rows = x.shape[0]
            padded = padded_rows(rows) if x.dim() == 2 else rows
            if padded != rows:
                x = F.pad(x, (0, 0, 0, padded - rows))
            out = torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "relu" if relu else "none", [], "")
            return out[:rows] if padded != rows else out
        out = F.linear(x, self.weight, self.bias)
        return F.relu(out) if relu else out
