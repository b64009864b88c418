"""Adaptive expansion while a workload is served: move the pool limit window by window (torch-free, deterministic).

Why not the hill climber (planner/hill_climber.py): it compares throughput between pool sizes,
which works in a closed loop (`pie tune --online`), where throughput is the engine's capacity.
Under an open-loop workload throughput follows arrivals: a window's tok/s says how much was
asked, not what the pool size bought. So this controller reads the signals that mean "the pool
would help" or "the pool hurts" directly, from each `TimelineWindow`:

- settle: the first `settle_windows` windows (warm-up, the first requests' prefills) make no move;
- grow: requests wait for KV space or were preempted, and the stall stays under
  `max_stall_fraction`: the limit rises by the step, or at once to the pooled blocks in use plus
  the blocks the waiting requests need when that is more (a burst needs the pool fast); the step
  doubles after each grow in a row, and the limit never passes the capacity;
- shrink (back off): the stall passed `max_stall_fraction` in `stall_windows` windows in a row
  (copies stop hiding; one long prefill alone does not move it): the limit falls by the step
  (halved each time) but never below the floor, the pooled blocks the running requests may hold
  before they finish (`pool_blocks_needed`: in use now plus their growth past the free device
  blocks), since a limit under it preempts a sequence now or later and its work is recomputed;
  at the floor, it holds. Backing off thus stops admitting more into the pool and never takes
  room from what runs. Or the pool sat unused (nobody waits and the floor stayed under
  `unused_share` of the limit for `unused_windows` windows): the limit falls to what is in use
  plus a margin, never below the floor;
- hold: otherwise (nobody waits, the pool in use);
- re-arm: after a calm stretch (no grow for `unused_windows` windows), the first window with
  waiting requests restarts from the initial step: the load shifted.

`decide(window)` returns a `PoolMove(limit, move, reason)`; the runner applies the limit
(`LLMEngine.set_pool_limit`) and notes the move in the timeline. The policy is tested against
synthetic sequences of windows. Left out: measuring (the pie and sim runners build the windows).
"""
from __future__ import annotations

from dataclasses import dataclass

from pie_core.errors import BadInput
from results.timeline import TimelineWindow


@dataclass(frozen=True)
class ControllerConfig:
    capacity_blocks: int  # the pool allocated (num_pool_blocks): the limit never passes it
    initial_blocks: int = 0  # the limit at the start
    initial_step_blocks: int | None = None  # default: a quarter of the capacity (at least one block)
    max_stall_fraction: float = 0.10
    stall_windows: int = 2  # windows in a row over the stall limit before backing off
    settle_windows: int = 2
    unused_share: float = 0.5
    unused_windows: int = 3
    margin_share: float = 0.25  # a shrink to what is in use keeps this share of it on top

    def __post_init__(self) -> None:
        if self.capacity_blocks < 0 or not 0 <= self.initial_blocks <= self.capacity_blocks:
            raise BadInput(f"pool controller needs 0 <= initial limit <= capacity, got {self.initial_blocks} and "
                           f"{self.capacity_blocks}", "give the pie runner a pool (--pool-blocks N) to adapt within")
        if not 0 < self.max_stall_fraction <= 1:
            raise BadInput(f"max stall fraction must be in (0, 1], got {self.max_stall_fraction}")
        if self.settle_windows < 0 or self.unused_windows < 1 or self.stall_windows < 1:
            raise BadInput("pool controller windows: settle >= 0, unused >= 1 and stall >= 1")

    @property
    def first_step_blocks(self) -> int:
        return self.initial_step_blocks or max(1, self.capacity_blocks // 4)


@dataclass(frozen=True)
class PoolMove:
    limit: int
    move: str  # results/timeline.py MOVES
    reason: str


class PoolController:
    def __init__(self, config: ControllerConfig):
        self.config = config
        self.limit = config.initial_blocks
        self.step = config.first_step_blocks
        self.windows_seen = 0
        self.calm = 0  # windows in a row with nobody waiting
        self.unused = 0  # windows in a row with the pool mostly unused
        self.stalled = 0  # windows in a row over the stall limit
        self.grew_last = False

    def decide(self, window: TimelineWindow) -> PoolMove:
        cfg = self.config
        self.windows_seen += 1
        if self.windows_seen <= cfg.settle_windows:
            return self._move(self.limit, "settle", f"warm-up window {self.windows_seen} of {cfg.settle_windows}")
        demand = window.waiting > 0 or window.preempted > 0
        self.stalled = self.stalled + 1 if window.stall_fraction > cfg.max_stall_fraction else 0
        stalling = self.stalled >= cfg.stall_windows
        floor = max(window.pool_blocks_used, window.pool_blocks_needed)  # a limit under it preempts, now or later
        self.unused = self.unused + 1 if not demand and floor < cfg.unused_share * self.limit else 0
        if stalling and self.limit > 0:
            self.grew_last = False
            self.step = max(1, self.step // 2)
            target = max(self.limit - self.step, floor)
            if target >= self.limit:
                return self._move(self.limit, "hold", f"stall {window.stall_fraction:.0%} > {cfg.max_stall_fraction:.0%}: "
                                                      f"no further growth; the running requests need {floor} pooled blocks")
            return self._move(target, "shrink", f"stall {window.stall_fraction:.0%} > {cfg.max_stall_fraction:.0%}")
        if demand:
            rearmed = self.calm >= cfg.unused_windows
            self.calm = 0
            if rearmed:
                self.step = cfg.first_step_blocks
            if self.limit >= cfg.capacity_blocks:
                return self._move(self.limit, "hold", f"{window.waiting} waiting, pool at capacity {cfg.capacity_blocks}")
            if self.grew_last and not rearmed:
                self.step = min(self.step * 2, max(1, cfg.capacity_blocks))
            self.grew_last = True
            why = f"{window.waiting} waiting, {window.preempted} preempted, stall {window.stall_fraction:.0%}"
            target = max(self.limit + self.step, window.pool_blocks_used + window.waiting_blocks)
            return self._move(min(cfg.capacity_blocks, target), "rearm" if rearmed else "grow", why)
        self.calm += 1
        self.grew_last = False
        if self.unused >= cfg.unused_windows and self.limit > 0:
            self.unused = 0
            target = min(self.limit - 1, max(floor, int(window.pool_blocks_used * (1 + cfg.margin_share))))
            return self._move(max(0, target), "shrink", f"pool unused: {window.pool_blocks_used} of {self.limit} blocks in use, "
                                                        f"{floor} needed by the running requests, nobody waits")
        return self._move(self.limit, "hold", "nobody waits")

    def _move(self, limit: int, move: str, reason: str) -> PoolMove:
        self.limit = int(limit)
        return PoolMove(self.limit, move, reason)
