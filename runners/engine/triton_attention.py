"""Triton attention over the engine's flat paged KV cache, for CUDA: K and V read in place through the block table.

The PyTorch decode path (`attention.paged_decode_attention_torch`) gathers every bucket's blocks
with an `index_select` before two matmuls, so on a GPU each cached block crosses HBM twice more
per layer and step than attention needs. These kernels read `kv_cache[num_total_blocks, 2,
block_size, Hkv, dh]` where it lies: each tile of `BLOCK_N` tokens looks its blocks up in the
table (device blocks and staged pool blocks alike, they are just global block indices), clamps
padding entries into range and masks everything at or past `context_lens`.

- `paged_decode(q, kv_cache, block_tables, context_lens, scale)`: one program per (sequence, KV
  head, split) holds all `Hq / Hkv` query heads of that KV head (padded to 16 rows for `tl.dot`),
  so GQA reads each K/V once; online softmax with fp32 accumulation. When there are too few
  (sequence, head) pairs to fill the GPU, the context is split (flash-decoding) and a second
  kernel merges the partial maxima, sums and outputs.
- `prefill(q, k, v, cu_seqlens, scale, kv_cache, prefix_tables, prefix_lens)`: causal attention
  within each packed chunk, after a computed prefix read through the sequence's block table
  (chunked prefill); one program per (sequence, 64-row query tile, query head).

Bounded variants, so that no compile lands inside a timed step: the split count comes from
`SPLIT_COUNTS` and is a launch dimension, not a compile-time constant (the decode kernel only knows
whether it splits, the merge kernel takes the count at run time); every integer that changes with
the batch or the context (table widths, tokens per split, the cache's block count) is marked
`do_not_specialize`, and the block-table pointer (a per-layer view) is not specialised on its
alignment. So a model, a dtype and a block size compile exactly `VARIANTS_PER_GEOMETRY` kernels:
decode unsplit and split, the merge, prefill with and without a prefix, which the start-up trial
(`triton_smoke.py`) compiles before the engine serves. Row strides are passed as the contiguous
layout's (a size-1 dimension may carry any stride in torch, which would be one more variant).
Sequence-length maxima come from the caller (`max_len`), so a step reads nothing back from the GPU.

Semantics follow the PyTorch paths: q·kᵀ in the cache dtype (fp32 caches use IEEE fp32 dots,
not TF32), scale and softmax in fp32, probabilities cast to the cache dtype for p·v.
Runs under `TRITON_INTERPRET=1` on a CPU (the suite's check against the PyTorch path). Triton
3.9's interpreter computes `tl.dot` of bf16 operands wrongly (conversions are right), so there
bf16 dots take fp32 operands holding the same bf16 values: exact products and fp32 sums, what a
GPU's bf16 dot computes too, up to summation order.
Left out: sliding windows, ALiBi, quantised caches, CUDA graphs.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

BLOCK_N = 64  # tokens per tile
MIN_DOT = 16  # tl.dot needs every dimension >= 16
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
SPLIT_COUNTS = (1, 2, 4, 8, 16)  # decode splits a context into one of these many parts
MAX_SPLITS = SPLIT_COUNTS[-1]
VARIANTS_PER_GEOMETRY = 5  # decode unsplit / split, merge, prefill with / without a prefix


def _fp32_dot(dtype: torch.dtype) -> bool:
    """fp32 caches: IEEE dots (no TF32); bf16 under the interpreter: fp32 dots of the bf16 values."""
    return dtype == torch.float32 or (INTERPRETED and dtype == torch.bfloat16)


@triton.jit
def _dot(a, b, FP32: tl.constexpr):
    if FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _online_softmax(q, k, v, keep, scale, m, l, acc, FP32_DOT: tl.constexpr):
    """One K/V tile into the running max `m`, sum `l` and accumulator `acc` of softmax(q·kᵀ)·v; `keep` masks scores."""
    scores = _dot(q, tl.trans(k), FP32_DOT)
    scores = tl.where(keep, scores * scale, float("-inf"))
    m_new = tl.maximum(m, tl.max(scores, 1))
    alpha = tl.exp(m - m_new)
    p = tl.exp(scores - m_new[:, None])
    return m_new, l * alpha + tl.sum(p, 1), acc * alpha[:, None] + _dot(p.to(v.dtype), v, FP32_DOT)


@triton.jit
def _paged_kv_tile(kv_ptr, tables_ptr, seq, first, end, kv_head, dims, dim_mask, num_blocks,
                   stride_tb, stride_cb, stride_ckv, stride_co, stride_ch, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr):
    """K and V of tokens first..first+BLOCK_N (those before `end`) read in place through the block table; and that mask."""
    tokens = first + tl.arange(0, BLOCK_N)
    valid = tokens < end
    block = tl.load(tables_ptr + seq * stride_tb + tokens // BLOCK_SIZE, mask=valid, other=0)
    block = tl.minimum(tl.maximum(block, 0), num_blocks - 1).to(tl.int64)  # padding entries: any value
    base = block * stride_cb + (tokens % BLOCK_SIZE) * stride_co + kv_head * stride_ch
    tile_mask = valid[:, None] & dim_mask[None, :]
    k = tl.load(kv_ptr + base[:, None] + dims[None, :], mask=tile_mask, other=0.0)
    v = tl.load(kv_ptr + stride_ckv + base[:, None] + dims[None, :], mask=tile_mask, other=0.0)
    return k, v, valid


# Integers that change with the batch or the context: never compiled in as constants or divisibility facts.
_DECODE_VARYING = ("num_blocks", "tokens_per_split", "stride_tb")


@triton.jit(do_not_specialize=_DECODE_VARYING, do_not_specialize_on_alignment=("tables_ptr", "q_ptr"))
def _decode_kernel(q_ptr, kv_ptr, tables_ptr, lens_ptr, out_ptr, acc_ptr, stat_ptr, scale, num_blocks, tokens_per_split,
                   stride_qb, stride_qh, stride_tb, stride_cb, stride_ckv, stride_co, stride_ch,
                   GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, FP32_DOT: tl.constexpr):
    seq, kv_head, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    length = tl.load(lens_ptr + seq)
    rows = tl.arange(0, BLOCK_G)
    heads = kv_head * GROUP + rows
    dims = tl.arange(0, BLOCK_D)
    row_mask, dim_mask = rows < GROUP, dims < HEAD_DIM
    q = tl.load(q_ptr + seq * stride_qb + heads[:, None] * stride_qh + dims[None, :],
                mask=row_mask[:, None] & dim_mask[None, :], other=0.0)
    q = q.to(tl.float32).to(kv_ptr.dtype.element_ty)  # as the PyTorch path: q·kᵀ in the cache dtype
    m = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    begin = split * tokens_per_split
    end = tl.minimum(length, begin + tokens_per_split)
    for first in range(begin, end, BLOCK_N):
        k, v, valid = _paged_kv_tile(kv_ptr, tables_ptr, seq, first, end, kv_head, dims, dim_mask, num_blocks,
                                     stride_tb, stride_cb, stride_ckv, stride_co, stride_ch, BLOCK_SIZE, BLOCK_N)
        m, l, acc = _online_softmax(q, k, v, valid[None, :], scale, m, l, acc, FP32_DOT)
    out_mask = row_mask[:, None] & dim_mask[None, :]
    if not SPLIT:
        out = acc / tl.where(l > 0, l, 1.0)[:, None]
        tl.store(out_ptr + seq * stride_qb + heads[:, None] * stride_qh + dims[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:  # partials [B, Hq, S, BLOCK_D] and (max, sum) [B, Hq, S, 2], merged by _merge_kernel
        part = (seq * GROUP * tl.num_programs(1) + heads) * tl.num_programs(2) + split
        tl.store(acc_ptr + part[:, None] * BLOCK_D + dims[None, :], acc, mask=out_mask)
        tl.store(stat_ptr + part * 2, m, mask=row_mask)
        tl.store(stat_ptr + part * 2 + 1, l, mask=row_mask)


@triton.jit(do_not_specialize=("num_splits",))
def _merge_kernel(acc_ptr, stat_ptr, out_ptr, stride_qb, stride_qh, num_heads, num_splits,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    seq, head = tl.program_id(0), tl.program_id(1)
    splits = tl.arange(0, BLOCK_S)
    dims = tl.arange(0, BLOCK_D)
    split_mask = splits < num_splits
    part = (seq * num_heads + head) * num_splits + splits
    m = tl.load(stat_ptr + part * 2, mask=split_mask, other=float("-inf"))
    l = tl.load(stat_ptr + part * 2 + 1, mask=split_mask, other=0.0)
    acc = tl.load(acc_ptr + part[:, None] * BLOCK_D + dims[None, :], mask=split_mask[:, None], other=0.0)
    top = tl.max(m, 0)
    weight = tl.where(m > float("-inf"), tl.exp(m - top), 0.0)  # empty splits weigh nothing
    total = tl.sum(weight * l, 0)
    out = tl.sum(weight[:, None] * acc, 0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + seq * stride_qb + head * stride_qh + dims, out.to(out_ptr.dtype.element_ty), mask=dims < HEAD_DIM)


def _pow2(value: int, floor: int = MIN_DOT) -> int:
    return max(floor, triton.next_power_of_2(value))


@functools.cache
def multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (asked once per device); 0 elsewhere (the interpreter: no split)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 0


def num_splits_for(batch: int, kv_heads: int, longest: int, num_sms: int) -> int:
    """The split count from `SPLIT_COUNTS` for this batch: split long contexts only when (sequence, KV head)
    pairs cannot fill twice the GPU's SMs, never into parts shorter than 4 tiles; rounded down to the set."""
    wanted = min(triton.cdiv(2 * num_sms, max(1, batch * kv_heads)), triton.cdiv(max(longest, 1), 4 * BLOCK_N))
    return max(count for count in SPLIT_COUNTS if count <= max(1, wanted))


