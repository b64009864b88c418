"""Iteration-level scheduling (continuous batching, chunked prefill) over the two-tier block manager (torch-free).

Each `schedule()` returns one iteration's work; every scheduled sequence gets
`num_scheduled_tokens` (1 to decode, a prefill chunk otherwise) within `max_num_batched_tokens`:

1. Pool limit: if `set_pool_limit` shrank the pool below its use, pooled blocks move back to
   free device blocks (`restores`); when the device has no room, the newest running sequence
   is preempted (its blocks are freed, it is recomputed later; no token is lost).
2. Running sequences, oldest first: a decoding one gets its next token, one still in prefill
   (chunked earlier) its next chunk. New tokens always land in device blocks; when the device
   has too few free, full blocks of running sequences move to the pool (`evictions`); a prefill
   chunk shrinks to what the device can then hold; when not even one token fits, the newest
   running sequence is preempted.
3. Admission: waiting requests (preempted ones first) are admitted while `max_num_seqs` and the
   token budget allow and the two tiers have room for their whole prompt; the first chunk is as
   much of the prompt as the budget and the device (after evicting others' full blocks to the
   pool, which is how the pool lets more sequences run than the device alone holds) allow.
   Admission never preempts. Chunking means a prompt need not fit the device at once: earlier
   chunks' full blocks may be pooled while later chunks attend over them (through staging).
4. Promotion: when nobody waits and this iteration neither evicted nor preempted, pooled blocks
   move back to free device blocks (`restores`) beyond one free block per running sequence, so a
   pool only streams while the device is short of room (sequences finishing free device blocks).

Victims for eviction: the running sequence with the most evictable device blocks gives its
oldest one. Every pooled block belongs to a running sequence and is streamed each iteration,
so the streamed bytes per layer and iteration are at most the pool limit, which the staging
slot is sized for. Left out: priorities, swapping sequences out whole.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
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
        return sum(seq.num_scheduled_tokens for seq in self.prefill)

    @property
    def num_decode_tokens(self) -> int:
        return len(self.decode)

    @property
    def sampled(self) -> list[Sequence]:
        """Sequences that get a token this iteration (before the engine advances them): every decode,
        and the prefills whose chunk ends the prompt. Prefills first, as the model runner's logits."""
        return [seq for seq in self.sequences if seq.completes_this_step]

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
        self._waiting_blocks = 0  # sum of _blocks_of over `waiting`, kept as it changes (O(1) per step)

    # --- queue -----------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)
        self._waiting_blocks += self._blocks_of(seq)

    def _blocks_of(self, seq: Sequence) -> int:
        return -(-seq.num_tokens // self.block_size)  # a waiting sequence's tokens do not change while it waits

    def waiting_blocks(self) -> int:
        """KV blocks the waiting requests need to run (their tokens so far): the demand a pool controller sizes to."""
        return self._waiting_blocks

    def pool_blocks_needed(self) -> int:
        """Pooled blocks the running requests may hold before they finish: those pooled now plus
        their growth to max_tokens past the free device blocks (new blocks land on the device, full
        ones are evicted when it is full). A pool limit under this would preempt one of them later,
        so a controller's shrink stops here. O(running)."""
        growth = sum(max(0, seq.num_blocks_for(seq.num_tokens + seq.num_tokens_left - 1, self.block_size)
                            - len(seq.block_table)) for seq in self.running)  # the last token's K/V is never written
        return self.blocks.pool_used + max(0, growth - self.blocks.num_free_device)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Remove a running or waiting sequence and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
            self._waiting_blocks -= self._blocks_of(seq)
        self.blocks.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    def commit(self, out: "SchedulerOutput", tokens: list[int], now: float,
               finish_reason: Callable[[Sequence, int], str | None]) -> list[tuple[Sequence, int, str | None]]:
        """Advance what `out` scheduled once its forward pass ran: computed tokens move on, each sampled
        sequence appends its token (at clock time `now`), and those `finish_reason` says are done finish.

        The engine's step and the policy tests both call this, so the bookkeeping exists once.
        Returns (sequence, token, reason or None) for each sampled sequence, in `out.sampled` order.
        """
        sampled = list(out.sampled)  # before the sequences advance: it depends on what was computed
        for seq in out.sequences:
            seq.num_computed_tokens += seq.num_scheduled_tokens
            seq.num_scheduled_tokens = 0
        committed = []
        for seq, token in zip(sampled, tokens):
            seq.append_token(token, now)
            reason = finish_reason(seq, token)
            if reason is not None:
                self.finish(seq, reason)
            committed.append((seq, token, reason))
        return committed

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
            want = min(seq.num_new_tokens, budget)
            count = self._fit(seq, want, out)
            while not count:
                victim = self.running[-1]
                self._preempt(victim, out)
                if victim is seq:
                    break
                count = self._fit(seq, want, out)
            if seq.status is not SequenceStatus.RUNNING:
                continue
            self._take(seq, count, out)
            budget -= count
        while self.waiting and len(self.running) < self.max_num_seqs and budget > 0:
            seq = self.waiting[0]
            if self.blocks.num_free_device + self.blocks.pool_room < seq.num_missing_blocks(self.block_size):
                break  # the two tiers cannot hold its prompt now
            count = self._fit(seq, min(seq.num_new_tokens, budget), out)
            if not count:
                break
            self.waiting.popleft()
            self._waiting_blocks -= self._blocks_of(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            self._take(seq, count, out)
            budget -= count
        if not self.waiting and not out.evictions and not out.preempted:
            self._promote(out)
        return out

    def _fit(self, seq: Sequence, want: int, out: SchedulerOutput) -> int:
        """How many of `want` new tokens of `seq` get device slots, evicting full blocks to the pool
        as needed: all of them, or (when device and pool are short) as many as the free blocks hold."""
        if self._make_room(seq.num_missing_blocks(self.block_size, want), out):
            return want
        return min(want, seq.num_tokens_fitting(self.blocks.num_free_device, self.block_size))

    def _take(self, seq: Sequence, count: int, out: SchedulerOutput) -> None:
        self.blocks.allocate(seq, seq.num_missing_blocks(self.block_size, count))
        seq.num_scheduled_tokens = count
        (out.decode if seq.num_new_tokens == 1 else out.prefill).append(seq)

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
        seq.num_computed_tokens = seq.num_scheduled_tokens = 0
        seq.num_preemptions += 1
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self._waiting_blocks += self._blocks_of(seq)
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
