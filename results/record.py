"""`RunRecord`: one benchmark run, self-describing and versioned (torch-free).

On disk a record is a JSON-lines file: a header line (who, what, where, how), one line per
finished request (flushed as it finishes), and a summary line last. A file without a summary
line is an interrupted run: it loads as `complete=False` with the requests it finished.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pie_core.errors import BadInput

SCHEMA_VERSION = 1


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
    def from_dict(cls, data: dict[str, Any]) -> "RequestSample":
        data = dict(data)
        data.pop("type", None)
        data["itl_s"] = tuple(data.get("itl_s") or ())
        if data.get("output_token_ids") is not None:
            data["output_token_ids"] = tuple(data["output_token_ids"])
        return cls(**data)


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
    version = data.get("schema_version")
    if not isinstance(version, int):
        raise BadInput(f"{source} is not a pie run record (no schema version)", "pass a file written by `pie bench`")
    if version > SCHEMA_VERSION:
        raise BadInput(f"{source} has schema version {version}, newer than this pie reads ({SCHEMA_VERSION})",
                       "upgrade pie to read it")
    if version < SCHEMA_VERSION:
        raise BadInput(f"{source} has old schema version {version}; this pie reads {SCHEMA_VERSION}",
                       "re-run the benchmark with this pie")
    fields = {f.name for f in dataclasses.fields(RunHeader)}
    try:
        return RunHeader(**{k: v for k, v in data.items() if k in fields})
    except TypeError as err:
        raise BadInput(f"{source} has an invalid header ({err})", "pass a file written by `pie bench`") from None
