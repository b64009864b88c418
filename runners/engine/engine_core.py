"""`EngineCore`: one iteration loop for the real engine and the simulator (torch-free).

The core owns what does not depend on how a forward pass is done: the cache layout, the block
manager, the scheduler, the pool limit knob, the finish rule and the per-iteration
`IterationStats`. What a forward pass is comes from an executor:

- `runners.engine.model_runner.ModelRunner`: real tensors on the device (`LLMEngine`);
- `runners.sim_runner.CostModelExecutor`: no tensors; it prices the iteration with the planner's
  step-time function and advances a virtual clock (`--runner sim`).

Each `step()` schedules, has the executor run what was scheduled, commits the sampled tokens
(stamped with the core's clock after the forward pass), finishes the sequences the one finish
rule says are done (a stop token, EOS unless ignored, `max_tokens`, or the context length), and
appends one `IterationStats`. So the engine and the simulator cannot drift apart in scheduling,
finishing or telemetry. Left out: requests' outputs and ids (LLMEngine keeps those), sampling,
timelines and the adaptive controller (the runners attach those to each step's stats).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Protocol

from runners.engine.block_manager import BlockManager, CacheLayout
from runners.engine.config import EngineConfig
from runners.engine.outputs import IterationStats, StepResult
from runners.engine.scheduler import Scheduler, SchedulerOutput
from runners.engine.sequence import Sequence


class Executor(Protocol):
    def execute(self, scheduled: SchedulerOutput) -> StepResult: ...


Committed = list[tuple[Sequence, int, "str | None"]]  # (sequence, sampled token, finish reason or None)


class EngineCore:
    def __init__(self, config: EngineConfig, make_executor: Callable[["EngineCore"], Executor],
                 eos_token_ids: Iterable[int] = (), clock: Callable[[], float] = time.perf_counter):
        """`make_executor(core)` builds the executor once the layout, block manager and scheduler exist;
        `clock` stamps tokens and times iterations (a virtual clock in the simulator)."""
        self.config, self.clock = config, clock
        self.layout = CacheLayout.from_config(config, config.shape.num_layers)
        self.block_manager = BlockManager(self.layout, config.rebuild_fraction)
        self.scheduler = Scheduler(config, self.block_manager)
        self.eos_token_ids = frozenset(eos_token_ids)
        self.stats: list[IterationStats] = []
        self.executor: Executor | None = make_executor(self)

    def set_pool_limit(self, num_blocks: int) -> None:
        """Cap pool use; takes effect at the next step (blocks move back or sequences are preempted)."""
        self.block_manager.set_pool_limit(int(num_blocks))

    def finish_reason(self, seq: Sequence, token: int) -> str | None:
        """The one finish rule: "stop" for a stop token (or EOS unless ignored) once `min_tokens` other tokens
        came before it, "length" at `max_tokens` or the context length, else None."""
        params = seq.sampling_params
        if len(seq.output_token_ids) > params.min_tokens and (
                token in params.stop_token_ids or (not params.ignore_eos and token in self.eos_token_ids)):
            return "stop"
        if len(seq.output_token_ids) >= params.max_tokens or seq.num_tokens >= self.config.model_len:
            return "length"
        return None

    def step(self) -> tuple[SchedulerOutput, Committed]:
        """One iteration: schedule, execute, commit, record its stats. An empty schedule returns no sequences."""
        began = self.clock()
        scheduled = self.scheduler.schedule()
        if scheduled.is_empty:
            if self.scheduler.has_unfinished():
                raise AssertionError("scheduler made no progress with requests pending")
            return scheduled, []
        # Token counts before the sequences advance.
        num_prefill_tokens, num_decode_tokens = scheduled.num_prefill_tokens, scheduled.num_decode_tokens
        result = self.executor.execute(scheduled)
        now = self.clock()
        committed = self.scheduler.commit(scheduled, result.tokens, now, self.finish_reason)
        manager, scheduler = self.block_manager, self.scheduler
        self.stats.append(IterationStats(
            step=len(self.stats), wall_s=self.clock() - began, compute_s=result.compute_s, stall_s=result.stall_s,
            h2d_bytes=result.h2d_bytes, d2h_bytes=result.d2h_bytes, num_prefill_tokens=num_prefill_tokens,
            num_decode_tokens=num_decode_tokens, batch_size=len(scheduled.sequences),
            num_running=len(scheduler.running), num_waiting=len(scheduler.waiting),
            num_preempted=len(scheduled.preempted), device_blocks_used=manager.device_used,
            pool_blocks_used=manager.pool_used, pool_limit_blocks=manager.pool_limit_blocks,
            rebuilt_tokens=result.rebuilt_tokens, waiting_blocks=scheduler.waiting_blocks()))
        return scheduled, committed
