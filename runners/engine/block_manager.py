"""Two-tier KV block accounting: device blocks and CPU-pool blocks (torch-free).

`CacheLayout` turns an `EngineConfig` into block counts. Staging counts against the device
budget like this: `num_device_blocks` in the config is the device KV budget in blocks (a block
is `block_size` tokens across all layers). Each of the `d` staging slots holds
`staged_blocks_per_slot` (S) single-layer blocks, where S = the pool capacity, so a whole
batch's pooled blocks fit one slot. The `d * S` single-layer blocks equal `ceil(d * S / L)`
all-layer blocks; that many are taken out of the device budget, the rest hold resident KV.

`BlockManager` owns the free lists and every sequence's block table. New blocks are always
on the device. Only full, computed, non-tail blocks move to the pool (`evict`, one D2H copy
each); a pooled block stays there until its sequence finishes, is preempted, or the pool is
shrunk below its use (`restore`, the only pool->device move of ownership). A share
`rebuild_fraction` of the pool's blocks keeps layer input activations instead of K/V (the
KVPR rebuild path); `evict` picks the kind so the rebuilt share tracks that fraction.

Left out: copy-on-write and prefix sharing, swapping whole sequences out.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

from pie_core.errors import BadInput
from runners.engine.sequence import DEVICE, POOL, BlockRef, Sequence


@dataclass(frozen=True)
class CacheLayout:
    """Block counts of one engine (see the module docstring for the staging charge)."""

    num_layers: int
    block_size: int
    num_device_blocks: int  # resident device blocks, after the staging charge
    num_pool_blocks: int  # pool capacity (KV + activation blocks)
    num_pool_rebuild_blocks: int  # of those, blocks that keep activations (KVPR)
    prefetch_depth: int
    staged_blocks_per_slot: int  # single-layer blocks per staging slot
    staging_charge_blocks: int  # all-layer device blocks given to staging

    def __post_init__(self) -> None:
        if self.num_device_blocks < 1:
            raise BadInput(f"device budget leaves {self.num_device_blocks} KV blocks after staging "
                           f"({self.staging_charge_blocks} blocks for {self.prefetch_depth} slots x "
                           f"{self.staged_blocks_per_slot} pool blocks)",
                           "raise num_device_blocks, or lower num_pool_blocks or prefetch_depth")

    @property
    def num_pool_kv_blocks(self) -> int:
        return self.num_pool_blocks - self.num_pool_rebuild_blocks

    @classmethod
    def from_config(cls, config, num_layers: int) -> "CacheLayout":
        slot = config.num_pool_blocks
        depth = config.prefetch_depth if slot else 0
        charge = math.ceil(depth * slot / num_layers)
        rebuild = round(config.rebuild_fraction * config.num_pool_blocks)
        return cls(num_layers=num_layers, block_size=config.block_size,
                   num_device_blocks=config.num_device_blocks - charge, num_pool_blocks=config.num_pool_blocks,
                   num_pool_rebuild_blocks=rebuild, prefetch_depth=depth,
                   staged_blocks_per_slot=slot, staging_charge_blocks=charge)


class BlockMove(NamedTuple):
    """One block changing tier: the device index and the pool index on either side of the copy."""

    device_index: int
    pool_index: int
    rebuild: bool  # the pool side keeps activations, not K/V
    position: int  # first token position of the block in its sequence (rebuild needs it)


class BlockManager:
    def __init__(self, layout: CacheLayout, rebuild_fraction: float = 0.0):
        self.layout = layout
        self.block_size = layout.block_size
        self.rebuild_fraction = rebuild_fraction if layout.num_pool_rebuild_blocks else 0.0
        self._free_device: deque[int] = deque(range(layout.num_device_blocks))
        self._free_pool_kv: deque[int] = deque(range(layout.num_pool_kv_blocks))
        self._free_pool_rebuild: deque[int] = deque(range(layout.num_pool_kv_blocks, layout.num_pool_blocks))
        self.pool_limit_blocks = layout.num_pool_blocks
        self.num_rebuild_used = 0

    # --- counts ----------------------------------------------------------------------------
    @property
    def num_free_device(self) -> int:
        return len(self._free_device)

    @property
    def device_used(self) -> int:
        return self.layout.num_device_blocks - len(self._free_device)

    @property
    def pool_used(self) -> int:
        return self.layout.num_pool_blocks - len(self._free_pool_kv) - len(self._free_pool_rebuild)

    @property
    def pool_room(self) -> int:
        """Blocks that may still move to the pool under the current limit."""
        free = len(self._free_pool_kv) + len(self._free_pool_rebuild)
        return max(0, min(free, self.pool_limit_blocks - self.pool_used))

    def is_rebuild(self, pool_index: int) -> bool:
        return pool_index >= self.layout.num_pool_kv_blocks

    def set_pool_limit(self, num_blocks: int) -> None:
        if not 0 <= num_blocks <= self.layout.num_pool_blocks:
            raise BadInput(f"pool limit {num_blocks} is outside 0..{self.layout.num_pool_blocks} blocks",
                           "the pool limit cannot exceed num_pool_blocks in the engine config")
        self.pool_limit_blocks = num_blocks

    # --- moves -----------------------------------------------------------------------------
    def allocate(self, seq: Sequence, count: int) -> None:
        if count > len(self._free_device):
            raise AssertionError(f"allocate {count} blocks with {len(self._free_device)} free")
        for _ in range(count):
            seq.block_table.append(BlockRef(DEVICE, self._free_device.popleft()))

    def _take_pool_block(self) -> int:
        want_rebuild = self.num_rebuild_used < self.rebuild_fraction * (self.pool_used + 1)
        first, second = ((self._free_pool_rebuild, self._free_pool_kv) if want_rebuild
                         else (self._free_pool_kv, self._free_pool_rebuild))
        index = (first or second).popleft()
        if self.is_rebuild(index):
            self.num_rebuild_used += 1
        return index

    def _return_pool_block(self, index: int) -> None:
        if self.is_rebuild(index):
            self.num_rebuild_used -= 1
            self._free_pool_rebuild.append(index)
        else:
            self._free_pool_kv.append(index)

    def evict(self, seq: Sequence, logical: int) -> BlockMove:
        """Move a full device block of `seq` to the pool; the caller copies device -> pool."""
        assert seq.is_evictable(logical, self.block_size), (seq, logical)
        assert self.pool_room > 0, "evict with no pool room"
        device_index = seq.block_table[logical].index
        pool_index = self._take_pool_block()
        seq.block_table[logical] = BlockRef(POOL, pool_index)
        self._free_device.append(device_index)
        return BlockMove(device_index, pool_index, self.is_rebuild(pool_index), logical * self.block_size)

    def restore(self, seq: Sequence, logical: int) -> BlockMove:
        """Move a pooled block of `seq` back to a free device block; the caller copies pool -> device."""
        ref = seq.block_table[logical]
        assert ref.tier == POOL and self._free_device, (seq, logical)
        device_index = self._free_device.popleft()
        seq.block_table[logical] = BlockRef(DEVICE, device_index)
        self._return_pool_block(ref.index)
        return BlockMove(device_index, ref.index, self.is_rebuild(ref.index), logical * self.block_size)

    def free(self, seq: Sequence) -> None:
        for ref in seq.block_table:
            if ref.tier == DEVICE:
                self._free_device.append(ref.index)
            else:
                self._return_pool_block(ref.index)
        seq.block_table = []

    # --- checks ----------------------------------------------------------------------------
    def check_invariants(self, sequences: list[Sequence]) -> None:
        """Every block is free or owned by exactly one sequence; pooled blocks are full; tails on device."""
        owners: dict[BlockRef, str] = {}
        for seq in sequences:
            for logical, ref in enumerate(seq.block_table):
                assert ref not in owners, f"{ref} owned by {owners[ref]} and {seq.request_id}"
                owners[ref] = seq.request_id
                if ref.tier == POOL:
                    assert logical < len(seq.block_table) - 1, f"{seq.request_id}: tail block {logical} is pooled"
                    assert (logical + 1) * self.block_size <= seq.num_computed_tokens, \
                        f"{seq.request_id}: pooled block {logical} is not full and computed"
            assert len(seq.block_table) <= -(-max(seq.num_tokens, 1) // self.block_size), f"{seq!r} holds extra blocks"
        free_device = set(self._free_device)
        free_pool = set(self._free_pool_kv) | set(self._free_pool_rebuild)
        assert len(free_device) == len(self._free_device), "a device block is free twice"
        assert len(free_pool) == len(self._free_pool_kv) + len(self._free_pool_rebuild), "a pool block is free twice"
        used_device = {ref.index for ref in owners if ref.tier == DEVICE}
        used_pool = {ref.index for ref in owners if ref.tier == POOL}
        assert not used_device & free_device, f"device blocks both free and owned: {sorted(used_device & free_device)[:5]}"
        assert not used_pool & free_pool, f"pool blocks both free and owned: {sorted(used_pool & free_pool)[:5]}"
        assert len(used_device) + len(free_device) == self.layout.num_device_blocks, "device blocks leaked"
        assert len(used_pool) + len(free_pool) == self.layout.num_pool_blocks, "pool blocks leaked"
        assert self.num_rebuild_used == sum(1 for index in used_pool if self.is_rebuild(index)), "rebuild count drifted"
