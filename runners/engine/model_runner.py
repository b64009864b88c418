"""One forward pass per iteration: batch tensors, the layer loop with prefetch waits, sampling.

`ModelRunner.execute(scheduled)`:
1. applies the scheduler's tier moves (restores pool -> device, then evictions device -> pool);
2. packs the batch, prefills first: input ids, positions, `slot_mapping` (new tokens always land
   in resident device blocks), `cu_seqlens` for prefill, and for decode (and for each prefill
   chunk after a sequence's first, over its computed prefix) one block table whose entries are
   either a resident block or a position in the staging slot. Everything per layer that only
   depends on the step is made here, once: the tables remapped for every layer ([L, N, M]: resident
   blocks at `layer * n_dev + block`, staged ones at their slot's rows), the slot mapping per layer,
   the RoPE tables (`model.prepare_positions`), and the lengths the kernels need on the host
   (`Lengths`, `PrefillLayout`: the longest context and chunk, each prefix's length), so the
   layer loop reads nothing back from the device (on a GPU each read is a sync) and launches no
   per-layer index arithmetic;
3. starts the prefetcher on the batch's pooled blocks and runs the layers. Layer i's attention
   writes the new K/V, waits for staging slot `i % d` (rebuilding K/V from activations for
   rebuild-kind blocks), runs prefill attention (a later chunk reads its prefix through the
   table: in place with Triton, gathered on the PyTorch path) and decode attention through layer i's
   table, and releases the slot;
4. computes logits for the last token of each sequence that completes (every decode, and the
   prefill chunks that end a prompt) and samples.

Telemetry (`StepResult`): compute time excludes the stall; bytes are what crosses the host
link on a GPU machine (pool copies, evictions, activation captures). Left out: CUDA graphs,
torch.compile.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from pie_core.capability import C_VARIANT_FLAGS
from runners.engine import host_memory
from runners.engine.attention import (
    Lengths,
    PrefillLayout,
    paged_decode_attention,
    paged_prefill_attention,
    write_kv,
)
from runners.engine.block_manager import BlockMove, CacheLayout
from runners.engine.kv_cache import KVCache
from runners.engine.outputs import StepResult
from runners.engine.prefetcher import Prefetcher
from runners.engine.sampler import sample
from runners.engine.scheduler import SchedulerOutput
from runners.engine.sequence import DEVICE


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor
    positions: torch.Tensor  # for the embedding
    layer_positions: object  # `model.prepare_positions(positions)`: what every layer takes (RoPE tables once)
    layer_slots: torch.Tensor  # [L, T]: each new token's slot in layer l's resident rows
    slots_cpu: torch.Tensor  # layer 0's slots on the host (activation capture)
    prefill: PrefillLayout | None
    num_prefill_tokens: int
    logit_rows: torch.Tensor
    prefix_tables: torch.Tensor | None  # [L, num_prefills, M]: chunks after a first read their prefix through row i
    decode_tables: torch.Tensor | None  # [L, B, M]
    context_lens: Lengths | None
    kv_indices: list[int]
    rebuild_indices: list[int]
    rebuild_positions: object  # prepared positions of rebuild blocks' tokens, [n_rebuild * block_size]; None: none


class ModelRunner:
    def __init__(self, model, cache: KVCache, layout: CacheLayout, copy_worker: str, decode_variant: str | None = None,
                 prefill_variant: str | None = None):
        """`decode_variant`: the C decode build to use, or "torch"; `prefill_variant`: the C build whose prefill
        attention to use, or None for PyTorch's (runners/engine/kernels.py)."""
        self.prefill_variant = prefill_variant
        self.model = model
        self.decode_variant = decode_variant
        self.c_variant = decode_variant if decode_variant in C_VARIANT_FLAGS else None  # the C library's build, if any
        self.cache = cache
        self.layout = layout
        self.device = cache.device
        self.block_size = layout.block_size
        self.num_layers = layout.num_layers
        self.prefetcher = Prefetcher(cache, copy_worker) if layout.num_pool_blocks else None
        layers = torch.arange(self.num_layers, dtype=torch.int64, device=self.device)
        # Where layer l's entries point: resident blocks at l * n_dev + block, staged ones at slot (l % d)'s rows.
        self._resident_base = (layers * cache.num_device_blocks)[:, None, None]
        self._staging_base = torch.tensor([cache.staging_row_base(layer % max(1, layout.prefetch_depth))
                                           for layer in range(self.num_layers)], device=self.device)[:, None, None]
        self._layer_tokens = (layers * cache.num_device_blocks * self.block_size)[:, None]
        if self.device.type == "cpu":
            host_memory.keep_freed_memory()  # each step's activation buffers reuse warm heap pages

    def close(self) -> None:
        """Stop the prefetcher's thread and drop this runner's references to the model and the cache."""
        if self.prefetcher is not None:
            self.prefetcher.close()
        self.prefetcher = self.cache = self.model = None

    def _layer_tables(self, rows: list[list[int]], masks: list[list[int]]) -> torch.Tensor:
        """[L, N, M] block tables, one per layer, from rows of resident blocks or staging positions (mask 1)."""
        base = torch.tensor(rows, dtype=torch.int64, device=self.device)
        pooled = torch.tensor(masks, dtype=torch.bool, device=self.device)
        return torch.where(pooled, base + self._staging_base, base + self._resident_base)

    def _prepare(self, scheduled: SchedulerOutput) -> Batch:
        bs, device = self.block_size, self.device
        ids, positions, slots, cu, rows = [], [], [], [0], []
        # Pool blocks the batch reads (decodes, and prefill chunks over a computed prefix), in staging order;
        # a block has one owner and a sequence is scheduled once, so none repeats.
        kv_stage: dict[int, int] = {}
        rebuild_stage: dict[int, int] = {}
        rebuild_positions: list[int] = []
        readers = scheduled.decode + [seq for seq in scheduled.prefill if seq.num_computed_tokens]
        for seq in readers:
            for logical, ref in enumerate(seq.block_table):
                if ref.tier == DEVICE:
                    continue
                if ref.index >= self.layout.num_pool_kv_blocks:
                    rebuild_stage[ref.index] = len(rebuild_stage)
                    rebuild_positions += range(logical * bs, logical * bs + bs)
                else:
                    kv_stage[ref.index] = len(kv_stage)

        def table(seq, width: int) -> tuple[list[int], list[int]]:
            """Block table row: a resident block, or the block's position in the staging slot (mask 1)."""
            row, mask = [], []
            for ref in seq.block_table[:width]:
                if ref.tier == DEVICE:
                    row.append(ref.index)
                    mask.append(0)
                else:
                    row.append(kv_stage[ref.index] if ref.index in kv_stage else len(kv_stage) + rebuild_stage[ref.index])
                    mask.append(1)
            return row + [0] * (width - len(row)), mask + [0] * (width - len(mask))

        contexts = []  # (prefill index, computed prefix tokens, table row, mask) for chunks after the first
        for index, seq in enumerate(scheduled.prefill):
            start, stop = seq.num_computed_tokens, seq.num_computed_tokens + seq.num_scheduled_tokens
            ref_table = [ref.index for ref in seq.block_table]
            ids += seq.token_ids[start:stop]
            positions += range(start, stop)
            slots += [ref_table[p // bs] * bs + p % bs for p in range(start, stop)]
            cu.append(len(ids))
            if seq.completes_this_step:
                rows.append(len(ids) - 1)
            if start:
                contexts.append((index, start, *table(seq, -(-start // bs))))
        num_prefill = len(ids)
        for seq in scheduled.decode:
            position = seq.num_tokens - 1
            ref = seq.block_table[position // bs]
            ids.append(seq.last_token_id)
            positions.append(position)
            slots.append(ref.index * bs + position % bs)
            rows.append(len(ids) - 1)
        decode_tables = lens = None
        if scheduled.decode:
            width = max(len(seq.block_table) for seq in scheduled.decode)
            base_rows, pooled_rows = zip(*(table(seq, width) for seq in scheduled.decode))
            decode_tables = self._layer_tables(list(base_rows), list(pooled_rows))
            lens = Lengths.build([seq.num_tokens for seq in scheduled.decode], device)
        prefix_tables = None
        prefix_lens = [0] * len(scheduled.prefill)
        if contexts:  # one table row per prefill (first chunks' rows unused), as decode tables are built
            width = max(len(row) for _, _, row, _ in contexts)
            base_rows = [[0] * width for _ in scheduled.prefill]
            pooled_rows = [[0] * width for _ in scheduled.prefill]
            for index, start, row, mask in contexts:
                base_rows[index][:len(row)], pooled_rows[index][:len(mask)], prefix_lens[index] = row, mask, start
            prefix_tables = self._layer_tables(base_rows, pooled_rows)
        slots_cpu = torch.tensor(slots, dtype=torch.int64)
        position_ids = torch.tensor(positions, dtype=torch.int64, device=device)
        rebuild = None
        if rebuild_stage:
            rebuild = self.model.prepare_positions(torch.tensor(rebuild_positions, dtype=torch.int64, device=device))
        return Batch(
            input_ids=torch.tensor(ids, dtype=torch.int64, device=device),
            positions=position_ids, layer_positions=self.model.prepare_positions(position_ids),
            layer_slots=slots_cpu.to(device)[None, :] + self._layer_tokens, slots_cpu=slots_cpu,
            prefill=PrefillLayout.build(cu, prefix_lens, device) if scheduled.prefill else None,
            num_prefill_tokens=num_prefill, logit_rows=torch.tensor(rows, dtype=torch.int64, device=device),
            prefix_tables=prefix_tables, decode_tables=decode_tables, context_lens=lens,
            kv_indices=list(kv_stage), rebuild_indices=list(rebuild_stage), rebuild_positions=rebuild)

    def _restore(self, moves: list[BlockMove]) -> int:
        """Pool -> device moves (the pool limit shrank, or the device has room again); rebuild-kind
        blocks are recomputed here."""
        moved = self.cache.restore_kv([move for move in moves if not move.rebuild])
        rebuild = [move for move in moves if move.rebuild]
        if rebuild:
            activations = self.cache.restore_activations(rebuild)  # [L, k, bs, h]
            positions = self.model.prepare_positions(torch.tensor(
                [move.position + offset for move in rebuild for offset in range(self.block_size)], device=self.device))
            resident = self.cache.resident()
            devices = torch.tensor([move.device_index for move in rebuild], device=self.device)
            for layer in range(self.num_layers):
                inputs = activations[layer].reshape(-1, self.cache.hidden_size).to(self.device)
                k, v = self.model.layer_kv_from_input(layer, inputs, positions)
                resident[layer, devices, 0] = k.reshape(len(rebuild), self.block_size, *k.shape[1:]).to(resident.dtype)
                resident[layer, devices, 1] = v.reshape(len(rebuild), self.block_size, *v.shape[1:]).to(resident.dtype)
            moved += activations.numel() * activations.element_size()
        return moved

    def _stage(self, layer: int, batch: Batch) -> None:
        """Wait for layer `layer`'s staged blocks; fill rebuild-kind ones from their activations."""
        self.prefetcher.wait(layer)
        if not batch.rebuild_indices:
            return
        count = len(batch.rebuild_indices)
        activations = self.prefetcher.activations(layer).reshape(-1, self.cache.hidden_size)
        k, v = self.model.layer_kv_from_input(layer, activations, batch.rebuild_positions)
        slot = layer % self.layout.prefetch_depth
        rows = self.cache.staging_rows(slot, len(batch.kv_indices) + count)[len(batch.kv_indices):]
        rows[:, 0] = k.reshape(count, self.block_size, *k.shape[1:]).to(rows.dtype)
        rows[:, 1] = v.reshape(count, self.block_size, *v.shape[1:]).to(rows.dtype)

    def execute(self, scheduled: SchedulerOutput) -> StepResult:
        with torch.inference_mode():
            h2d = self._restore(scheduled.restores) if scheduled.restores else 0
            d2h = self.cache.evict(scheduled.evictions) if scheduled.evictions else 0
            batch = self._prepare(scheduled)
            streaming = self.prefetcher is not None and bool(batch.kv_indices or batch.rebuild_indices)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            began = time.perf_counter()
            if streaming:
                h2d += self.prefetcher.start(batch.kv_indices, batch.rebuild_indices)
            try:
                hidden, d2h_captured = self._forward(batch, streaming)
                tokens = self._sample(hidden, scheduled.sampled)
            finally:
                stall = self.prefetcher.finish() if streaming else 0.0
            elapsed = time.perf_counter() - began
        rebuilt = len(batch.rebuild_indices) * self.block_size if streaming else 0
        return StepResult(tokens=tokens, compute_s=max(0.0, elapsed - stall), stall_s=stall,
                          h2d_bytes=h2d, d2h_bytes=d2h + d2h_captured, rebuilt_tokens=rebuilt)

    def _sample(self, rows: torch.Tensor, seqs: list) -> list[int]:
        """The next token of each sampled sequence. A step whose sequences are all greedy, with the C argmax in
        use and the lm_head on AMX tiles, takes the argmax from the lm_head's epilogue (the same tokens, its logits
        never written); every other step samples from the logits."""
        params = [seq.sampling_params for seq in seqs]
        if self.c_variant and all(p.greedy for p in params):
            tokens = self.model.lm_head.greedy_tokens(self.model.head_input(rows))
            if tokens is not None:
                return tokens
        return sample(self.model.logits(rows), params, [seq.generator for seq in seqs], self.c_variant)

    def _forward(self, batch: Batch, streaming: bool) -> tuple[torch.Tensor, int]:
        """The final hidden states of the rows the step samples from (`batch.logit_rows`, in that order), and the
        bytes captured for the KVPR pool. The last layer carries only those rows past its attention where they are
        fewer than the step's tokens (prompt tokens before a prompt's last need their K and V, not their output)."""
        model, cache, kv = self.model, self.cache, self.cache.kv
        scale = model.attention_scale
        prefill_tokens = batch.num_prefill_tokens
        captured = 0

        def attention(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            write_kv(kv, batch.layer_slots[layer], k, v, self.c_variant)
            if streaming:
                self._stage(layer, batch)
            parts = []
            if prefill_tokens:
                tables = None if batch.prefix_tables is None else batch.prefix_tables[layer]
                parts.append(paged_prefill_attention(q[:prefill_tokens], k[:prefill_tokens], v[:prefill_tokens],
                                                     batch.prefill, scale, kv, tables, self.decode_variant,
                                                     self.prefill_variant))
            if batch.decode_tables is not None:
                parts.append(paged_decode_attention(q[prefill_tokens:], kv, batch.decode_tables[layer],
                                                    batch.context_lens, scale, self.decode_variant))
            if streaming:
                self.prefetcher.release(layer)
            return parts[0] if len(parts) == 1 else torch.cat(parts)

        hidden = model.embed(batch.input_ids, batch.positions)
        keep = batch.logit_rows if 0 < len(batch.logit_rows) < len(batch.input_ids) else None
        for layer in range(self.num_layers):
            if cache.rebuild:
                captured += cache.capture(layer, batch.slots_cpu, hidden)
            last = layer == self.num_layers - 1
            hidden = model.layer_forward(layer, hidden, batch.layer_positions, attention, keep if last else None)
        return (hidden if keep is not None else hidden[batch.logit_rows]), captured
