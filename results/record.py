"""`RunRecord`: one benchmark run, self-describing and versioned (torch-free).

On disk a record is a JSON-lines file: a header line (who, what, where, how), one line per
finished request (flushed as it finishes), and a summary line last. A file without a summary
line is an interrupted run: it loads as `complete=False` with the requests it finished.

`parse_record` is the one way a record's text is read: every line is checked against its schema
(pie_core/json_fields.py: types, signs, finiteness, nesting) and across fields (a request's TTFT
is not after its end), and any problem is one `BadInput` naming the file, the line and the field.
Only a torn last line (a run killed mid-write) is forgiven: the run is then incomplete.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pie_core.errors import BadInput
from pie_core.json_fields import NON_NEGATIVE, Where, number, parse_json_text, read_dataclass

SCHEMA_VERSION = 1
HINT = "a record is written by `pie bench`; restore the file, or move it out of the results directory"
_SECONDS = ("arrival_s", "ttft_s", "e2el_s", "itl_s", "sent_s")
REQUEST_BOUNDS = {name: NON_NEGATIVE for name in ("prompt_len", "output_len", "output_token_ids", *_SECONDS)}


@dataclass(frozen=True)
class RequestSample:
    """Timings of one request, in seconds from the start of the run (vLLM's definitions)."""

    request_id: str
    prompt_len: int
    output_len: int  # tokens actually generated
    arrival_s: float  # when the request arrived, seconds after the run started (its release may be later)
    ttft_s: float | None  # first token time minus release (arrival, or when a --max-concurrency slot freed)
    e2el_s: float | None  # last token time minus release
    itl_s: tuple[float, ...] = ()  # gaps between consecutive output tokens (output_len - 1 of them)
    success: bool = True
    error: str | None = None
    output_token_ids: tuple[int, ...] | None = None  # only with --save-outputs
    sent_s: float | None = None  # when the runner actually handed it to the backend (trace replay checks this)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: Where | None = None) -> "RequestSample":
        where = where or Where("request", HINT)
        sample = read_dataclass(cls, data, where, REQUEST_BOUNDS)
        if sample.ttft_s is not None and sample.e2el_s is not None and sample.ttft_s > sample.e2el_s + 1e-9:
            raise where.at("ttft_s").error(f"({sample.ttft_s:g} s) is after the request's end, e2el_s ({sample.e2el_s:g} s)")
        return sample


@dataclass(frozen=True)
class RunHeader:
    run_id: str
    created_at: str  # ISO 8601, UTC
    model: str
    runner: str
    workload: dict[str, Any]  # name, synthetic flag, dataset path, num_prompts, lengths, arrivals, seed
    config: dict[str, Any]  # runner settings, or the plan for the pie runner
    fingerprint: dict[str, Any]  # machine: CPU, RAM, GPU, torch/CUDA versions
    git_commit: str | None = None
    label: str | None = None
    sweep_id: str | None = None
    sweep_point: dict[str, Any] | None = None  # e.g. {"pool_blocks": 256}
    pie_version: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def simulated(self) -> bool:
        """A `--runner sim` record: its times are predicted on a virtual clock, not measured."""
        return bool(self.config.get("simulated"))


def runner_label(header: RunHeader) -> str:
    """The runner as shown in tables: 'sim (simulated: preset h100-pcie)' for a simulated run."""
    return f"{header.runner} (simulated: {header.config.get('hardware_source')})" if header.simulated else header.runner


@dataclass(frozen=True)
class RunRecord:
    header: RunHeader
    requests: tuple[RequestSample, ...]
    summary: dict[str, Any] | None = None  # vLLM-named metrics; None when the run did not finish
    telemetry: dict[str, Any] = field(default_factory=dict)  # pie runner: stall fraction, link bytes, pool use
    timeline: tuple[dict[str, Any], ...] = ()  # per window of engine iterations (results/timeline.py)
    finished_at: str | None = None
    source: str = ""  # the file it was loaded from

    @property
    def run_id(self) -> str:
        return self.header.run_id

    @property
    def complete(self) -> bool:
        return self.summary is not None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def header_from_dict(data: dict[str, Any], source: str) -> RunHeader:
    where = Where(source, HINT)
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise where.at("schema_version").error("is missing: this is not a pie run record")
    if version > SCHEMA_VERSION:
        raise BadInput(f"{source}: field 'schema_version': schema version {version} is newer than this pie reads ({SCHEMA_VERSION})",
                       "upgrade pie to read it")
    if version < SCHEMA_VERSION:
        raise BadInput(f"{source}: field 'schema_version': schema version {version} is older than this pie reads ({SCHEMA_VERSION})",
                       "re-run the benchmark with this pie")
    header = read_dataclass(RunHeader, data, where)
    if not header.run_id.strip():
        raise where.at("run_id").error("is empty")
    return header


def _summary_line(entry: dict[str, Any], where: Where) -> tuple[dict[str, Any], dict[str, Any], list, str | None]:
    """(summary, telemetry, timeline, finished_at) of a summary line, each checked."""
    from results.timeline import TimelineWindow

    summary = entry.get("summary")
    if not isinstance(summary, dict):
        raise where.at("summary").expected("an object of metrics", summary)
    for key, value in summary.items():
        if isinstance(value, dict) or value is None:
            continue
        number(value, where.at("summary").at(key), NON_NEGATIVE, integer=key in ("completed", "failed"))
    telemetry = entry.get("telemetry", {})
    if not isinstance(telemetry, dict):
        raise where.at("telemetry").expected("an object", telemetry)
    timeline = entry.get("timeline") or []
    if not isinstance(timeline, list):
        raise where.at("timeline").expected("a list of windows", timeline)
    for index, window in enumerate(timeline):
        read_dataclass(TimelineWindow, window, where.at("timeline").at(index), _WINDOW_BOUNDS)
    finished_at = entry.get("finished_at")
    if finished_at is not None and not isinstance(finished_at, str):
        raise where.at("finished_at").expected("a time as text", finished_at)
    return summary, telemetry, timeline, finished_at


_WINDOW_BOUNDS = {name: NON_NEGATIVE for name in ("t_s", "duration_s", "num_steps", "pool_limit_blocks", "pool_blocks_used",
                                                  "device_blocks_used", "running", "waiting", "preempted", "stall_fraction",
                                                  "output_tok_s", "waiting_blocks", "pool_blocks_needed")}


def parse_record(text: str, source: str, path: str = "") -> RunRecord:
    """A record from its text (module docstring); `source` names it in messages ("record 'x.jsonl'")."""
    lines = text.splitlines()
    entries: list[tuple[int, Any]] = []
    for number_, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entries.append((number_, parse_json_text(line, f"{source} line {number_}", HINT)))
        except BadInput:
            if number_ == len(lines) and entries and not text.endswith("\n"):  # torn final line of an interrupted run
                break
            raise
    if not entries:
        raise BadInput(f"{source} is empty: not a pie run record", HINT)
    first = Where(f"{source} line {entries[0][0]}", HINT)
    if not isinstance(entries[0][1], dict):
        raise first.expected("a header object (this is not a pie run record)", entries[0][1])
    if entries[0][1].get("type") != "header":
        raise first.at("type").expected('"header" on a record\'s first line', entries[0][1].get("type"))
    header = header_from_dict({k: v for k, v in entries[0][1].items() if k != "type"}, f"{source} line {entries[0][0]}")
    requests, summary, telemetry, timeline, finished_at = [], None, {}, [], None
    for number_, entry in entries[1:]:
        where = Where(f"{source} line {number_}", HINT)
        if not isinstance(entry, dict):
            raise where.expected("an object", entry)
        kind = entry.get("type")
        if summary is not None:
            raise where.error(f"follows the summary line (a {kind!r} line after the run finished)")
        if kind == "request":
            requests.append(RequestSample.from_dict({k: v for k, v in entry.items() if k != "type"}, where))
        elif kind == "summary":
            summary, telemetry, timeline, finished_at = _summary_line(entry, where)
        else:
            raise where.at("type").expected("\"request\" or \"summary\"", kind)
    return RunRecord(header=header, requests=tuple(requests), summary=summary, telemetry=telemetry,
                     timeline=tuple(timeline), finished_at=finished_at, source=path)
