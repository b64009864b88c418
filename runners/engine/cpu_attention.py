"""A small C kernel for paged decode attention on the CPU, built once with the system compiler.

Why C: decode attention on these CPUs is memory-bound, and any pure-PyTorch version must
first gather each sequence's scattered KV blocks into a contiguous tensor (the flat
`[blocks, 2, block_size, Hkv, dh]` layout has no uniform token stride), which reads and writes
the whole context again and page-faults a fresh buffer every layer, several times the cost of
reading the KV once (docs/engine-cpu-performance.md). This kernel reads K and V in place through
the block table, once each: pass 1 `q·k` per token (fp32 accumulate), softmax, pass 2 `p·v`.
A work item is one sequence (or, for small batches, a range of its KV heads). Each block is
visited once, flash-decoding style, and the next block is prefetched while this one is computed.
The generic path takes q·k for the block's tokens with all heads of a token together (K rows in
memory order), an online-softmax update, then p·v over the block's V rows, which sit right after
its K rows. The AVX512-BF16 build, for head_dim a multiple of 16 (every registry model), goes head
by head within each 16-token chunk of a block instead: the 16 tokens' q·k partial sums reduced
together by one transpose tree, the softmax update on that one vector, then p·v with the head's
accumulator in registers; each slice it reads is mirrored by a prefetch of the same slice of the
next block (OPT-125m heads, batch 96, context 192, 12 layers over a cold cache: 30.3 against
33.6 ms for the generic path, benchmarks/bench_decode_step.py). q·k uses AVX512-BF16 dot products in the
build that has them (bf16 products, fp32 sums, as a bf16 GEMM); softmax and p·v are in fp32.

The C source is `paged_decode.c` beside this module; `c_kernels.py` builds, smoke-tests and
loads it (with greedy sampling's argmax) once per ISA variant. When it cannot run,
`runners.engine.attention` uses its PyTorch path and says so.

`prefill` runs `prefill_attention.c` (in the avx512bf16 build only): causal attention of one sequence's chunk
over its keys, on the AVX512-BF16 dot products, 2-3x PyTorch's CPU flash attention on a CPU without AMX
(runners/engine/prefill_attention.c says how; `attention.prefill_attention` says when).

Left out: fp16 caches (PyTorch path), CUDA (PyTorch path).
"""
from __future__ import annotations

import torch

from runners.engine.c_kernels import has_prefill, load

_FUNCTIONS = {torch.bfloat16: "paged_decode_bf16", torch.float32: "paged_decode_f32"}


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
    # rows of a sequence's heads may sit at any stride (q is a view of the fused qkv output): no copy then
    rows_in_place = q.dtype == kv_cache.dtype and q.stride(2) == 1 and q.stride(1) == head_dim
    query = q if rows_in_place else q.to(kv_cache.dtype).contiguous()
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
            _splits(batch, kv_heads), query.stride(0))
    return out.to(q.dtype)


def _rows(tensor: torch.Tensor) -> bool:
    """bf16 [tokens, heads, dh] with each token's heads one after another (any even token stride)."""
    return (tensor.dtype == torch.bfloat16 and tensor.device.type == "cpu" and tensor.stride(2) == 1
            and tensor.stride(1) == tensor.shape[2] and tensor.stride(0) % 2 == 0)


def supports_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, variant: str | None) -> bool:
    """Whether `prefill` can take these tensors with that C build (head_dim a multiple of 16, bf16 rows)."""
    return (variant is not None and q.shape[2] % 16 == 0 and q.shape[1] % k.shape[1] == 0
            and all(_rows(t) for t in (q, k, v)) and has_prefill(load(variant)))


def prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, scale: float, variant: str) -> None:
    """out[t_q, Hq, dh] = causal attention of q[t_q, Hq, dh] (positions P .. P + t_q - 1) over k, v[P + t_q, Hkv, dh];
    the caller checked `supports_prefill` (and out's rows the same way)."""
    load(variant).prefill_attention_bf16(q.data_ptr(), q.stride(0), k.data_ptr(), k.stride(0), v.data_ptr(),
                                         v.stride(0), out.data_ptr(), out.stride(0), q.shape[0],
                                         k.shape[0] - q.shape[0], q.shape[1], k.shape[1], q.shape[2], float(scale))
