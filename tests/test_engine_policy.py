"""Block manager and scheduler without torch: tiers, eviction, preemption, pool limits, invariants.

A fake storage follows every copy the scheduler asks for (restores, then evictions, then the
forward's writes), so a randomized long run checks both the block accounting and that every
block a sequence reads still holds that sequence's tokens.
"""
from __future__ import annotations

import random

import pytest

from pie_core.errors import BadInput
from runners.engine.block_manager import BlockManager, CacheLayout
from runners.engine.config import EngineConfig
from runners.engine.sampling_params import SamplingParams
from runners.engine.scheduler import Scheduler
from runners.engine.sequence import DEVICE, Sequence, SequenceStatus

BLOCK = 4


def make(num_device_blocks=16, num_pool_blocks=0, rebuild_fraction=0.0, max_num_seqs=8, budget=64, depth=1, layers=12):
    config = EngineConfig(model="opt-125m", block_size=BLOCK, num_device_blocks=num_device_blocks,
                          num_pool_blocks=num_pool_blocks, prefetch_depth=depth, rebuild_fraction=rebuild_fraction,
                          max_num_seqs=max_num_seqs, max_num_batched_tokens=budget)
    layout = CacheLayout.from_config(config, layers)
    manager = BlockManager(layout, rebuild_fraction)
    return Scheduler(config, manager), manager