def _rows(tensor: torch.Tensor) -> tuple[int, int]:
    """(row stride, head stride) of a contiguous [T, H, D] tensor as its layout has them (a size-1 dim may not)."""
    return tensor.shape[1] * tensor.shape[2], tensor.shape[2]


def _index(tensor: torch.Tensor) -> torch.Tensor:
    """int64 and contiguous: the one pointer type the kernels are compiled for (no copy when it already is)."""
    return tensor.to(torch.int64).contiguous()


def paged_decode(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor, context_lens: torch.Tensor,
                 scale: float, num_splits: int | None = None, max_len: int | None = None) -> torch.Tensor:
    """Same contract as `attention.paged_decode_attention`; `num_splits` None: chosen for the GPU from `SPLIT_COUNTS`.

    `max_len`: the longest context, known on the host (None: the table's width in tokens).
    """
    batch, num_heads, head_dim = q.shape
    num_blocks, _, block_size, kv_heads, _ = kv_cache.shape
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # contiguous, whatever q's strides
    if batch == 0:
        return out
    q = q.contiguous()
    tables, lens = _index(block_tables), _index(context_lens)
    longest = block_tables.shape[1] * block_size if max_len is None else max_len
    if num_splits is None:
        num_splits = num_splits_for(batch, kv_heads, longest, multiprocessors(q.device))
    splits = max(1, min(num_splits, MAX_SPLITS))
    tokens_per_split = triton.cdiv(triton.cdiv(max(longest, 1), splits), BLOCK_N) * BLOCK_N
    group, block_d = num_heads // kv_heads, _pow2(head_dim)
    if splits > 1:
        acc = torch.empty(batch, num_heads, splits, block_d, dtype=torch.float32, device=q.device)
        stats = torch.empty(batch, num_heads, splits, 2, dtype=torch.float32, device=q.device)
    else:
        acc = stats = out  # unused
    strides = kv_cache.stride()
    stride_qb, stride_qh = _rows(q)
    _decode_kernel[(batch, kv_heads, splits)](
        q, kv_cache, tables, lens, out, acc, stats, scale, num_blocks, tokens_per_split,
        stride_qb, stride_qh, tables.shape[1], strides[0], strides[1], strides[2], strides[3],
        GROUP=group, BLOCK_G=_pow2(group), HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_SIZE=block_size,
        BLOCK_N=BLOCK_N, SPLIT=splits > 1, FP32_DOT=_fp32_dot(kv_cache.dtype))
    if splits > 1:
        _merge_kernel[(batch, num_heads)](acc, stats, out, stride_qb, stride_qh, num_heads, splits,
                                          HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_S=MAX_SPLITS)
    return out


