"""The engine loop of `pie serve`: one thread owns the `LLMEngine`, steps it while it has work, and closes it.

Which thread: the one that built the engine and made the process's first parallel torch call, which for
`pie serve` is the main thread (the HTTP server runs on a second one: runners/serve/server.py). PyTorch's
OpenMP keeps one thread team per thread that calls into it; once two teams exist, the process manages more
OpenMP threads than it has cores and libgomp stops spinning at its barriers, so every parallel region pays a
sleep and a wake-up. Measured on 2 cores (Xeon AMX, torch AVX512; OPT-125m, bf16, 48 requests 128/128):
the engine stepped on a second thread after a parallel op on the main thread ran at 0.73x the tokens per
second, with 1.5 instead of 2.0 cores busy (benchmarks/bench_serve_thread.py).

New requests and aborts reach it through one queue (`submit`, `abort`: any thread). After each step
(and after a batch of commands that produced events) it hands every request's new tokens over in ONE
call, `hand_off(events)`, which the server turns into one `call_soon_threadsafe` on the HTTP loop:
one hand-off per step, not one per token. Each step also feeds the metrics and the pool control of
`pie bench` (runners/timeline.py `PoolControl`: the timeline windows and, with `--adaptive`, the pool
controller), and each closed window is logged as one line. Only the last window is kept: a server
runs for days.

Failures stay with their request: `add_request` refusing one (`BadInput`: a 400) or raising (a 500)
fails that request alone; an exception inside a step fails the requests that were in the engine
(their blocks are freed by aborting them) and the loop goes on with the next request.

Left out: HTTP, text, and deciding pool moves (planner/pool_controller.py).
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pie_core.errors import BadInput

IDLE_POLL_S = 0.2  # how often an idle engine thread looks at its stop flag


@dataclass(frozen=True)
class TokenEvent:
    """What happened to one request in one step: its new tokens, or its end (`error` with an HTTP `status`)."""

    request_id: str
    token_ids: tuple[int, ...] = ()
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    error: str | None = None
    status: int = 500


@dataclass
class _Live:
    arrival: float
    num_prompt_tokens: int
    seen: int = 0
    last_time: float | None = None


class EngineLoop:
    def __init__(self, engine: Any, metrics: Any, control: Any, log: Callable[[str], None]):
        self.engine, self.metrics, self.control, self.log = engine, metrics, control, log
        self.hand_off: Callable[[list[TokenEvent]], None] | None = None  # set by connect(), before any request
        self.commands: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self.live: dict[str, _Live] = {}
        self.thread: threading.Thread | None = None  # only with run_in_thread()
        self.started = time.perf_counter()

    # --- any thread ---------------------------------------------------------------------------
    def connect(self, hand_off: Callable[[list[TokenEvent]], None]) -> None:
        """Where each step's events go (the HTTP loop's `call_soon_threadsafe`); before the first request arrives."""
        self.hand_off = hand_off

    def run(self) -> None:
        """Step the engine until `stop()`, on the calling thread (the one that built the engine), then close it."""
        try:
            self._run()
        finally:
            self.engine.close()

    def run_in_thread(self) -> None:
        """`run()` on a thread of its own, for an engine whose builder's thread serves HTTP (tests); slower on a CPU."""
        self.thread = threading.Thread(target=self.run, name="pie-serve-engine", daemon=True)
        self.thread.start()

    def submit(self, request_id: str, prompt_token_ids: list[int], params: Any, arrival: float) -> None:
        self.commands.put(("add", request_id, prompt_token_ids, params, arrival))

    def abort(self, request_id: str, error: str | None = None) -> None:
        """Abort a request; its end comes back as an event ("abort", with `error` when the server ends it)."""
        self.commands.put(("abort", request_id, error))

    def stop(self, timeout_s: float = 120.0) -> None:
        """Leave the loop after the step under way (`run()` then closes the engine); waits for a thread of its own."""
        self.commands.put(("stop",))
        if self.thread is not None:
            self.thread.join(timeout_s)
            if self.thread.is_alive():
                self.log(f"pie serve: the engine did not stop within {timeout_s:g} s")

    # --- the engine thread --------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            commands = []
            if not self.engine.has_unfinished_requests():  # idle: wait for work (and look at the stop flag)
                try:
                    commands.append(self.commands.get(timeout=IDLE_POLL_S))
                except queue.Empty:
                    pass
            while True:
                try:
                    commands.append(self.commands.get_nowait())
                except queue.Empty:
                    break
            events: list[TokenEvent] = []
            stop = False
            for command in commands:
                if command[0] == "stop":
                    stop = True
                else:
                    events.extend(self._apply(command))
            stepped = False
            if not stop and self.engine.has_unfinished_requests():
                events.extend(self._step())
                stepped = True
            if commands and not stepped:
                self._refresh_blocks()
            if events and self.hand_off is not None:
                self.hand_off(events)
            if stop:
                return

    def _apply(self, command: tuple) -> list[TokenEvent]:
        if command[0] == "add":
            _, request_id, prompt, params, arrival = command
            try:
                self.engine.add_request(request_id, prompt, params, arrival_time=arrival)
            except BadInput as err:
                return [TokenEvent(request_id, finished=True, finish_reason="error", error=err.one_line(), status=400)]
            except Exception as err:  # noqa: BLE001 - this request fails, the server serves on
                return [TokenEvent(request_id, finished=True, finish_reason="error", error=f"{type(err).__name__}: {err}")]
            self.live[request_id] = _Live(arrival, len(prompt))
            return []
        _, request_id, error = command
        if self.engine.abort_request(request_id) is None:
            return []
        self.live.pop(request_id, None)
        self.metrics.finished("abort", 0.0, None)
        return [TokenEvent(request_id, finished=True, finish_reason="abort", error=error, status=503)]

    def _refresh_blocks(self) -> None:
        manager, scheduler = self.engine.block_manager, self.engine.scheduler
        self.metrics.blocks(manager.device_used, manager.pool_used, manager.pool_limit_blocks, len(scheduler.running),
                            len(scheduler.waiting))

    def _step(self) -> list[TokenEvent]:
        num_stats = len(self.engine.stats)
        try:
            outputs = self.engine.step()
        except Exception as err:  # noqa: BLE001 - fail what was in the engine, keep serving
            return self._fail_all(f"{type(err).__name__}: {err}")
        events, num_tokens = [], 0
        for output in outputs:
            live = self.live.get(output.request_id)
            if live is None:
                continue
            new_ids, new_times = output.output_token_ids[live.seen:], output.token_times[live.seen:]
            self.metrics.tokens(live.arrival, live.seen == 0, live.num_prompt_tokens, new_times, live.last_time)
            live.seen, num_tokens = len(output.output_token_ids), num_tokens + len(new_ids)
            live.last_time = new_times[-1] if new_times else live.last_time
            if output.finished:
                del self.live[output.request_id]
                self.metrics.finished(output.finish_reason or "error", live.arrival, live.last_time)
            events.append(TokenEvent(output.request_id, tuple(new_ids), output.finished, output.finish_reason,
                                     output.error))
        if len(self.engine.stats) > num_stats:
            self._observe(self.engine.stats[-1], num_tokens)
        return events

    def _observe(self, stats: Any, num_tokens: int) -> None:
        self.metrics.step(stats)
        recorder = self.control.recorder
        closed = len(recorder.windows)
        self.control.after_step(stats, time.perf_counter(), num_tokens)
        if len(recorder.windows) == closed:
            return
        window = recorder.windows[-1]
        if self.engine.pool_limit_blocks != window.pool_limit_blocks:
            self.metrics.move(window.move or "move")
        move = f" -> {window.move} {self.engine.pool_limit_blocks} ({window.reason})" if window.move else ""
        self.log(f"t={window.t_s:7.1f}s  {window.num_steps:3d} steps  running {window.running:3d}  waiting {window.waiting:3d}  "
                 f"device {window.device_blocks_used:5d}  pool {window.pool_blocks_used:5d}/{window.pool_limit_blocks:5d}  "
                 f"stall {window.stall_fraction:4.0%}  {window.output_tok_s:7.1f} tok/s{move}")
        del recorder.windows[:-1]

    def _fail_all(self, error: str) -> list[TokenEvent]:
        self.log(f"engine step failed: {error}; failing the {len(self.live)} request(s) in the engine")
        events = []
        for request_id in list(self.live):
            try:
                self.engine.abort_request(request_id)
            except Exception as err:  # noqa: BLE001 - report, keep going
                self.log(f"could not abort {request_id} after the failure: {type(err).__name__}: {err}")
            del self.live[request_id]
            self.metrics.finished("error", 0.0, None)
            events.append(TokenEvent(request_id, finished=True, finish_reason="error", error=error))
        return events
