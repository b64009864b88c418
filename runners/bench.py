"""Benchmark orchestration: workload -> arrivals -> runner -> record and metrics; sweeps; interrupts.

`run_bench(settings, store, ...)` loads the workload, sets release times, writes the record
header (machine fingerprint, git commit, workload description, the runner's effective
settings), streams each finished request into the record, then writes the vLLM-named summary
and the runner's telemetry. On Ctrl-C the record keeps the finished requests without a
summary (it loads as incomplete) and `BenchInterrupted` says where it is. A run that fails or is
interrupted before any request finished leaves no record (it measured nothing); one where every
request failed keeps its record and `check_failures` makes it a `RuntimeFailure` with the first
error (some failed: a note of how many, and why).

A sweep (`--sweep request_rate=1,2,4`, `--sweep pool_blocks=0,256`) expands one settings
object into one per point; each point is a separate record under a common `sweep_id`;
`prepare_points` has every point's workload checked and its run prepared before the first one runs.

Left out: rendering (pie_cli/bench_cmd.py) and comparing runs (results/compare.py).
"""
from __future__ import annotations

import dataclasses
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pie_core.device_probe import check_device
from pie_core.errors import BadInput, RuntimeFailure, suggest
from pie_core.formatting import round_up
from pie_core.inputs import OptionType
from pie_core.json_files import to_jsonable
from results.metrics import compute_metrics
from results.record import RequestSample, RunHeader
from results.store import ResultsStore, git_commit, new_run_id, utc_now
from runners.arrivals import ArrivalSpec, assign_arrivals
from runners.base import PreparedRun, RunnerSpec
from runners.engine.settings import sweep_keys
from runners.registry import get_runner
from runners.workloads import OWN_ARRIVALS, WorkloadInfo, WorkloadSpec, load_workload

ADAPTIVE_RUNNERS = ("pie", "sim")
MAX_ARRIVAL_SPAN_S = 86400.0  # Poisson/gamma arrivals spread over more than a day are a mistyped rate
# sweep key -> where it goes: a workload or arrival field, a settings field, or (every engine setting under its
# own name and its aliases, runners/engine/settings.py) a runner option
SWEEP_TARGETS = {
    "request_rate": ("arrivals", "request_rate", float), "burstiness": ("arrivals", "burstiness", float),
    "max_concurrency": ("settings", "max_concurrency", int), "num_prompts": ("workload", "num_prompts", int),
    "output_len": ("workload", "output_len", int),
    **{key: ("options", name, kind) for key, (name, kind) in sweep_keys().items()},
    "batch_size": ("options", "batch_size", int),  # the hf runner's batch (the simulator refuses it)
}


@dataclass(frozen=True)
class BenchSettings:
    model: str
    workload: WorkloadSpec
    runner: str = "pie"
    arrivals: ArrivalSpec = field(default_factory=ArrivalSpec)
    dtype: str = "bfloat16"  # resolved: every runner of a comparison gets the same one
    device: str = "cpu"
    seed: int = 0
    dtype_requested: str | None = None  # what --dtype said ("auto" or a name), kept in the record
    max_concurrency: int | None = None
    save_outputs: bool = False
    runner_options: dict[str, Any] = field(default_factory=dict)
    goodput_slos_ms: dict[str, float] = field(default_factory=dict)
    label: str | None = None
    plan: Any = None  # the plan runner_options["plan"] names, loaded once (runners/resolve.py)

    def __post_init__(self) -> None:
        if self.workload.name == "burstgpt" and not math.isinf(self.arrivals.request_rate):
            raise BadInput("--request-rate does not apply to trace replay: the trace sets the arrival times",
                           "drop --request-rate; use --time-scale to compress or stretch the trace")
        rate, count = self.arrivals.request_rate, self.workload.num_prompts
        if self.workload.name not in OWN_ARRIVALS and math.isfinite(rate) and (count - 1) / rate > MAX_ARRIVAL_SPAN_S:
            raise BadInput(f"--request-rate {rate:g} spreads {count} requests over about {(count - 1) / rate / 86400:,.0f} days",
                           f"give at least {round_up((count - 1) / MAX_ARRIVAL_SPAN_S)} requests per second (a day's span), "
                           "or leave it out to send everything at once")
        if self.label is not None and (not self.label.strip() or any(c in self.label for c in ",=")):
            raise BadInput(f"--label {self.label!r} cannot be selected later (selectors are label=NAME, comma-separated)",
                           "give a non-empty label without ',' or '=', e.g. --label main")
        adaptive = self.runner_options.get("adaptive")
        if adaptive is not None and OptionType(bool).parse(f"{self.runner} runner", "adaptive", adaptive) \
                and self.runner not in ADAPTIVE_RUNNERS:
            raise BadInput(f"--adaptive sizes the Pie engine's pool; runner '{self.runner}' has none",
                           f"use --runner {' or --runner '.join(ADAPTIVE_RUNNERS)}, or drop --adaptive")

    def spec(self) -> RunnerSpec:
        return RunnerSpec(model=self.model, dtype=self.dtype, device=self.device, seed=self.seed,
                          save_outputs=self.save_outputs, max_concurrency=self.max_concurrency,
                          options=dict(self.runner_options), precise_arrivals=self.workload.name == "burstgpt",
                          plan=self.plan)


