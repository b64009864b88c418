"""A request's state inside the engine: tokens, block table, lifecycle (torch-free).

A `Sequence` holds its prompt and output token ids, how many of them already have K/V in the
cache (`num_computed_tokens`), and its block table: one `BlockRef(tier, index)` per logical
block of `block_size` tokens, where the tier is `DEVICE` or `POOL`. The block manager and the
scheduler change the table; the model runner only reads it.

Left out: beams and parallel sampling (one output per request), prefix sharing between
sequences (a block has exactly one owner).
"""
from __future__ import annotations

import enum
from typing import NamedTuple

from runners.engine.sampling_params import SamplingParams

DEVICE = 0
POOL = 1


class BlockRef(NamedTuple):
    tier: int  # DEVICE or POOL
    index: int  # block index within that tier


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """One request. `order` is the admission counter: a larger order is a newer request."""

    def __init__(self, request_id: str, prompt_token_ids: list[int], sampling_params: SamplingParams,
                 arrival_time: float, order: int):
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.output_token_ids: list[int] = []
        self.sampling_params = sampling_params
        self.arrival_time = arrival_time
        self.order = order
        self.status = SequenceStatus.WAITING
        self.block_table: list[BlockRef] = []
        self.num_computed_tokens = 0
        self.num_scheduled_tokens = 0  # tokens of this iteration's forward (a prefill chunk, or 1 to decode)
        self.num_preemptions = 0
        self.finish_reason: str | None = None
        self.first_token_time: float | None = None
        self.token_times: list[float] = []
        self.generator = None  # a torch.Generator for random sampling, set by the engine

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def last_token_id(self) -> int:
        return self.output_token_ids[-1] if self.output_token_ids else self.prompt_token_ids[-1]

    @property
    def num_new_tokens(self) -> int:
        """Tokens without K/V yet: the whole prompt (or, after preemption, prompt and outputs) before
        prefill, the rest of it between prefill chunks, 1 while decoding."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def completes_this_step(self) -> bool:
        """Whether this iteration's scheduled tokens reach the end, so a token is sampled."""
        return self.num_computed_tokens + self.num_scheduled_tokens == self.num_tokens

    @property
    def num_tokens_left(self) -> int:
        """Tokens still to generate at most (the request's max_tokens less its outputs)."""
        return max(0, self.sampling_params.max_tokens - len(self.output_token_ids))

    def num_blocks_for(self, num_tokens: int, block_size: int) -> int:
        return -(-num_tokens // block_size)

    def num_missing_blocks(self, block_size: int, num_new: int | None = None) -> int:
        """Blocks to add so the computed tokens and the next `num_new` (default: all) have slots."""
        new = self.num_new_tokens if num_new is None else num_new
        return max(0, self.num_blocks_for(self.num_computed_tokens + new, block_size) - len(self.block_table))

    def num_tokens_fitting(self, extra_blocks: int, block_size: int) -> int:
        """New tokens that `extra_blocks` more blocks (and the free slots of the tail) can hold."""
        return max(0, (len(self.block_table) + extra_blocks) * block_size - self.num_computed_tokens)

    def is_evictable(self, logical: int, block_size: int) -> bool:
        """Full, computed, on the device, and not the tail block: may move to the pool."""
        return (logical < len(self.block_table) - 1
                and (logical + 1) * block_size <= self.num_computed_tokens
                and self.block_table[logical].tier == DEVICE)

    def evictable_blocks(self, block_size: int) -> list[int]:
        limit = min(len(self.block_table) - 1, self.num_computed_tokens // block_size)
        return [j for j in range(max(0, limit)) if self.block_table[j].tier == DEVICE]

    def pooled_blocks(self) -> list[int]:
        return [j for j, ref in enumerate(self.block_table) if ref.tier == POOL]

    def append_token(self, token_id: int, now: float) -> None:
        self.output_token_ids.append(token_id)
        if self.first_token_time is None:
            self.first_token_time = now
        self.token_times.append(now)

    def __repr__(self) -> str:
        return (f"Sequence({self.request_id!r}, {self.status.value}, tokens={self.num_tokens}, "
                f"computed={self.num_computed_tokens}, blocks={len(self.block_table)})")
