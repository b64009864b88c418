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

Semantics follow the PyTorch paths: q·kᵀ in the cache dtype (fp32 caches use IEEE fp32 dots,
not TF32), scale and softmax in fp32, probabilities cast to the cache dtype for p·v.
Runs under `TRITON_INTERPRET=1` on a CPU (the suite's check against the PyTorch path). Triton
3.9's interpreter computes `tl.dot` of bf16 operands wrongly (conversions are right), so there
bf16 dots take fp32 operands holding the same bf16 values: exact products and fp32 sums, what a
GPU's bf16 dot computes too, up to summation order.
Left out: sliding windows, ALiBi, quantised caches, CUDA graphs.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

BLOCK_N = 64  # tokens per tile
MIN_DOT = 16  # tl.dot needs every dimension >= 16
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


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


@triton.jit
def _decode_kernel(q_ptr, kv_ptr, tables_ptr, lens_ptr, out_ptr, acc_ptr, stat_ptr, scale, num_blocks, tokens_per_split,
                   stride_qb, stride_qh, stride_tb, stride_cb, stride_ckv, stride_co, stride_ch,
                   GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, FP32_DOT: tl.constexpr):
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
    if NUM_SPLITS == 1:
        out = acc / tl.where(l > 0, l, 1.0)[:, None]
        tl.store(out_ptr + seq * stride_qb + heads[:, None] * stride_qh + dims[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:  # partials [B, Hq, S, BLOCK_D] and (max, sum) [B, Hq, S, 2], merged by _merge_kernel
        part = (seq * GROUP * tl.num_programs(1) + heads) * NUM_SPLITS + split
        tl.store(acc_ptr + part[:, None] * BLOCK_D + dims[None, :], acc, mask=out_mask)
        tl.store(stat_ptr + part * 2, m, mask=row_mask)
        tl.store(stat_ptr + part * 2 + 1, l, mask=row_mask)


@triton.jit
def _merge_kernel(acc_ptr, stat_ptr, out_ptr, stride_qb, stride_qh, num_heads,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr):
    seq, head = tl.program_id(0), tl.program_id(1)
    splits = tl.arange(0, BLOCK_S)
    dims = tl.arange(0, BLOCK_D)
    split_mask = splits < NUM_SPLITS
    part = (seq * num_heads + head) * NUM_SPLITS + splits
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


def _num_splits(batch: int, kv_heads: int, longest: int, device: torch.device) -> int:
    """Split long contexts only when (sequence, KV head) pairs cannot fill twice the GPU's SMs."""
    if device.type != "cuda":
        return 1
    programs = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(triton.cdiv(programs, batch * kv_heads), triton.cdiv(longest, 4 * BLOCK_N), 16))


def paged_decode(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor, context_lens: torch.Tensor,
                 scale: float, num_splits: int | None = None) -> torch.Tensor:
    """Same contract as `attention.paged_decode_attention`; `num_splits` None: chosen for the GPU."""
    batch, num_heads, head_dim = q.shape
    num_blocks, _, block_size, kv_heads, _ = kv_cache.shape
    out = torch.empty_like(q)
    if batch == 0:
        return out
    q = q.contiguous()
    tables = block_tables.contiguous()
    lens = context_lens.to(torch.int32).contiguous()
    longest = block_tables.shape[1] * block_size
    splits = num_splits or _num_splits(batch, kv_heads, longest, q.device)
    tokens_per_split = triton.cdiv(triton.cdiv(longest, splits), BLOCK_N) * BLOCK_N
    group, block_d = num_heads // kv_heads, _pow2(head_dim)
    if splits > 1:
        acc = torch.empty(batch, num_heads, splits, block_d, dtype=torch.float32, device=q.device)
        stats = torch.empty(batch, num_heads, splits, 2, dtype=torch.float32, device=q.device)
    else:
        acc = stats = out  # unused
    strides = kv_cache.stride()
    _decode_kernel[(batch, kv_heads, splits)](
        q, kv_cache, tables, lens, out, acc, stats, scale, num_blocks, tokens_per_split,
        q.stride(0), q.stride(1), tables.stride(0), strides[0], strides[1], strides[2], strides[3],
        GROUP=group, BLOCK_G=_pow2(group), HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_SIZE=block_size,
        BLOCK_N=BLOCK_N, NUM_SPLITS=splits, FP32_DOT=_fp32_dot(kv_cache.dtype))
    if splits > 1:
        _merge_kernel[(batch, num_heads)](acc, stats, out, out.stride(0), out.stride(1), num_heads,
                                          HEAD_DIM=head_dim, BLOCK_D=block_d, NUM_SPLITS=splits,
                                          BLOCK_S=_pow2(splits, 2))
    return out


@triton.jit
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
            prefix_lens: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention per packed sequence, q[T, Hq, dh], k/v[T, Hkv, dh] -> [T, Hq, dh].

    With `prefix_lens[N]` (0: none) and `prefix_tables[N, M]`, sequence i's chunk first attends
    over its `prefix_lens[i]` computed tokens in `kv_cache`, read through row i of the table.
    """
    total, num_heads, head_dim = q.shape
    out = torch.empty_like(q)
    num_seqs = cu_seqlens.numel() - 1
    if total == 0 or num_seqs == 0:
        return out
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    cu = cu_seqlens.to(torch.int32).contiguous()
    longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    block_d = _pow2(head_dim)
    block_m = 64 if block_d <= 128 else 32
    has_prefix = prefix_lens is not None
    if has_prefix:
        cache, tables, prefix = kv_cache, prefix_tables.contiguous(), prefix_lens.to(torch.int32).contiguous()
        num_blocks, block_size, strides = cache.shape[0], cache.shape[2], cache.stride()
        table_stride = tables.stride(0)
    else:
        cache, tables, prefix = q, cu, cu  # unused
        num_blocks, block_size, strides, table_stride = 1, 1, (0, 0, 0, 0), 0
    grid = (num_seqs, triton.cdiv(longest, block_m), num_heads)
    _prefill_kernel[grid](
        q, k, v, out, cu, cache, tables, prefix, scale, num_blocks,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), table_stride, strides[0], strides[1], strides[2], strides[3],
        GROUP=num_heads // k.shape[1], HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_SIZE=block_size,
        BLOCK_M=block_m, BLOCK_N=BLOCK_N, HAS_PREFIX=has_prefix, FP32_DOT=_fp32_dot(q.dtype))
    return out
