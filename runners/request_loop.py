"""The one request loop: release requests by arrival and concurrency, stamp token times, build samples.

Every runner that drives an engine in this process (the Pie engine, vLLM's offline engine, the
`transformers` reference) adapts its backend to `StepEngine` and hands it to `drive_engine`:

- release: a request is due at `max(start + arrival_s, when a concurrency slot freed)`, and is
  added then; a request that falls due during a step waits for that step, as it would in a
  server's queue, and that wait counts in its TTFT;
- token times: each `TokenDelta` carries the new tokens of one request; the engine's own
  timestamps are used when it gives them (`token_times`), else the clock when `step` returned;
- samples: `runners.base.sample_from_token_times` turns release and token times into TTFT
  (first token - release), ITL (gaps between tokens) and E2EL (last token - release), the one
  place those are defined; each sample goes to `on_request_done` (which flushes it to the
  record) as soon as its request ends.

A request the engine refuses (`add` raises) or fails (`TokenDelta.error`) is a failed sample and
the run goes on; an engine whose `step` raises fails every request in flight or still pending.

An engine that waits for events rather than computing them (the OpenAI-compatible client,
runners/openai_runner.py, whose streams run on a background thread) has `wait_step(timeout)`:
the loop passes the time until the next request is due, so a release is never held up by a
wait, and `None` when no release is pending.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from results.record import RequestSample
from runners.base import BenchRequest, RequestDone, failed_sample, sample_from_token_times
from runners.gc_freeze import frozen_heap

Clock = Callable[[], float]


class TokenDelta(NamedTuple):
    """What one request got from one step."""

    request_id: str
    token_ids: Sequence[int]  # the tokens this step produced for it (may be empty)
    finished: bool
    token_times: Sequence[float] | None = None  # clock time of each token, when the engine stamps them itself
    error: str | None = None  # the engine failed this request (it is finished)
    reported_len: int | None = None  # on the last delta: the backend's own token count (a server streaming text)


class StepEngine(Protocol):
    """What `drive_engine` needs from an engine: add a request, step, and a name for messages."""

    name: str

    def add(self, request: BenchRequest) -> None: ...

    def step(self) -> Sequence[TokenDelta]: ...


@dataclass
class _InFlight:
    request: BenchRequest
    release_time: float  # absolute clock time
    sent_time: float  # when `add` was called (>= release_time)
    token_times: list[float] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class DriveResult:
    duration_s: float  # first release to last completion
    num_steps: int


def drive_engine(engine: StepEngine, requests: Sequence[BenchRequest], max_concurrency: int | None,
                 save_outputs: bool, on_request_done: RequestDone, clock: Clock = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep, hold_for_arrivals: bool = False) -> DriveResult:
    """Release `requests` into `engine` by their arrivals, step it, and report each as it ends (module docstring).

    `hold_for_arrivals` (trace replay): when the next request falls due within twice the longest
    of the last eight steps' durations (steps vary: a prefill after decodes), wait for it and
    release it before starting a step, so a replayed request is handed over at its own time
    rather than after the step it would land in (the engine idles that long). A step right after a
    release holds that request's prefill, so it is judged by the last eight such steps too: with
    arrivals further apart than eight decode steps, the last prefill has left the window of all steps
    by then, and a step judged by decodes alone could run past the next arrival. One that fell due in
    the moment since the loop's release check is released before the step too.
    The start-up heap stays out of Python's cyclic GC while it runs (`frozen_heap`), for every runner alike.
    """
    with frozen_heap(), (_switch_interval(_REPLAY_SWITCH_INTERVAL_S) if hold_for_arrivals else contextlib.nullcontext()):
        return _drive(engine, requests, max_concurrency, save_outputs, on_request_done, clock, sleep, hold_for_arrivals)


# While a trace replays, a thread of the backend (vLLM's, in this process) may hold the interpreter when the loop's
# sleep ends; Python hands it over after its switch interval (5 ms by default), which the release then waits.
_REPLAY_SWITCH_INTERVAL_S = 0.0005


@contextlib.contextmanager
def _switch_interval(seconds: float) -> Iterator[None]:
    """`sys.setswitchinterval(seconds)` inside the block, the previous value restored after it."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def _drive(engine: StepEngine, requests: Sequence[BenchRequest], max_concurrency: int | None, save_outputs: bool,
           on_request_done: RequestDone, clock: Clock, sleep: Callable[[float], None], hold_for_arrivals: bool) -> DriveResult:
    limit = max_concurrency or math.inf
    pending = deque(sorted(requests, key=lambda r: r.arrival_s))
    in_flight: dict[str, _InFlight] = {}
    start = clock()
    slot_free_since = start  # when the number in flight last dropped below the limit
    first_release: float | None = None
    last_done: float | None = None
    num_steps = 0
    recent_steps_s: deque[float] = deque(maxlen=8)  # every step
    release_steps_s: deque[float] = deque(maxlen=8)  # steps right after a release (its prefill)
    released = False  # a request went in since the last step

    def finish(sample: RequestSample, at: float) -> None:
        nonlocal last_done
        last_done = at if last_done is None else max(last_done, at)
        on_request_done(sample)

    while pending or in_flight:
        # the clock is read for each release: a hand-over takes time (tokenizing, for vLLM), and what fell due
        # meanwhile goes out in the same pass
        while pending and start + pending[0].arrival_s <= clock() and len(in_flight) < limit:
            request = pending.popleft()
            release = max(start + request.arrival_s, slot_free_since)
            first_release = release if first_release is None else first_release
            sent = clock()
            try:
                engine.add(request)
            except Exception as err:  # noqa: BLE001 - a refused request is a failed sample, not a crash
                message = err.one_line() if hasattr(err, "one_line") else str(err)
                finish(failed_sample(request, f"{engine.name} refused the request: {message}"), clock())
                continue
            in_flight[request.request_id] = _InFlight(request, release, sent)
            released = True
            if len(in_flight) >= limit:
                slot_free_since = math.inf
        if not in_flight:
            if pending:
                sleep(max(0.0, start + pending[0].arrival_s - clock()))
            continue
        if hold_for_arrivals and pending and len(in_flight) < limit:
            due_in = start + pending[0].arrival_s - clock()
            longest = max(recent_steps_s, default=0.0)
            if released:
                longest = max(longest, max(release_steps_s, default=0.0))
            if due_in <= 2 * longest:  # due now (it fell due since the release check) or soon
                sleep(max(0.0, due_in))
                continue
        try:
            wait_step = getattr(engine, "wait_step", None)
            if wait_step is None:
                began = clock()
                deltas = engine.step()
                recent_steps_s.append(clock() - began)
                if released:
                    release_steps_s.append(recent_steps_s[-1])
                released = False
            else:
                due = start + pending[0].arrival_s - clock() if pending and len(in_flight) < limit else None
                deltas = wait_step(None if due is None else max(0.0, due))
        except Exception as err:  # noqa: BLE001 - the engine died: fail what is left, keep what finished
            at = clock()
            for state in in_flight.values():
                finish(failed_sample(state.request, f"{engine.name} engine failed: {err}"), at)
            for request in pending:
                finish(failed_sample(request, f"{engine.name} engine failed before release: {err}"), at)
            in_flight.clear()
            pending.clear()
            break
        num_steps += 1
        stamp = clock()
        for delta in deltas:
            state = in_flight.get(delta.request_id)
            if state is None:
                continue
            state.token_ids.extend(int(t) for t in delta.token_ids)
            state.token_times.extend(delta.token_times if delta.token_times is not None else [stamp] * len(delta.token_ids))
            if delta.finished or delta.error:
                del in_flight[delta.request_id]
                if len(in_flight) == limit - 1:
                    slot_free_since = stamp
                sample = (failed_sample(state.request, delta.error) if delta.error else
                          sample_from_token_times(state.request, start, state.release_time, state.token_times,
                                                  state.token_ids, save_outputs, output_len=delta.reported_len,
                                                  sent_time=state.sent_time))
                finish(sample, stamp)
    begin = first_release if first_release is not None else start
    end = last_done if last_done is not None else begin
    return DriveResult(duration_s=max(0.0, end - begin), num_steps=num_steps)
