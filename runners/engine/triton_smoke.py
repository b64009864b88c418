"""The Triton kernels' start-up trial at the engine's own geometry; it also compiles every variant a step launches.

`trial(geometry, device)` runs, before the engine serves, what its steps will run: decode at the
engine's dtype, head_dim, GQA group and block size with every split count of
`triton_attention.SPLIT_COUNTS` (so the merge kernel too), and prefill with and without a paged
prefix, each against the PyTorch path on the same inputs (ragged contexts, a padding entry, a block
at the top of the cache as staged blocks are). It returns None when all agree within the dtype's
tolerance, else one line saying which call failed or differed and how. The arguments have the
index dtypes, strides and alignment the engine's calls have, so the compiled variants are exactly
the ones its steps launch (`triton_attention.VARIANTS_PER_GEOMETRY`): no compile, and no compile
failure, lands inside a timed step. Both the engine (runners/engine/kernels.py) and the profiler's
layer bench trial the geometry they run.

Left out: timing (scripts/gpu_check.py measures the kernels), shapes other than the engine's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pie_core.shapes import ModelShape
from runners.engine import attention
from runners.engine.loader import torch_dtype

TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}  # max abs error against the PyTorch path


@dataclass(frozen=True)
class AttentionGeometry:
    """What selects a compiled attention kernel: cache dtype, heads, head_dim and block size."""

    dtype: str
    num_heads: int
    num_kv_heads: int
    head_dim: int
    block_size: int

    @classmethod
    def of(cls, shape: ModelShape, dtype: str, block_size: int) -> AttentionGeometry:
        return cls(dtype, shape.num_heads, shape.num_kv_heads, shape.head_dim, block_size)

    def describe(self) -> str:
        group = self.num_heads // self.num_kv_heads
        return (f"{self.dtype}, {self.num_heads} heads / {self.num_kv_heads} KV (group {group}), "
                f"head_dim {self.head_dim}, block {self.block_size}")


def _inputs(geometry: AttentionGeometry, device: str, lens: list[int], seed: int):
    """A cache with room for `lens` plus a block at the top (as staged blocks are), and a table per sequence."""
    block_size = geometry.block_size
    generator = torch.Generator().manual_seed(seed)
    widths = [-(-length // block_size) for length in lens]
    num_blocks = sum(widths) + 2
    dtype = torch_dtype(geometry.dtype)
    cache = torch.randn(num_blocks, 2, block_size, geometry.num_kv_heads, geometry.head_dim,
                        generator=generator).to(device, dtype)
    order = torch.randperm(num_blocks - 1, generator=generator).tolist()
    rows, start = [], 0
    for width in widths:
        rows.append(order[start:start + width] + [-1] * (max(widths) + 1 - width))  # one padding entry at least
        start += width
    rows[0][0] = num_blocks - 1  # the top of the cache: where staging slots sit
    return cache, torch.tensor(rows, dtype=torch.int64, device=device), generator


def _decode_error(kernels, geometry: AttentionGeometry, device: str, num_splits: int) -> float:
    lens = [geometry.block_size * 3 + 5, 300]
    cache, tables, generator = _inputs(geometry, device, lens, seed=num_splits)
    q = torch.randn(len(lens), geometry.num_heads, geometry.head_dim, generator=generator).to(device, cache.dtype)
    lengths = attention.Lengths.build(lens, device)
    scale = geometry.head_dim ** -0.5
    got = kernels.paged_decode(q, cache, tables, lengths.device, scale, num_splits=num_splits, max_len=lengths.longest)
    want = attention.paged_decode_attention_torch(q, cache, tables, lengths, scale)
    return float((got.float() - want.float()).abs().max())


def _prefill_error(kernels, geometry: AttentionGeometry, device: str, with_prefix: bool) -> float:
    chunks, pasts = [geometry.block_size + 3, 70], [0, 2 * geometry.block_size + 5]
    cache, tables, generator = _inputs(geometry, device, [max(past, 1) for past in pasts], seed=7)
    total = sum(chunks)
    q = torch.randn(total, geometry.num_heads, geometry.head_dim, generator=generator).to(device, cache.dtype)
    k, v = (torch.randn(total, geometry.num_kv_heads, geometry.head_dim, generator=generator).to(device, cache.dtype)
            for _ in range(2))
    layout = attention.PrefillLayout.build([0, chunks[0], total], pasts if with_prefix else [0, 0], device)
    scale = geometry.head_dim ** -0.5
    prefix_tables = tables if with_prefix else None
    got = kernels.prefill(q, k, v, layout.cu_seqlens, scale, cache, prefix_tables,
                          layout.prefix_lens.device if with_prefix else None, max_len=layout.longest)
    want = attention.paged_prefill_attention(q, k, v, layout, scale, cache, prefix_tables, variant="torch")
    return float((got.float() - want.float()).abs().max())


def trial(geometry: AttentionGeometry, device: str) -> str | None:
    """None when the Triton kernels import and match the PyTorch paths at `geometry` on `device`, else why not."""
    kernels = attention.triton_kernels()
    if kernels is None:
        return attention.triton_error()
    calls = [(f"decode with {splits} split{'s' if splits > 1 else ''}", _decode_error, {"num_splits": splits})
             for splits in kernels.SPLIT_COUNTS]
    calls += [("prefill over a paged prefix", _prefill_error, {"with_prefix": True}),
              ("prefill without a prefix", _prefill_error, {"with_prefix": False})]
    tolerance = TOLERANCE[geometry.dtype]
    for name, run, arguments in calls:
        try:
            error = run(kernels, geometry, device, **arguments)
        except Exception as err:  # noqa: BLE001 - a compiler or driver failure is a fallback, not a crash
            first = (str(err).strip().splitlines() or [""])[0]
            return f"Triton attention failed its smoke test ({name}, {geometry.describe()}: {type(err).__name__}: {first})"
        if not error <= tolerance:  # NaN fails too
            return (f"Triton attention differs from the PyTorch path by {error:.3g} (tolerance {tolerance:g}) on its "
                    f"smoke test ({name}, {geometry.describe()})")
    return None
