"""Group engine iterations into timeline windows as a run goes (torch-free; results/timeline.py says what a window holds).

`TimelineRecorder.observe(stats, now, output_tokens)` takes each iteration's `IterationStats`
(or anything with its fields: the simulator makes the same ones), the runner's clock after the
step, and the output tokens the step produced; `pool_blocks_needed`, when given (the
scheduler's, O(running)), is read when a window closes rather than every iteration. It closes a
window after `window_steps`
iterations or `window_s` seconds, whichever comes first (a few long prefills must not blind a
controller for seconds), and returns it, so a controller can act on it. `note_move` attaches the controller's
move to the window it acted on; `close` flushes a last partial window.

Left out: deciding moves (planner/pool_controller.py).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from results.timeline import MOVES, TimelineWindow


class TimelineRecorder:
    def __init__(self, start: float, window_steps: int = 16, window_s: float = float("inf"),
                 pool_blocks_needed: Callable[[], int] | None = None):
        if window_steps < 1 or not window_s > 0:
            raise ValueError(f"windows need at least one step and a positive length, got {window_steps}, {window_s}")
        self.start, self.window_steps, self.window_s = start, window_steps, window_s
        self.pool_blocks_needed = pool_blocks_needed
        self.windows: list[TimelineWindow] = []
        self._began = start
        self._pending: list[Any] = []
        self._tokens = 0

    def observe(self, stats: Any, now: float, output_tokens: int) -> TimelineWindow | None:
        self._pending.append(stats)
        self._tokens += output_tokens
        self._last = now
        full = len(self._pending) >= self.window_steps or now - self._began >= self.window_s
        return self._close(now) if full else None

    def _close(self, now: float) -> TimelineWindow:
        steps, last = self._pending, self._pending[-1]
        compute = sum(s.compute_s for s in steps)
        stall = sum(s.stall_s for s in steps)
        duration = max(0.0, now - self._began)
        window = TimelineWindow(
            t_s=now - self.start, duration_s=duration, num_steps=len(steps), pool_limit_blocks=int(last.pool_limit_blocks),
            pool_blocks_used=max(int(s.pool_blocks_used) for s in steps),
            device_blocks_used=max(int(s.device_blocks_used) for s in steps),
            running=int(last.num_running), waiting=int(last.num_waiting), preempted=sum(int(s.num_preempted) for s in steps),
            stall_fraction=stall / (compute + stall) if compute + stall > 0 else 0.0,
            output_tok_s=self._tokens / duration if duration > 0 else 0.0,
            waiting_blocks=int(getattr(last, "waiting_blocks", 0)),
            pool_blocks_needed=int(self.pool_blocks_needed()) if self.pool_blocks_needed is not None else 0)
        self.windows.append(window)
        self._began, self._pending, self._tokens = now, [], 0
        return window

    def note_move(self, move: str, reason: str) -> None:
        """The controller's move at the end of the last closed window."""
        if move not in MOVES:
            raise ValueError(f"unknown move '{move}' (one of {', '.join(MOVES)})")
        if self.windows:
            self.windows[-1] = dataclasses.replace(self.windows[-1], move=move, reason=reason)

    def close(self) -> list[dict[str, Any]]:
        """Flush a last partial window; the timeline as the record stores it."""
        if self._pending:
            self._close(self._last)
        return [w.to_dict() for w in self.windows]


class PoolControl:
    """Feed each iteration to a `TimelineRecorder`; at each closed window let the controller move the pool limit.

    `controller` is a `planner.pool_controller.PoolController` (or None: the timeline only);
    `set_limit(blocks)` applies a new limit to the engine (the pie runner's `LLMEngine.set_pool_limit`,
    the simulator's block manager). Used by every runner that steps an engine, so a controller
    acts on real and simulated runs alike.
    """

    def __init__(self, recorder: TimelineRecorder, controller: Any = None, set_limit: Any = None):
        if controller is not None and set_limit is None:
            raise ValueError("a controller needs set_limit")
        self.recorder, self.controller, self.set_limit = recorder, controller, set_limit
        if controller is not None:
            set_limit(controller.limit)

    def after_step(self, stats: Any, now: float, output_tokens: int) -> None:
        window = self.recorder.observe(stats, now, output_tokens)
        if window is None or self.controller is None:
            return
        move = self.controller.decide(window)
        if move.limit != window.pool_limit_blocks:
            self.set_limit(move.limit)
        self.recorder.note_move(move.move, move.reason)
