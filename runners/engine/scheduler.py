"""Iteration-level scheduling (continuous batching) over the two-tier block manager (torch-free).

Each `schedule()` returns one iteration's work:

1. Pool limit: if `set_pool_limit` shrank the pool below its use, pooled blocks move back to
   free device blocks (`restores`); when the device has no room, the newest running sequence
   is preempted (its blocks are freed, it is recomputed later; no token is lost).
2. Decode: every running sequence (oldest first) gets its next token, within
   `max_num_batched_tokens`. A sequence whose tail block is full gets a new device block; when
   the device has none free, full blocks of running sequences move to the pool (`evictions`);
   when the pool is full too, the newest running sequence is preempted.
3. Prefill: waiting requests (preempted ones first) are admitted whole while `max_num_seqs`,
   the token budget and the two tiers allow (a preempted sequence whose recompute exceeds the
   token budget is admitted alone); admission may evict others' blocks to the pool
   (this is how the pool lets more sequences run than the device alone holds) but never preempts.
4. Promotion: when nobody waits and this iteration neither evicted nor preempted, pooled blocks
   move back to free device blocks (`restores`) beyond one free block per running sequence, so a
   pool only streams while the device is short of room (sequences finishing free device blocks).

Victims for eviction: the running sequence with the most evictable device blocks gives its
oldest one. Every pooled block belongs to a running sequence and is streamed each iteration,
so the streamed bytes per layer and iteration are at most the pool limit, which the staging
slot is sized for. Left out: priorities, chunked prefill, swapping sequences out whole.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from runners.engine.block_manager import BlockManager, BlockMove
from runners.engine.sequence import Sequence, SequenceStatus


@dataclass
class SchedulerOutput:
    prefill: list[Sequence] = field(default_factory=list)
    decode: list[Sequence] = field(default_factory=list)
    restores: list[BlockMove] = field(default_factory=list)  # pool -> device, done first
    evictions: list[BlockMove] = field(default_factory=list)  # device -> pool, done before the forward
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def sequences(self) -> list[Sequence]:
        return self.prefill + self.decode

    @property
    def num_prefill_tokens(self) -> int:
        return sum(seq.num_new_tokens for seq in self.prefill)

    @property
    def num_decode_tokens(self) -> int:
        return len(self.decode)

    @property
    def is_empty(self) -> bool:
        return not self.prefill and not self.decode


class Scheduler:
    def __init__(self, config, block_manager: BlockManager):
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.block_size = config.block_size
        self.blocks = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admission order, oldest first

    # --- queue -----------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Remove a running or waiting sequence and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    # --- scheduling ------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        self._enforce_pool_limit(out)
        budget = self.max_num_batched_tokens
        for seq in list(self.running):
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted earlier in this loop
            if budget < 1:
                break
            need = seq.num_missing_blocks(self.block_size)
            while need and not self._make_room(need, out):
                victim = self.running[-1]
                self._preempt(victim, out)
                if victim is seq:
                    break
            if seq.status is not SequenceStatus.RUNNING:
                continue
            self.blocks.allocate(seq, need)
            out.decode.append(seq)
            budget -= 1
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if seq.num_new_tokens > budget and not out.is_empty:
                break  # a recomputed sequence longer than the budget runs alone
            need = seq.num_missing_blocks(self.block_size)
            if not self._make_room(need, out):
                break
            self.waiting.popleft()
            self.blocks.allocate(seq, need)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.prefill.append(seq)
            budget -= seq.num_new_tokens
        if not self.waiting and not out.evictions and not out.preempted:
            self._promote(out)
        return out

    def _promote(self, out: SchedulerOutput) -> None:
        """Move pooled blocks back to free device blocks, keeping one free block per running sequence
        for the next iteration's growth. A pooled block is streamed every iteration; a restored one is
        copied once. Sequences with the most tokens left to generate come first (they gain the most)."""
        room = self.blocks.num_free_device - len(self.running)
        if room < 1 or not self.blocks.pool_used:
            return
        for seq in sorted(self.running, key=lambda s: (-s.num_tokens_left, s.order)):
            for logical in seq.pooled_blocks():
                if room < 1:
                    return
                out.restores.append(self.blocks.restore(seq, logical))
                room -= 1

    def _make_room(self, need: int, out: SchedulerOutput) -> bool:
        """Evict full blocks to the pool until `need` device blocks are free; False if impossible."""
        while self.blocks.num_free_device < need:
            if self.blocks.pool_room < 1:
                return False
            victim, logical = self._choose_victim()
            if victim is None:
                return False
            out.evictions.append(self.blocks.evict(victim, logical))
        return True

    def _choose_victim(self) -> tuple[Sequence | None, int]:
        best, best_blocks = None, []
        for seq in self.running:
            candidates = seq.evictable_blocks(self.block_size)
            if len(candidates) > len(best_blocks):
                best, best_blocks = seq, candidates
        return (best, best_blocks[0]) if best is not None else (None, -1)

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        out.preempted.append(seq)

    def _enforce_pool_limit(self, out: SchedulerOutput) -> None:
        while self.blocks.pool_used > self.blocks.pool_limit_blocks:
            holder = next((seq for seq in reversed(self.running) if seq.pooled_blocks()), None)
            if holder is None:
                raise AssertionError("pool blocks in use but no running sequence holds one")
            if self.blocks.num_free_device:
                out.restores.append(self.blocks.restore(holder, holder.pooled_blocks()[-1]))
            else:
                self._preempt(self.running[-1], out)