@dataclass(frozen=True)
class Sweep:
    key: str
    values: tuple[Any, ...]
    sweep_id: str


@dataclass(frozen=True)
class BenchOutcome:
    record_path: Path
    run_id: str
    summary: dict[str, Any]
    telemetry: dict[str, Any]
    config: dict[str, Any]
    workload: WorkloadInfo
    sweep_point: dict[str, Any] | None = None
    timeline: tuple[dict[str, Any], ...] = ()
    first_error: str | None = None  # of the first failed request, if any failed


class BenchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: the record at `record_path` keeps `num_requests` finished requests
    (`record_path` is None when none had finished: no record is kept)."""

    def __init__(self, record_path: Path | None, num_requests: int):
        super().__init__(f"interrupted; {num_requests} finished request(s) kept in {record_path} (marked incomplete)"
                         if record_path else "interrupted before any request finished; no record was kept")
        self.record_path = record_path
        self.num_requests = num_requests


def parse_sweep(text: str) -> Sweep:
    """'pool_blocks=0,256,512' -> Sweep('pool_blocks', (0, 256, 512), new id)."""
    key, sep, values_text = text.partition("=")
    key = key.strip().lower().replace("-", "_")
    if not sep or not values_text.strip():
        raise BadInput(f"sweep '{text}' is not NAME=V1,V2,...", "e.g. --sweep request_rate=1,2,4 or --sweep pool_blocks=0,256")
    if key not in SWEEP_TARGETS:
        raise BadInput(f"cannot sweep '{key}'", suggest(key, SWEEP_TARGETS))
    convert = SWEEP_TARGETS[key][2]
    values = []
    for item in values_text.split(","):
        item = item.strip()
        try:
            values.append(float("inf") if item.lower() == "inf" and convert is float else convert(item))
        except ValueError:
            raise BadInput(f"sweep value '{item}' for {key} is not a {convert.__name__}", f"e.g. --sweep {key}=1,2,4") from None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Sweep(key, tuple(values), f"sweep-{stamp}-{secrets.token_hex(3)}")


def apply_point(settings: BenchSettings, key: str, value: Any) -> BenchSettings:
    """Settings for one sweep point (validated like the flags they replace)."""
    where, name, _ = SWEEP_TARGETS[key]
    if where == "arrivals":
        return dataclasses.replace(settings, arrivals=dataclasses.replace(settings.arrivals, **{name: value}))
    if where == "workload":
        return dataclasses.replace(settings, workload=dataclasses.replace(settings.workload, **{name: value}))
    if where == "settings":
        return dataclasses.replace(settings, **{name: value})
    return dataclasses.replace(settings, runner_options={**settings.runner_options, name: value})


def expand_sweep(settings: BenchSettings, sweep: Sweep | None) -> list[tuple[dict[str, Any] | None, BenchSettings]]:
    if sweep is None:
        return [(None, settings)]
    return [({sweep.key: value}, apply_point(settings, sweep.key, value)) for value in sweep.values]


def prepare_points(points: list[tuple[dict[str, Any] | None, BenchSettings]]) -> list[PreparedRun]:
    """Every sweep point's workload checked and its run prepared (the runner's `prepare`: options, plan,
    weights, memory fit) before the first point runs, so a bad value at point 3 fails before points 1
    and 2 are measured. Each point is prepared once; `run_bench` runs what was prepared."""
    prepared: list[PreparedRun] = []
    checked: list[Any] = []
    for point, settings in points:
        workload = (settings.workload, settings.arrivals.request_rate)
        try:
            if len(points) > 1 and workload not in checked:  # a single run loads its workload once, in run_bench
                checked.append(workload)
                load_workload(*workload)
            prepared.append(get_runner(settings.runner).prepare(settings.spec()))
        except BadInput as err:
            if point is None:
                raise
            where = ", ".join(f"{key}={value}" for key, value in point.items())
            raise BadInput(f"sweep point {where}: {err.message}", err.hint) from None
    return prepared


def check_failures(outcome: BenchOutcome) -> str | None:
    """None when every request succeeded; a note of how many failed and the first error when some did;
    `RuntimeFailure` (exit 1) when all did (the record stays, complete: the failures are what happened)."""
    failed, completed = outcome.summary.get("failed") or 0, outcome.summary.get("completed") or 0
    if not failed:
        return None
    if not completed:
        raise RuntimeFailure(f"all {failed} requests failed (each is in {outcome.record_path}); the first: {outcome.first_error}")
    return f"{failed} of {failed + completed} requests failed; the first: {outcome.first_error}"


def pie_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pie")
    except PackageNotFoundError:
        return ""


def run_bench(settings: BenchSettings, store: ResultsStore, on_request_done: Callable[[RequestSample], None] | None = None,
              on_start: Callable[[WorkloadInfo, dict[str, Any], Path], None] | None = None,
              sweep: Sweep | None = None, sweep_point: dict[str, Any] | None = None,
              prepared: PreparedRun | None = None) -> BenchOutcome:
    """Run one benchmark and store its record; see the module docstring. `prepared`: the run as
    `prepare_points` prepared it (prepared here when not given)."""
    runner = get_runner(settings.runner)
    check_device(settings.device)
    if prepared is None:
        prepared = runner.prepare(settings.spec())
    config = {**prepared.config, "max_concurrency": settings.max_concurrency, "save_outputs": settings.save_outputs,
              "dtype_requested": settings.dtype_requested or settings.dtype}
    requests, info = load_workload(settings.workload, settings.arrivals.request_rate)
    if info.arrivals is None:
        requests = assign_arrivals(requests, settings.arrivals)
        arrivals = settings.arrivals.describe()
    else:  # the workload timed its own requests (trace replay, phases)
        arrivals = {"arrivals": info.arrivals, "request_rate": None if math.isinf(settings.arrivals.request_rate)
                    else settings.arrivals.request_rate, "time_scale": settings.workload.time_scale}
    workload = {**info.to_dict(), **arrivals, "goodput_slos_ms": dict(settings.goodput_slos_ms) or None}
    header = RunHeader(run_id=new_run_id(runner.name), created_at=utc_now(), model=settings.model, runner=runner.name,
                       workload=workload, config=to_jsonable(config),
                       fingerprint=prepared.fingerprint,
                       git_commit=git_commit(Path(__file__).parent),
                       label=settings.label, sweep_id=sweep.sweep_id if sweep else None, sweep_point=sweep_point,
                       pie_version=pie_version())
    writer = store.writer(header)
    samples: list[RequestSample] = []

    def done(sample: RequestSample) -> None:
        writer.add(sample)
        samples.append(sample)
        if on_request_done is not None:
            on_request_done(sample)

    if on_start is not None:
        on_start(info, header.config, writer.path)
    try:
        result = runner.run(prepared, requests, done)
    except BaseException as err:
        if samples:
            writer.close()  # the record stays, incomplete, with what finished
        else:
            writer.discard()  # nothing was measured: a run that never finished a request leaves no record
        if isinstance(err, KeyboardInterrupt):
            raise BenchInterrupted(writer.path if samples else None, len(samples)) from None
        raise
    summary = compute_metrics(samples, result.duration_s, settings.goodput_slos_ms or None,
                              result.peak_device_memory_bytes, result.peak_host_memory_bytes)
    telemetry = {**result.telemetry, "effective_config": result.config}
    writer.finish(summary, telemetry, result.timeline)
    return BenchOutcome(record_path=writer.path, run_id=header.run_id, summary=summary, telemetry=telemetry,
                        config=result.config, workload=info, sweep_point=sweep_point,
                        timeline=tuple(result.timeline), first_error=next((s.error for s in samples if not s.success), None))
