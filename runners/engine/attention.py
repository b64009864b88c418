"""Attention kernels over the engine's flat paged KV cache: a C decode kernel on the CPU, Triton on CUDA, PyTorch behind both.

Layout (docs/engine-interfaces.md): `kv_cache[num_total_blocks, 2, block_size, Hkv, dh]`;
a slot is `block * block_size + offset`; block tables hold global block indices, so device
blocks and staged pool blocks are read through one table. Padding entries in a block table
may be any value (they are clamped and masked by `context_lens`).

- `write_kv` scatters new keys/values into their slots.
- `paged_decode_attention` attends one query token per sequence over its cached context.
  On the CPU (bf16/fp32 caches) it runs the C kernel of `cpu_attention.py`, which reads K and V
  in place through the block table (decode attention is memory-bound there, and a gather copy
  costs several times the attention itself). On CUDA, where Triton imports, the Triton kernel of
  `triton_attention.py` does the same on the GPU (Triton is never imported for a CPU tensor
  unless `PIE_DECODE_KERNEL=triton` asks). Elsewhere, or with `PIE_DECODE_KERNEL=torch`, the
  PyTorch path groups sequences into length buckets so padding stays small, gathers each
  bucket's blocks with one `index_select` (K and V in one copy), and computes
  `softmax(q·kᵀ)·v` explicitly (fp32 softmax) rather than through bf16
  `scaled_dot_product_attention`, which was slower on these machines (docs/engine-cpu-performance.md).
  `kernel_name(q, kv_cache)` says which path a call takes.
- `prefill_attention` is causal attention within each sequence of a packed batch, optionally
  over a computed prefix per sequence (chunked prefill; the caller gathers the prefix through
  its block table). Given a C build that has it (`c_variant`; the engine passes one where its capability
  record selects it: bf16 on AVX512-BF16 without AMX), bf16 sequences go through `cpu_attention.prefill`;
  otherwise PyTorch's CPU flash attention for bf16/fp16 sequences without a prefix, and fp32 math for the rest
  (bf16 matmuls over the permuted views measured slower; docs/engine-cpu-performance.md). `paged_prefill_attention` takes the prefixes as block tables instead: the Triton
  kernel reads them in place, the PyTorch path gathers them and calls `prefill_attention`.

What the kernels need on the host (each sequence's length, the longest, a prefill's bounds) comes in
`Lengths` and `PrefillLayout`, built once per step by the model runner from host lists, so no layer
reads a count back from the device (on a GPU each read is a sync). Given a plain tensor instead
(tests, the profiler), a call reads it back once.

Left out: sliding-window masking (Mistral's 4096-token window is not applied), ALiBi.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from runners.engine import c_kernels, cpu_attention

KERNELS = ("auto", "c", "torch", "triton")
# Sequences are grouped so that each group pads to at most this factor of its shortest context.
_BUCKET_GROWTH = 1.5


@dataclass(frozen=True)
class Lengths:
    """Token counts per sequence: int64 on the device for the kernels, and the same on the host."""

    device: torch.Tensor
    host: tuple[int, ...]
    longest: int

    @classmethod
    def build(cls, values: Sequence[int], device: torch.device | str) -> Lengths:
        """From host values (one host-to-device copy, no read-back)."""
        values = tuple(int(value) for value in values)
        return cls(torch.tensor(values, dtype=torch.int64, device=device), values, max(values, default=0))

    @classmethod
    def of(cls, lengths: torch.Tensor | Lengths) -> Lengths:
        """`lengths` as is, or a tensor read back once."""
        if isinstance(lengths, Lengths):
            return lengths
        values = tuple(lengths.tolist())
        return cls(lengths, values, max(values, default=0))


@dataclass(frozen=True)
class PrefillLayout:
    """A packed prefill: chunk bounds on the device and the host, the longest chunk, computed prefixes."""

    cu_seqlens: torch.Tensor  # [N + 1] int64 on the device
    bounds: tuple[int, ...]  # the same offsets on the host
    longest: int
    prefix_lens: Lengths | None  # computed tokens before each chunk; None: every chunk is a prompt's first

    @classmethod
    def build(cls, bounds: Sequence[int], prefix_lens: Sequence[int], device: torch.device | str) -> PrefillLayout:
        bounds = tuple(int(bound) for bound in bounds)
        longest = max((end - start for start, end in zip(bounds[:-1], bounds[1:])), default=0)
        prefixes = Lengths.build(prefix_lens, device) if any(prefix_lens) else None
        return cls(torch.tensor(bounds, dtype=torch.int64, device=device), bounds, longest, prefixes)

    @classmethod
    def of(cls, cu_seqlens: torch.Tensor | PrefillLayout) -> PrefillLayout:
        """`cu_seqlens` as is, or a tensor read back once (no prefixes)."""
        if isinstance(cu_seqlens, PrefillLayout):
            return cu_seqlens
        bounds = tuple(cu_seqlens.tolist())
        longest = max((end - start for start, end in zip(bounds[:-1], bounds[1:])), default=0)
        return cls(cu_seqlens, bounds, longest, None)


def write_kv(kv_cache: torch.Tensor, slot_mapping: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             c_variant: str | None = None) -> None:
    """Store k[T, Hkv, dh] and v[T, Hkv, dh] at `slot_mapping[T]` (block * block_size + offset).

    With the engine's C library (`c_variant`, a CPU cache of k's dtype, rows contiguous within each token):
    `kv_rows.c` copies each token's two rows (runners/engine/kv_rows.c says why). Otherwise two row copies
    into the cache seen as [blocks * 2 * block_size, Hkv * dh] rows, where a slot's K row is
    `block * 2 * block_size + offset = slot + block * block_size` and its V row `block_size` further
    (about 40 against 65 µs a layer for 96 decode tokens of OPT-125m through advanced indexing)."""
    num_blocks, _, block_size = kv_cache.shape[:3]
    if c_variant is not None and _write_kv_c(kv_cache, slot_mapping, k, v, c_variant):
        return
    if not kv_cache.is_contiguous():
        blocks = torch.div(slot_mapping, block_size, rounding_mode="floor")
        offsets = slot_mapping - blocks * block_size
        kv_cache[blocks, 0, offsets] = k.to(kv_cache.dtype)
        kv_cache[blocks, 1, offsets] = v.to(kv_cache.dtype)
        return
    rows = kv_cache.view(num_blocks * 2 * block_size, -1)
    key_rows = slot_mapping + torch.div(slot_mapping, block_size, rounding_mode="floor") * block_size
    rows.index_copy_(0, key_rows, k.reshape(len(k), -1).to(kv_cache.dtype))
    rows.index_copy_(0, key_rows + block_size, v.reshape(len(v), -1).to(kv_cache.dtype))


def _write_kv_c(kv_cache: torch.Tensor, slot_mapping: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                c_variant: str) -> bool:
    """`write_kv` through the C library; False (nothing written) where it does not apply."""
    keys, values = k.reshape(len(k), -1), v.reshape(len(v), -1)
    if not (kv_cache.is_contiguous() and kv_cache.device.type == "cpu" and keys.dtype == values.dtype == kv_cache.dtype
            and keys.stride(1) == 1 and values.stride(1) == 1 and slot_mapping.dtype == torch.int64
            and slot_mapping.is_contiguous() and len(slot_mapping) == len(keys) == len(values)
            and keys.shape[1] == math.prod(kv_cache.shape[3:])):
        return False
    library = c_kernels.load(c_variant)
    if library is None:
        return False
    row_bytes, item = keys.shape[1] * keys.element_size(), keys.element_size()
    bad = library.kv_write_rows(kv_cache.data_ptr(), kv_cache.shape[0], kv_cache.shape[2], row_bytes,
                                slot_mapping.data_ptr(), len(slot_mapping), keys.data_ptr(), keys.stride(0) * item,
                                values.data_ptr(), values.stride(0) * item)
    if bad >= 0:
        raise IndexError(f"KV slot {int(slot_mapping[bad])} is outside the cache's {kv_cache.shape[0] * kv_cache.shape[2]} slots")
    return True


def _attend_group(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                  context_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """Decode attention for sequences whose block tables all have the same width M."""
    batch, num_heads, head_dim = q.shape
    _, _, block_size, num_kv_heads, _ = kv_cache.shape
    num_blocks = block_tables.shape[1]
    group = num_heads // num_kv_heads
    tokens = num_blocks * block_size
    # One copy of the bucket's K and V: [B, M, 2, bs, Hkv, dh] -> [2, B, Hkv, M*bs, dh].
    blocks = kv_cache.index_select(0, block_tables.reshape(-1))
    kv = blocks.view(batch, num_blocks, 2, block_size, num_kv_heads, head_dim)
    kv = kv.permute(2, 0, 4, 1, 3, 5).reshape(2, batch, num_kv_heads, tokens, head_dim)
    query = q.view(batch, num_kv_heads, group, head_dim).to(kv_cache.dtype)
    scores = torch.matmul(query, kv[0].transpose(-1, -2)).float()  # [B, Hkv, g, T]
    scores.mul_(scale)
    pad = torch.arange(tokens, device=q.device)[None, :] >= context_lens[:, None]
    scores.masked_fill_(pad[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(kv_cache.dtype)
    out = torch.matmul(probs, kv[1])  # [B, Hkv, g, dh]
    return out.reshape(batch, num_heads, head_dim)


def decode_buckets(context_lens: list[int], block_size: int) -> list[tuple[list[int], int]]:
    """Group sequence indices by context length: [(indices, num_blocks)], each padded <= 1.5x."""
    order = sorted(range(len(context_lens)), key=context_lens.__getitem__)
    groups: list[tuple[list[int], int]] = []
    start = 0
    while start < len(order):
        shortest = max(context_lens[order[start]], block_size)
        end = start
        while end < len(order) and context_lens[order[end]] <= shortest * _BUCKET_GROWTH:
            end += 1
        end = max(end, start + 1)
        longest = context_lens[order[end - 1]]
        groups.append((order[start:end], -(-longest // block_size)))
        start = end
    return groups


_triton: list = []  # [module or None, why not] once tried


def triton_kernels():
    """`runners.engine.triton_attention`, imported once; None when Triton cannot be imported here."""
    if not _triton:
        try:
            from runners.engine import triton_attention
            _triton[:] = [triton_attention, None]
        except Exception as err:  # noqa: BLE001 - ImportError, or a Triton that breaks while loading
            _triton[:] = [None, f"Triton cannot be imported ({type(err).__name__}: {(str(err).splitlines() or [''])[0]})"]
    return _triton[0]


def triton_error() -> str | None:
    return None if triton_kernels() is not None else _triton[1]


def _uses_triton(tensor: torch.Tensor, variant: str | None, choice: str) -> bool:
    """Triton where asked for (variant or $PIE_DECODE_KERNEL), or by default for CUDA tensors where it imports."""
    if choice == "triton" or (variant == "triton" and choice == "auto"):
        if triton_kernels() is None:
            raise RuntimeError(f"the Triton kernel cannot run here: {triton_error()}")
        return True
    return choice == "auto" and variant is None and tensor.is_cuda and triton_kernels() is not None


def _choice() -> str:
    choice = os.environ.get("PIE_DECODE_KERNEL", "auto")
    if choice not in KERNELS:
        raise ValueError(f"PIE_DECODE_KERNEL={choice!r}; expected one of {', '.join(KERNELS)}")
    return choice


def kernel_name(q: torch.Tensor, kv_cache: torch.Tensor, variant: str | None = None) -> str:
    """'c', 'triton' or 'torch': the decode path for these tensors under $PIE_DECODE_KERNEL (auto|c|torch|triton).

    `variant` names the C build (pie_core/capability.py; None: this machine's own), "triton" the
    Triton kernel, "torch" forces the PyTorch path, as the engine does when its capability record
    selects no fast kernel or the one selected failed its trial (runners/engine/kernels.py).
    """
    # The engine passes the variant its settings resolved (runners/engine/kernels.py), so the environment
    # is read only for direct calls that leave the choice open.
    choice = _choice() if variant is None else "auto"
    if choice == "torch" or (variant == "torch" and choice not in ("c", "triton")):
        return "torch"
    if _uses_triton(q, variant, choice):
        return "triton"
    variant = None if variant == "triton" else variant
    variant = None if variant == "torch" else variant
    if cpu_attention.supports(q, kv_cache, variant):
        return "c"
    if choice == "c":
        raise RuntimeError(f"PIE_DECODE_KERNEL=c but the C kernel cannot run here: "
                           f"{c_kernels.load_error(variant) or f'{kv_cache.device} {kv_cache.dtype} cache'}")
    return "torch"


def paged_decode_attention(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                           context_lens: torch.Tensor | Lengths, scale: float, variant: str | None = None) -> torch.Tensor:
    """q[B, Hq, dh] attends over each sequence's first `context_lens[b]` cached tokens -> [B, Hq, dh].

    `variant`: the C build to use (None: this machine's own), or "torch" for the PyTorch path.
    """
    name = kernel_name(q, kv_cache, variant)
    lengths = Lengths.of(context_lens)
    if name == "c":
        return cpu_attention.paged_decode(q, kv_cache, block_tables, lengths.device, scale,
                                          None if variant == "torch" else variant, max_len=lengths.longest)
    if name == "triton":
        return triton_kernels().paged_decode(q, kv_cache, block_tables, lengths.device, scale, max_len=lengths.longest)
    return paged_decode_attention_torch(q, kv_cache, block_tables, lengths, scale)


def paged_decode_attention_torch(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                                 context_lens: torch.Tensor | Lengths, scale: float) -> torch.Tensor:
    """The PyTorch path of `paged_decode_attention` (any device and dtype)."""
    block_size = kv_cache.shape[2]
    lengths = Lengths.of(context_lens)
    tables = block_tables.clamp(min=0, max=kv_cache.shape[0] - 1)
    groups = decode_buckets(list(lengths.host), block_size)
    if len(groups) == 1:
        indices, width = groups[0]
        return _attend_group(q, kv_cache, tables[:, :width], lengths.device, scale).to(q.dtype)
    out = torch.empty_like(q)
    for indices, width in groups:
        rows = torch.tensor(indices, device=q.device)
        out[rows] = _attend_group(q[rows], kv_cache, tables[rows, :width], lengths.device[rows], scale).to(q.dtype)
    return out


# Query rows per chunk in prefill attention: each chunk only multiplies the keys up to its last
# row (about half the FLOPs of a full causal square), and 64-row score tiles stay in cache; the
# timings against one masked square per sequence are in docs/engine-cpu-performance.md (item 5).
_PREFILL_CHUNK = 64
# Prefills without a prefix take PyTorch's CPU flash attention at these dtypes (docs/engine-cpu-performance.md);
# fp32 keeps the explicit path the correctness comparisons against transformers were written for.
_SDPA_DTYPES = (torch.bfloat16, torch.float16)
_causal_bias: dict[torch.device, torch.Tensor] = {}


def _causal_bias_for(length: int, device: torch.device) -> torch.Tensor:
    """[n, n] additive mask (0 on and below the diagonal, -inf above), n >= length, cached per device."""
    bias = _causal_bias.get(device)
    if bias is None or bias.shape[0] < length:
        size = max(length, 2 * (bias.shape[0] if bias is not None else 256))
        bias = torch.full((size, size), float("-inf"), device=device).triu_(1)
        _causal_bias[device] = bias
    return bias


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor | Sequence[int],
                      scale: float, prefixes: list[tuple[torch.Tensor, torch.Tensor] | None] | None = None,
                      c_variant: str | None = None) -> torch.Tensor:
    """Causal attention within each packed sequence: q[T, Hq, dh], k/v[T, Hkv, dh] -> [T, Hq, dh].

    `prefixes[i]`, when given, is sequence i's already computed K and V ([P, Hkv, dh] each): its
    chunk's tokens sit at positions P.. and attend over the prefix and causally within the chunk
    (chunked prefill). On the CPU a bf16/fp16 sequence without a prefix goes through PyTorch's flash
    attention (`scaled_dot_product_attention`, fp32 softmax and sums inside: OPT-125m heads, 16
    sequences of 128 tokens, 4.6 against 9.8 ms a layer, benchmarks/bench_decode_step.py); the rest take fp32 math (bf16 matmuls
    over these views measured slower: docs/engine-cpu-performance.md): per sequence, query rows in
    chunks of 64 against the keys up to the chunk's end, the scale and the causal mask fused into
    one `baddbmm`. `cu_seqlens`: a tensor (read back once) or the bounds as host ints. `c_variant`: the C build
    whose AVX512-BF16 prefill kernel takes the sequences it can (`cpu_attention.supports_prefill`), prefixes included.
    """
    total, num_heads, head_dim = q.shape
    group = num_heads // k.shape[1]
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist() if isinstance(cu_seqlens, torch.Tensor) else list(cu_seqlens)
    spans = list(zip(bounds[:-1], bounds[1:]))
    prefixes = prefixes or [None] * len(spans)
    compute = torch.float32 if q.device.type == "cpu" else q.dtype
    longest = max((end - start) + (len(prefix[0]) if prefix else 0) for (start, end), prefix in zip(spans, prefixes))
    bias = None
    native = c_variant is not None and cpu_attention.supports_prefill(q, k, v, c_variant)
    for (start, end), prefix in zip(spans, prefixes):
        length = end - start
        if length == 0:
            continue
        key, value = k[start:end], v[start:end]
        if prefix is not None:  # [P + t, Hkv, dh] (contiguous): the prefix's keys and values, then the chunk's
            key, value = torch.cat([prefix[0].to(key.dtype), key]), torch.cat([prefix[1].to(value.dtype), value])
        if native:
            cpu_attention.prefill(q[start:end], key, value, out[start:end], scale, c_variant)
            continue
        if prefix is None and q.device.type == "cpu" and q.dtype in _SDPA_DTYPES:
            # [1, H, t, dh] views of the packed rows: PyTorch's CPU flash attention, fp32 softmax inside
            attended = F.scaled_dot_product_attention(q[start:end].unsqueeze(0).transpose(1, 2),
                                                      key.unsqueeze(0).transpose(1, 2), value.unsqueeze(0).transpose(1, 2),
                                                      is_causal=True, scale=scale, enable_gqa=group > 1)
            out[start:end] = attended[0].transpose(0, 1)
            continue
        if bias is None:
            bias = _causal_bias_for(longest, q.device).to(compute)
        query = q[start:end].to(compute).permute(1, 0, 2)  # [Hq, t, dh]
        past = len(key) - length
        key, value = key.to(compute), value.to(compute)
        if group > 1:  # GQA: each KV head serves `group` query heads
            key, value = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
        key, value = key.permute(1, 2, 0), value.permute(1, 0, 2)  # [Hq, dh, past + t], [Hq, past + t, dh]
        for row in range(0, length, _PREFILL_CHUNK):
            stop = min(length, row + _PREFILL_CHUNK)
            scores = torch.baddbmm(bias[past + row:past + stop, :past + stop], query[:, row:stop], key[:, :, :past + stop],
                                   alpha=scale)
            attended = torch.bmm(torch.softmax(scores, dim=-1), value[:, :past + stop])  # [Hq, rows, dh]
            out[start + row:start + stop] = attended.permute(1, 0, 2).to(q.dtype)
    return out


def gather_prefix(kv_cache: torch.Tensor, table: torch.Tensor, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A sequence's first `num_tokens` cached K and V ([P, Hkv, dh] each), copied out through its block table row."""
    block_size = kv_cache.shape[2]
    blocks = kv_cache.index_select(0, table[:-(-num_tokens // block_size)])
    flat = blocks.transpose(0, 1).reshape(2, -1, *blocks.shape[3:])[:, :num_tokens]
    return flat[0], flat[1]


def paged_prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: PrefillLayout | torch.Tensor,
                            scale: float, kv_cache: torch.Tensor | None = None, prefix_tables: torch.Tensor | None = None,
                            variant: str | None = None, c_prefill: str | None = None) -> torch.Tensor:
    """`prefill_attention` with each prefix given as a block table row (`prefix_tables[N, M]`, `layout.prefix_lens`).

    `c_prefill`: the C build for `prefill_attention`'s own CPU kernel (`KernelPaths.prefill_variant`), None: PyTorch's.

    `layout`: the step's `PrefillLayout` (a `cu_seqlens` tensor is read back once: no prefixes then).
    The Triton kernel reads the prefixes in place; the PyTorch path gathers them (`gather_prefix`).
    """
    layout = PrefillLayout.of(layout)
    prefixes = layout.prefix_lens if prefix_tables is not None else None
    if _uses_triton(q, variant, _choice() if variant is None else "auto"):
        return triton_kernels().prefill(q, k, v, layout.cu_seqlens, scale, kv_cache, prefix_tables,
                                        None if prefixes is None else prefixes.device, max_len=layout.longest)
    gathered = None
    if prefixes is not None:
        gathered = [gather_prefix(kv_cache, prefix_tables[row], length) if length else None
                    for row, length in enumerate(prefixes.host)]
    return prefill_attention(q, k, v, layout.bounds, scale, gathered, c_prefill)