_PREFILL_VARYING = ("num_blocks", "stride_tb")


@triton.jit(do_not_specialize=_PREFILL_VARYING, do_not_specialize_on_alignment=("tables_ptr",))
def _prefill_kernel(q_ptr, k_ptr, v_ptr, out_ptr, cu_ptr, kv_ptr, tables_ptr, prefix_ptr, scale, num_blocks,
                    stride_qt, stride_qh, stride_kt, stride_kh, stride_tb, stride_cb, stride_ckv, stride_co, stride_ch,
                    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_PREFIX: tl.constexpr, FP32_DOT: tl.constexpr):
    seq, tile, head = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    kv_head = head // GROUP
    start = tl.load(cu_ptr + seq)
    length = tl.load(cu_ptr + seq + 1) - start
    first_row = tile * BLOCK_M
    if first_row >= length:
        return
    rows = first_row + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_mask, dim_mask = rows < length, dims < HEAD_DIM
    q = tl.load(q_ptr + (start + rows)[:, None] * stride_qt + head * stride_qh + dims[None, :],
                mask=row_mask[:, None] & dim_mask[None, :], other=0.0)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if HAS_PREFIX:  # the computed prefix, through the block table: every chunk row sees all of it
        past = tl.load(prefix_ptr + seq)
        for first in range(0, past, BLOCK_N):
            k, v, valid = _paged_kv_tile(kv_ptr, tables_ptr, seq, first, past, kv_head, dims, dim_mask, num_blocks,
                                         stride_tb, stride_cb, stride_ckv, stride_co, stride_ch, BLOCK_SIZE, BLOCK_N)
            m, l, acc = _online_softmax(q, k.to(q.dtype), v.to(q.dtype), valid[None, :], scale, m, l, acc, FP32_DOT)
    stop = tl.minimum(length, first_row + BLOCK_M)  # causal: no key past the tile's last row
    for first in range(0, stop, BLOCK_N):
        cols = first + tl.arange(0, BLOCK_N)
        col_mask = cols < length
        offsets = (start + cols)[:, None] * stride_kt + kv_head * stride_kh + dims[None, :]
        tile_mask = col_mask[:, None] & dim_mask[None, :]
        k = tl.load(k_ptr + offsets, mask=tile_mask, other=0.0).to(q.dtype)
        v = tl.load(v_ptr + offsets, mask=tile_mask, other=0.0).to(q.dtype)
        keep = col_mask[None, :] & (cols[None, :] <= rows[:, None])
        m, l, acc = _online_softmax(q, k, v, keep, scale, m, l, acc, FP32_DOT)
    out = acc / tl.where(l > 0, l, 1.0)[:, None]
    tl.store(out_ptr + (start + rows)[:, None] * stride_qt + head * stride_qh + dims[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & dim_mask[None, :])


def prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, scale: float,
            kv_cache: torch.Tensor | None = None, prefix_tables: torch.Tensor | None = None,
            prefix_lens: torch.Tensor | None = None, max_len: int | None = None) -> torch.Tensor:
    """Causal attention per packed sequence, q[T, Hq, dh], k/v[T, Hkv, dh] -> [T, Hq, dh].

    With `prefix_lens[N]` (0: none) and `prefix_tables[N, M]`, sequence i's chunk first attends
    over its `prefix_lens[i]` computed tokens in `kv_cache`, read through row i of the table.
    `max_len`: the longest chunk, known on the host (None: read from `cu_seqlens`, one device read-back).
    """
    total, num_heads, head_dim = q.shape
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # contiguous, whatever q's strides
    num_seqs = cu_seqlens.numel() - 1
    if total == 0 or num_seqs == 0:
        return out
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    cu = _index(cu_seqlens)
    longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if max_len is None else max_len
    block_d = _pow2(head_dim)
    block_m = 64 if block_d <= 128 else 32
    has_prefix = prefix_lens is not None
    tables, prefix = (_index(prefix_tables), _index(prefix_lens)) if has_prefix else (cu, cu)  # unused without
    if kv_cache is not None:  # the engine always passes its cache: one set of strides with a prefix or without
        num_blocks, block_size, strides = kv_cache.shape[0], kv_cache.shape[2], kv_cache.stride()
    else:
        kv_cache, num_blocks, block_size, strides = q, 1, 1, (0, 0, 0, 0)
    stride_qt, stride_qh = _rows(q)
    stride_kt, stride_kh = _rows(k)
    grid = (num_seqs, triton.cdiv(longest, block_m), num_heads)
    _prefill_kernel[grid](
        q, k, v, out, cu, kv_cache, tables, prefix, scale, num_blocks,
        stride_qt, stride_qh, stride_kt, stride_kh, tables.shape[1] if has_prefix else 0,
        strides[0], strides[1], strides[2], strides[3],
        GROUP=num_heads // k.shape[1], HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_SIZE=block_size,
        BLOCK_M=block_m, BLOCK_N=BLOCK_N, HAS_PREFIX=has_prefix, FP32_DOT=_fp32_dot(q.dtype))
    return out