class FakeStorage:
    """Token ids per (tier, block, offset): what a real cache would hold."""

    def __init__(self):
        self.device: dict[int, dict[int, int]] = {}
        self.pool: dict[int, dict[int, int]] = {}

    def apply(self, out):
        for move in out.restores:
            self.device[move.device_index] = dict(self.pool[move.pool_index])
        for move in out.evictions:
            self.pool[move.pool_index] = dict(self.device[move.device_index])

    def check_and_compute(self, seq):
        tokens = seq.token_ids
        for position in range(seq.num_computed_tokens):
            ref = seq.block_table[position // BLOCK]
            store = self.device if ref.tier == DEVICE else self.pool
            assert store[ref.index][position % BLOCK] == tokens[position], f"{seq.request_id} position {position} corrupted"
        for position in range(seq.num_computed_tokens, seq.num_computed_tokens + seq.num_scheduled_tokens):
            ref = seq.block_table[position // BLOCK]
            assert ref.tier == DEVICE, "new tokens must be written to device blocks"
            self.device.setdefault(ref.index, {})[position % BLOCK] = tokens[position]


def by_length(seq, token):
    return "length" if len(seq.output_token_ids) >= seq.sampling_params.max_tokens else None


def run_step(scheduler, storage, finished, rng, prefill_chunks=None):
    """One engine iteration without a model: schedule, check the storage a forward pass would read, commit
    random tokens through the scheduler's own bookkeeping (`Scheduler.commit`, as `LLMEngine.step` does).
    `prefill_chunks`, when given, collects each prefill's scheduled tokens (commit resets them)."""
    out = scheduler.schedule()
    storage.apply(out)
    assert out.num_prefill_tokens + out.num_decode_tokens <= scheduler.max_num_batched_tokens
    for seq in out.sequences:
        assert seq.num_scheduled_tokens >= 1
        storage.check_and_compute(seq)
    if prefill_chunks is not None:
        prefill_chunks.extend(seq.num_scheduled_tokens for seq in out.prefill)
    tokens = [rng.randrange(1000) for _ in out.sampled]
    finished.extend(seq for seq, _token, reason in scheduler.commit(out, tokens, 0.0, by_length) if reason)
    return out


def test_layout_charges_staging_against_device_budget():
    config = EngineConfig(model="opt-125m", num_device_blocks=100, num_pool_blocks=60, prefetch_depth=2)
    layout = CacheLayout.from_config(config, 12)
    assert layout.staging_charge_blocks == 10  # 2 slots x 60 single-layer blocks / 12 layers
    assert layout.num_device_blocks == 90
    assert CacheLayout.from_config(config.replace(num_pool_blocks=0), 12).num_device_blocks == 100
    with pytest.raises(BadInput, match="after staging"):
        CacheLayout.from_config(config.replace(num_device_blocks=10), 12)


def test_pool_lets_more_sequences_run_than_device_alone():
    results = {}
    for pool in (0, 48):
        scheduler, manager = make(num_device_blocks=24, num_pool_blocks=pool, max_num_seqs=16)
        for i in range(16):
            scheduler.add(Sequence(f"r{i}", list(range(15)), SamplingParams(max_tokens=8), 0.0, i))
        storage, finished, peak = FakeStorage(), [], 0
        rng = random.Random(0)
        while scheduler.has_unfinished():
            run_step(scheduler, storage, finished, rng)
            peak = max(peak, len(scheduler.running))
            manager.check_invariants(scheduler.running + list(scheduler.waiting))
        results[pool] = peak
        assert len(finished) == 16
    assert results[0] <= 6  # 24 device blocks, 4-6 blocks per sequence
    assert results[48] >= 2 * results[0]


def test_only_full_computed_non_tail_blocks_are_pooled():
    scheduler, manager = make(num_device_blocks=8, num_pool_blocks=16, max_num_seqs=4)
    scheduler.add(Sequence("a", list(range(10)), SamplingParams(max_tokens=20), 0.0, 0))
    scheduler.add(Sequence("b", list(range(10)), SamplingParams(max_tokens=20), 0.0, 1))
    storage, finished, rng = FakeStorage(), [], random.Random(1)
    pooled_seen = 0
    for _ in range(25):
        out = run_step(scheduler, storage, finished, rng)
        for move in out.evictions:
            assert move.position % BLOCK == 0
        for seq in scheduler.running:
            assert seq.block_table[-1].tier == DEVICE
            pooled_seen += len(seq.pooled_blocks())
        manager.check_invariants(scheduler.running + list(scheduler.waiting))
    assert pooled_seen > 0


def test_preemption_newest_first_and_no_token_lost():
    scheduler, manager = make(num_device_blocks=10, num_pool_blocks=0, max_num_seqs=4)
    for i in range(3):
        scheduler.add(Sequence(f"r{i}", list(range(8)), SamplingParams(max_tokens=12), 0.0, i))
    storage, finished, rng = FakeStorage(), [], random.Random(2)
    preempted = []
    while scheduler.has_unfinished():
        out = run_step(scheduler, storage, finished, rng)
        preempted += [seq.request_id for seq in out.preempted]
        manager.check_invariants(scheduler.running + list(scheduler.waiting))
    assert preempted and preempted[0] == "r2"
    assert sorted(len(seq.output_token_ids) for seq in finished) == [12, 12, 12]


def test_rebuild_share_tracks_fraction():
    scheduler, manager = make(num_device_blocks=12, num_pool_blocks=40, rebuild_fraction=0.5, max_num_seqs=8)
    for i in range(8):
        scheduler.add(Sequence(f"r{i}", list(range(12)), SamplingParams(max_tokens=16), 0.0, i))
    storage, finished, rng = FakeStorage(), [], random.Random(3)
    shares = []
    while scheduler.has_unfinished():
        run_step(scheduler, storage, finished, rng)
        if manager.pool_used >= 10:
            shares.append(manager.num_rebuild_used / manager.pool_used)
        manager.check_invariants(scheduler.running + list(scheduler.waiting))
    assert shares and all(0.3 <= share <= 0.7 for share in shares)


def test_set_pool_limit_bounds_use_and_rejects_out_of_range():
    scheduler, manager = make(num_device_blocks=16, num_pool_blocks=32, max_num_seqs=8)
    with pytest.raises(BadInput, match="outside"):
        manager.set_pool_limit(33)
    for i in range(8):
        scheduler.add(Sequence(f"r{i}", list(range(14)), SamplingParams(max_tokens=24), 0.0, i))
    storage, finished, rng = FakeStorage(), [], random.Random(4)
    for _ in range(12):
        run_step(scheduler, storage, finished, rng)
    assert manager.pool_used > 4
    manager.set_pool_limit(4)
    out = run_step(scheduler, storage, finished, rng)
    assert out.restores or out.preempted
    assert manager.pool_used <= 4
    while scheduler.has_unfinished():
        run_step(scheduler, storage, finished, rng)
        assert manager.pool_used <= 4
    assert len(finished) == 8 and all(len(seq.output_token_ids) == 24 for seq in finished)


@pytest.mark.parametrize("seed, limit_move_chance", [(0, 0.05), (1, 0.05), (2, 0.05), (3, 1.0), (4, 1.0)])
def test_randomized_long_run_keeps_invariants_and_data(seed, limit_move_chance):
    """Random arrivals, aborts and pool limits (moved at random every iteration at chance 1.0, as an
    adaptive controller at its most restless): block accounting and every token survive."""
    rng = random.Random(seed)
    scheduler, manager = make(num_device_blocks=20, num_pool_blocks=30, rebuild_fraction=0.3 * (seed % 2),
                              max_num_seqs=10, budget=48)
    expected, finished, storage = {}, [], FakeStorage()
    next_id = 0
    for step in range(600):
        if next_id < 80 and rng.random() < 0.4:
            prompt = [rng.randrange(1000) for _ in range(rng.randint(1, 30))]
            max_tokens = rng.randint(1, 30)
            seq = Sequence(f"r{next_id}", prompt, SamplingParams(max_tokens=max_tokens), 0.0, next_id)
            expected[seq.request_id] = max_tokens
            scheduler.add(seq)
            next_id += 1
        if rng.random() < limit_move_chance:
            manager.set_pool_limit(rng.randint(0, 30))
        if rng.random() < 0.02 and scheduler.running:
            victim = rng.choice(scheduler.running)
            scheduler.finish(victim, "abort")
            expected.pop(victim.request_id)
        run_step(scheduler, storage, finished, rng)
        manager.check_invariants(scheduler.running + list(scheduler.waiting))
        assert manager.pool_used <= manager.pool_limit_blocks
        assert scheduler.waiting_blocks() == sum(-(-seq.num_tokens // BLOCK) for seq in scheduler.waiting)
        assert scheduler.pool_blocks_needed() >= manager.pool_used
        assert len(scheduler.running) <= 10
        for seq in scheduler.waiting:
            assert seq.status is SequenceStatus.WAITING and not seq.block_table
    manager.set_pool_limit(30)
    while scheduler.has_unfinished():
        run_step(scheduler, storage, finished, rng)
        manager.check_invariants(scheduler.running + list(scheduler.waiting))
    assert {seq.request_id: len(seq.output_token_ids) for seq in finished} == expected
    assert manager.device_used == 0 and manager.pool_used == 0


def test_long_prompt_prefills_in_chunks_over_its_pooled_blocks():
    """A prompt longer than the token budget and than the device holds: chunks within the budget,
    earlier chunks' full blocks pooled while later chunks are computed, data intact."""
    scheduler, manager = make(num_device_blocks=10, num_pool_blocks=24, budget=8)  # 8 resident blocks after staging
    assert manager.layout.num_device_blocks == 8
    scheduler.add(Sequence("a", list(range(40)), SamplingParams(max_tokens=4), 0.0, 0))  # 44 tokens = 11 blocks
    storage, finished, rng = FakeStorage(), [], random.Random(3)
    chunks, pooled_mid_prefill = [], 0
    while scheduler.has_unfinished():
        out = run_step(scheduler, storage, finished, rng, prefill_chunks=chunks)
        pooled_mid_prefill += sum(len(seq.pooled_blocks()) for seq in out.prefill)
        manager.check_invariants(scheduler.running + list(scheduler.waiting))
    assert chunks == [8, 8, 8, 8, 8] and pooled_mid_prefill > 0
    assert len(finished) == 1 and len(finished[0].output_token_ids) == 4


def test_recompute_longer_than_token_budget_is_chunked():
    scheduler, manager = make(num_device_blocks=12, num_pool_blocks=0, max_num_seqs=4, budget=16)
    for i in range(2):
        scheduler.add(Sequence(f"r{i}", list(range(14)), SamplingParams(max_tokens=16), 0.0, i))
    storage, finished, rng = FakeStorage(), [], random.Random(5)
    preempted = 0
    for _ in range(200):
        if not scheduler.has_unfinished():
            break
        out = run_step(scheduler, storage, finished, rng)
        preempted += len(out.preempted)
        assert not out.is_empty
        manager.check_invariants(scheduler.running + list(scheduler.waiting))
    assert preempted and len(finished) == 2


def test_pooled_blocks_return_to_the_device_when_it_has_room():
    """Short requests finish and free device blocks; the long ones' pooled blocks move back, data intact."""
    scheduler, manager = make(num_device_blocks=24, num_pool_blocks=32, max_num_seqs=8)
    for i in range(8):
        scheduler.add(Sequence(f"r{i}", list(range(15)), SamplingParams(max_tokens=20 if i < 2 else 4), 0.0, i))
    storage, finished, rng = FakeStorage(), [], random.Random(2)
    peak_pooled, restored, steps_with_two_left = 0, 0, 0
    while scheduler.has_unfinished():
        steps_with_two_left += len(finished) == 6
        out = run_step(scheduler, storage, finished, rng)
        restored += len(out.restores)
        if out.restores:
            assert not out.evictions and not scheduler.waiting
            assert manager.num_free_device >= len(scheduler.running)  # room kept for the next step's growth
        peak_pooled = max(peak_pooled, manager.pool_used)
        manager.check_invariants(scheduler.running + list(scheduler.waiting))
        if steps_with_two_left:  # only the two long ones left: 2 x 9 blocks + 2 spare fit the 21 device blocks
            assert manager.pool_used == 0
    assert peak_pooled > 0 and restored > 0 and len(finished) == 8


def test_a_pool_limit_at_what_the_running_requests_need_never_preempts_them():
    """Scheduler.pool_blocks_needed() is the floor a controller's shrink stops at: held at it every
    iteration once everyone runs, no running request is preempted and all finish; held at the
    pooled blocks in use instead (what the floor was before), some are."""
    preempted = {}
    for floor in ("needed", "in use"):
        scheduler, manager = make(num_device_blocks=30, num_pool_blocks=96, max_num_seqs=12, budget=64)
        for i in range(12):
            scheduler.add(Sequence(f"r{i}", list(range(10 + i)), SamplingParams(max_tokens=12), 0.0, i))
        storage, finished, rng = FakeStorage(), [], random.Random(0)
        while scheduler.waiting:
            run_step(scheduler, storage, finished, rng)
        preempted[floor] = 0
        while scheduler.has_unfinished():
            assert manager.pool_used <= scheduler.pool_blocks_needed() <= 96  # the capacity holds what they need
            manager.set_pool_limit(scheduler.pool_blocks_needed() if floor == "needed" else manager.pool_used)
            preempted[floor] += len(run_step(scheduler, storage, finished, rng).preempted)
            manager.check_invariants(scheduler.running + list(scheduler.waiting))
        assert len(finished) == 12
    assert preempted["needed"] == 0 and preempted["in use"] > 0
