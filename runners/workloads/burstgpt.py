"""BurstGPT trace replay: arrival times and lengths from the trace's CSV, token ids seeded (torch-free).

BurstGPT (Wang et al., 2024) logs one request per row: `Timestamp` (seconds), `Model` (e.g.
ChatGPT, GPT-4), `Request tokens`, `Response tokens`, `Total tokens`, `Log Type`
(`Conversation log` / `API log`). It has no text, so prompts are token ids drawn seeded from the
model's vocabulary with the row's request length; the row's response length is the output
length (unless `--output-len` fixes it). Replayed arrival of a row = (its timestamp - the first
used row's timestamp) x `time_scale`: 0.1 replays ten times faster, 2 stretches gaps to double.

Selection, in order: `trace_model` / `trace_log_type` (case-insensitive; a filter needs its
column), the window [`trace_start`, `trace_start + trace_duration`) in the trace's own seconds,
then the first `num_prompts` rows. Rows it cannot use are counted by cause and named in one
summary line (the workload's first note), never dropped silently: unparsable fields, zero or
negative token counts, a timestamp earlier than the row before (unsorted), longer than the
model. A file with none usable, or without the needed columns, is `BadInput`.
Left out: the `Total tokens` column (it is request + response).
"""
from __future__ import annotations

import csv
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pie_core.errors import BadInput
from runners.base import BenchRequest
from runners.workloads.common import WorkloadSpec, read_text
from runners.workloads.tokenize import RESERVED_IDS

TIMESTAMP, MODEL, REQUEST, RESPONSE, LOG_TYPE = "Timestamp", "Model", "Request tokens", "Response tokens", "Log Type"
NEEDED = (TIMESTAMP, REQUEST, RESPONSE)
REJECT_CAUSES = ("unparsable", "zero or negative tokens", "unsorted timestamp", "longer than the model")
FILTER_CAUSES = ("other model", "other log type", "outside the window", "beyond --num-prompts")


@dataclass(frozen=True)
class TraceResult:
    requests: list[BenchRequest]
    num_rows: int
    rejected: Counter
    filtered: Counter
    first_timestamp: float

    def summary(self, path: Path) -> str:
        def causes(counter: Counter, names: tuple[str, ...]) -> str:
            return ", ".join(f"{counter[name]} {name}" for name in names if counter[name]) or "none"

        return (f"burstgpt {path.name}: {self.num_rows} rows, {len(self.requests)} replayed; rejected "
                f"{sum(self.rejected.values())} ({causes(self.rejected, REJECT_CAUSES)}); skipped "
                f"{sum(self.filtered.values())} ({causes(self.filtered, FILTER_CAUSES)})")


def _check_columns(header: list[str] | None, spec: WorkloadSpec, path: Path) -> None:
    names = set(header or ())
    needed = list(NEEDED) + ([MODEL] if spec.trace_model else []) + ([LOG_TYPE] if spec.trace_log_type else [])
    missing = [name for name in needed if name not in names]
    if missing:
        raise BadInput(f"'{path}' lacks the column(s) {', '.join(repr(m) for m in missing)} of a BurstGPT CSV",
                       f"give a file whose header has {', '.join(repr(n) for n in needed)} (BurstGPT's format)")


def read_burstgpt(path: Path, spec: WorkloadSpec, max_model_len: int, vocab_size: int) -> TraceResult:
    """The requests to replay, with arrivals set (module docstring)."""
    rows = csv.DictReader(read_text(path).splitlines())
    _check_columns(rows.fieldnames, spec, path)
    rng = np.random.default_rng(spec.seed)
    low = RESERVED_IDS if vocab_size > 2 * RESERVED_IDS else 0
    start = spec.trace_start if spec.trace_start is not None else -math.inf
    end = start + spec.trace_duration if spec.trace_duration is not None else math.inf
    rejected, filtered = Counter(), Counter()
    requests: list[BenchRequest] = []
    previous, first, num_rows = -math.inf, None, 0
    for row in rows:
        num_rows += 1
        try:
            timestamp = float(row[TIMESTAMP])
            prompt_len, output_len = int(float(row[REQUEST])), int(float(row[RESPONSE]))
            if not math.isfinite(timestamp):
                raise ValueError
        except (TypeError, ValueError):
            rejected["unparsable"] += 1
            continue
        if spec.trace_model and (row.get(MODEL) or "").strip().lower() != spec.trace_model.lower():
            filtered["other model"] += 1
            continue
        if spec.trace_log_type and (row.get(LOG_TYPE) or "").strip().lower() != spec.trace_log_type.lower():
            filtered["other log type"] += 1
            continue
        if prompt_len <= 0 or output_len <= 0:
            rejected["zero or negative tokens"] += 1
            continue
        if timestamp < previous:
            rejected["unsorted timestamp"] += 1
            continue
        previous = timestamp
        if not start <= timestamp < end:
            filtered["outside the window"] += 1
            continue
        output_len = spec.output_len or output_len
        if prompt_len + output_len > max_model_len:
            rejected["longer than the model"] += 1
            continue
        if len(requests) >= spec.num_prompts:
            filtered["beyond --num-prompts"] += 1
            continue
        first = timestamp if first is None else first
        ids = rng.integers(low, vocab_size, prompt_len)
        requests.append(BenchRequest(request_id=f"burstgpt-{len(requests)}", prompt=None,
                                     prompt_token_ids=tuple(int(t) for t in ids), output_len=output_len,
                                     arrival_s=(timestamp - first) * spec.time_scale))
    result = TraceResult(requests, num_rows, rejected, filtered, first if first is not None else 0.0)
    if not requests:
        window = "" if spec.trace_start is None and spec.trace_duration is None else \
            f" in the window [{spec.trace_start or 0:g}, {end:g}) s"
        raise BadInput(f"{result.summary(path)}: no usable rows{window}",
                       "widen --trace-start/--trace-duration, loosen --trace-model/--trace-log-type, or check the file")
    return result
