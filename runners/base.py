"""The runner contract: what a benchmark hands a runner and what it gets back (torch-free).

A runner prepares a `RunnerSpec` once (`prepare`: every check that needs no run, and what the
run will use, as a `PreparedRun`), then runs it on `BenchRequest`s (already tokenized, each with
a scheduled release time) with a callback; it releases each request no earlier than its `arrival_s`,
honours `max_concurrency`, calls the callback with a `RequestSample` as each request finishes,
and counts failures as samples with `success=False` instead of raising. It returns a
`RunnerResult` with the benchmark duration, its effective settings and telemetry.

Also here, shared by every runner: `sample_from_token_times` (vLLM's TTFT/ITL/E2EL from
absolute token timestamps) and `peak_host_memory_bytes`.

Left out: the runners themselves (one module each) and the registry (runners/registry.py).
"""
from __future__ import annotations

import resource
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pie_core.errors import BadInput
from results.record import RequestSample


@dataclass(frozen=True)
class BenchRequest:
    request_id: str
    prompt: str | None  # text, when the workload has text
    prompt_token_ids: tuple[int, ...]  # always present (tokenized by the workload stage)
    output_len: int  # tokens to generate; runners force exactly this (ignore_eos / no eos)
    arrival_s: float = 0.0  # release time, seconds after the run starts

    def __post_init__(self) -> None:
        if not self.prompt_token_ids:
            raise BadInput(f"request {self.request_id} has an empty prompt", "every request needs at least one token")
        if self.output_len < 1:
            raise BadInput(f"request {self.request_id}: output_len must be at least 1, got {self.output_len}")
        if self.arrival_s < 0:
            raise BadInput(f"request {self.request_id}: arrival_s must be >= 0, got {self.arrival_s}")

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)


@dataclass(frozen=True)
class RunnerSpec:
    """What the CLI hands a runner."""

    model: str  # registry name or local Hugging Face directory
    dtype: str = "bfloat16"
    device: str = "cpu"
    seed: int = 0
    save_outputs: bool = False
    max_concurrency: int | None = None
    options: dict[str, Any] = field(default_factory=dict)  # runner-specific settings
    plan: Any = None  # the `pie tune` plan options["plan"] names, loaded once by the resolve step (runners/resolve.py)
    precise_arrivals: bool = False  # trace replay: hand each request over at its own time (drive_engine's hold_for_arrivals)

    def __post_init__(self) -> None:
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise BadInput(f"max_concurrency must be at least 1, got {self.max_concurrency}")


@dataclass(frozen=True)
class RunnerResult:
    duration_s: float  # benchmark wall time (first release to last completion)
    config: dict[str, Any] = field(default_factory=dict)  # effective settings
    telemetry: dict[str, Any] = field(default_factory=dict)  # pie: stall fraction, link bytes, pool use
    peak_device_memory_bytes: int | None = None
    peak_host_memory_bytes: int | None = None
    timeline: tuple[dict[str, Any], ...] = ()  # results/timeline.py windows, for runners that step an engine


RequestDone = Callable[[RequestSample], None]


@dataclass(frozen=True)
class PreparedRun:
    """A run a runner has validated once, before any record: its effective settings (kept in the record),
    the machine that runs it, and whatever the runner resolved for `run` (an engine config, a simulated
    target, a server's settings)."""

    spec: RunnerSpec
    config: dict[str, Any]
    fingerprint: dict[str, Any]
    state: Any = None


class Runner(Protocol):
    """`prepare` checks everything that can be checked without running (options, plan, weights, memory fit)
    and resolves it once; `run` runs the prepared run. Every runner has both; nothing is optional."""

    name: str

    def prepare(self, spec: RunnerSpec) -> PreparedRun: ...

    def run(self, prepared: PreparedRun, requests: Sequence[BenchRequest], on_request_done: RequestDone) -> RunnerResult: ...


def machine_fingerprint(device: str) -> dict[str, Any]:
    """The machine a run measures on (pie_core/fingerprint.py; torch for a GPU's name)."""
    from pie_core.fingerprint import collect_fingerprint

    return collect_fingerprint(device)


def sample_from_token_times(request: BenchRequest, run_start: float, release_time: float,
                            token_times: Sequence[float], output_token_ids: Sequence[int] | None,
                            save_outputs: bool, output_len: int | None = None, sent_time: float | None = None) -> RequestSample:
    """A successful sample from absolute clock times (`run_start`, `release_time`, `token_times` on one clock).

    The one definition of the latency metrics (vLLM's client-side ones): TTFT = first token -
    release, E2EL = last token - release, ITL = gaps between token times. Release is when the
    request was handed to the backend: its arrival, or later when `--max-concurrency` held it
    back until a slot freed (runners/request_loop.py). `output_len` defaults to the number of
    token times (a server that streams text chunks says its own count). `sent_time` is when the
    runner really handed the request over (on the same clock), kept as `sent_s` after the run start.
    """
    if not token_times:
        return failed_sample(request, "no tokens were generated")
    times = list(token_times)
    assert run_start <= release_time <= times[0], "release must follow the run start and precede the first token"
    return RequestSample(
        request_id=request.request_id, prompt_len=request.prompt_len, output_len=len(times) if output_len is None else output_len,
        arrival_s=request.arrival_s, ttft_s=times[0] - release_time, e2el_s=times[-1] - release_time,
        itl_s=tuple(b - a for a, b in zip(times, times[1:])), success=True, error=None,
        output_token_ids=tuple(int(t) for t in output_token_ids) if save_outputs and output_token_ids else None,
        sent_s=None if sent_time is None else sent_time - run_start)


def failed_sample(request: BenchRequest, error: str) -> RequestSample:
    return RequestSample(request_id=request.request_id, prompt_len=request.prompt_len, output_len=0,
                         arrival_s=request.arrival_s, ttft_s=None, e2el_s=None, success=False, error=error)


def peak_host_memory_bytes() -> int:
    """Peak resident set size of this process (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
