"""Run records -> pandas DataFrames (torch-free): one row per run, and one row per request.

`runs_frame`: header fields (run_id, created_at, model, runner, label, git_commit, sweep_id,
complete, ...), the sweep point as `sweep.<key>`, workload fields as `workload.<key>`, config
as `config.<key>` (the header's settings, then the effective ones the runner reported), the
summary metrics under their vLLM names, and telemetry as `telemetry.<key>`.
`requests_frame`: run_id, runner, label, sweep point, and every `RequestSample` field plus
`tpot_s`; `itl_s` stays a tuple per row (explode it for per-gap analysis).

Left out: statistics across runs (results/compare.py) and plotting (report rendering).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import pandas as pd

from results.metrics import tpot_s
from results.record import RequestSample, RunRecord

HEADER_COLUMNS = ("run_id", "created_at", "model", "runner", "label", "git_commit", "sweep_id", "pie_version")


def _scalar(value: Any) -> Any:
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def run_row(record: RunRecord) -> dict[str, Any]:
    header = record.header
    row: dict[str, Any] = {name: getattr(header, name) for name in HEADER_COLUMNS}
    row["complete"] = record.complete
    row["num_requests_recorded"] = len(record.requests)
    row["finished_at"] = record.finished_at
    row["source"] = record.source
    for key, value in (header.sweep_point or {}).items():
        row[f"sweep.{key}"] = _scalar(value)
    for key, value in header.workload.items():
        row[f"workload.{key}"] = _scalar(value)
    effective = record.telemetry.get("effective_config") or {}
    for key, value in {**header.config, **effective}.items():
        row[f"config.{key}"] = _scalar(value)
    for key, value in (record.summary or {}).items():
        row[key] = _scalar(value)
    for key, value in record.telemetry.items():
        if key != "effective_config":
            row[f"telemetry.{key}"] = _scalar(value)
    return row


def runs_frame(records: Iterable[RunRecord]) -> pd.DataFrame:
    """One row per run (see module docstring); empty frame with the header columns when no records."""
    rows = [run_row(record) for record in records]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=[*HEADER_COLUMNS, "complete"])


def requests_frame(records: Iterable[RunRecord]) -> pd.DataFrame:
    """One row per request across the given runs."""
    rows = []
    for record in records:
        point = record.header.sweep_point or {}
        for sample in record.requests:
            row: dict[str, Any] = {"run_id": record.run_id, "runner": record.header.runner, "label": record.header.label}
            row.update({f"sweep.{k}": v for k, v in point.items()})
            row.update(dataclasses.asdict(sample))
            row["tpot_s"] = tpot_s(sample)
            rows.append(row)
    columns = ["run_id", "runner", "label", *[f.name for f in dataclasses.fields(RequestSample)], "tpot_s"]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)
