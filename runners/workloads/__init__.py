"""Workloads: `load_workload(spec)` -> (BenchRequests, WorkloadInfo), from a dataset file or synthetic.

`--workload sharegpt|alpaca` read `--dataset-path` when given and fall back to a labelled
synthetic distribution with the published mean lengths when not; `jsonl` needs a file;
`burstgpt` needs a BurstGPT CSV and replays its arrivals (runners/workloads/burstgpt.py);
`fixed`, `uniform` and `phases` (runners/workloads/phases.py) are always synthetic. Text is
tokenized with the model directory's tokenizer, or a labelled approximation
(runners/workloads/tokenize.py). Requests come back with `arrival_s = 0` and runners/arrivals.py
sets release times, except for the workloads that time themselves (`WorkloadInfo.arrivals`).

Left out: arrivals, running, downloading datasets (never done).
"""
from __future__ import annotations

from pathlib import Path

from pie_core.errors import BadInput
from pie_core.shapes import resolve_model
from runners.base import BenchRequest
from runners.workloads.alpaca import read_alpaca
from runners.workloads.burstgpt import read_burstgpt
from runners.workloads.common import (DEFAULT_NUM_PROMPTS, OWN_ARRIVALS, WORKLOADS, LengthFilter, WorkloadInfo, WorkloadSpec,
                                      malformed_note, no_requests_error, take_requests)
from runners.workloads.phases import phased_requests
from runners.workloads.jsonl import DEFAULT_OUTPUT_LEN, load_jsonl
from runners.workloads.sharegpt import read_sharegpt
from runners.workloads.synthetic import synthetic_requests
from runners.workloads.tokenize import load_tokenizer

__all__ = ["DEFAULT_NUM_PROMPTS", "OWN_ARRIVALS", "WORKLOADS", "WorkloadInfo", "WorkloadSpec", "load_workload"]


def _mean(values: list[int]) -> float:
    return sum(values) / len(values) if values else 0.0


def _info(spec: WorkloadSpec, requests: list[BenchRequest], max_model_len: int, **fields) -> WorkloadInfo:
    return WorkloadInfo(num_prompts=spec.num_prompts, num_requests=len(requests), seed=spec.seed,
                        mean_prompt_len=_mean([r.prompt_len for r in requests]),
                        mean_output_len=_mean([r.output_len for r in requests]), max_model_len=max_model_len,
                        output_len_fixed=spec.output_len, **fields)


def _trace(spec: WorkloadSpec, path: Path, max_model_len: int, vocab_size: int) -> tuple[list[BenchRequest], WorkloadInfo]:
    trace = read_burstgpt(path, spec, max_model_len, vocab_size)
    scale = f", gaps x {spec.time_scale:g}" if spec.time_scale != 1 else ""
    return trace.requests, _info(spec, trace.requests, max_model_len, name="burstgpt", synthetic=False, source=str(path),
                                 tokenizer=f"none: the trace has lengths only; token ids drawn uniformly from the "
                                           f"{vocab_size}-token vocabulary (seed {spec.seed})",
                                 dataset_path=str(path), num_malformed=sum(trace.rejected.values()),
                                 num_filtered=sum(trace.filtered.values()), notes=(trace.summary(path),),
                                 arrivals=f"trace replay{scale}")


def _from_file(spec: WorkloadSpec, path: Path, max_model_len: int, vocab_size: int) -> tuple[list[BenchRequest], WorkloadInfo]:
    if spec.name == "burstgpt":
        return _trace(spec, path, max_model_len, vocab_size)
    tokenizer = load_tokenizer(spec.model)
    notes: list[str] = []
    if spec.name == "jsonl":
        requests, malformed, filtered, defaulted = load_jsonl(path, tokenizer, spec, max_model_len, vocab_size)
        if defaulted:
            notes.append(f"{defaulted} request(s) had no output length; generated {DEFAULT_OUTPUT_LEN} tokens")
    else:
        if spec.name == "sharegpt":
            entries, malformed = read_sharegpt(path, spec.seed)
        else:
            entries, malformed = read_alpaca(path, spec.seed, need_output=spec.output_len is None)
        length_filter = LengthFilter(max_model_len, fixed_output=spec.output_len is not None)
        requests, filtered = take_requests(entries, tokenizer, spec, length_filter, spec.name)
    if not requests:
        raise no_requests_error(path, len(malformed), filtered, max_model_len, malformed[:1])
    if len(requests) < spec.num_prompts:
        notes.append(f"only {len(requests)} of {spec.num_prompts} requested prompts were usable")
    if malformed:
        notes.append(malformed_note(path, malformed))
    return requests, _info(spec, requests, max_model_len, name=spec.name, synthetic=False, source=str(path),
                           tokenizer=tokenizer.description, dataset_path=str(path), num_malformed=len(malformed),
                           num_filtered=filtered, notes=tuple(notes))


def load_workload(spec: WorkloadSpec, request_rate: float = float("inf")) -> tuple[list[BenchRequest], WorkloadInfo]:
    """Requests (tokenized, arrival 0 unless the workload times itself) and a description of what was loaded.

    `request_rate` is the phased workload's light-phase rate (others ignore it here).
    """
    shape = resolve_model(spec.model)
    max_model_len = shape.max_positions
    if spec.dataset_path is not None:
        if spec.name in ("fixed", "uniform", "phases"):
            raise BadInput(f"workload '{spec.name}' is synthetic and reads no file, but --dataset-path was given",
                           "use --workload sharegpt, alpaca or jsonl with a file")
        return _from_file(spec, Path(spec.dataset_path).expanduser(), max_model_len, shape.vocab_size)
    if spec.name in ("jsonl", "burstgpt"):
        what = "a file with one JSON request per line" if spec.name == "jsonl" else "a BurstGPT CSV (Timestamp, Model, Request tokens, ...)"
        raise BadInput(f"workload '{spec.name}' needs --dataset-path", f"give {what}")
    if spec.name == "phases":
        requests, description = phased_requests(spec, shape.vocab_size, max_model_len, request_rate)
        return requests, _info(spec, requests, max_model_len, name="synthetic-phases", synthetic=True,
                               source=f"synthetic: {description}",
                               tokenizer=f"none: token ids drawn uniformly from the {shape.vocab_size}-token vocabulary (seed {spec.seed})",
                               arrivals="phases")
    requests, description, notes = synthetic_requests(spec, shape.vocab_size, max_model_len)
    return requests, _info(spec, requests, max_model_len, name=f"synthetic-{spec.name}", synthetic=True,
                           source=f"synthetic: {description}",
                           tokenizer=f"none: token ids drawn uniformly from the {shape.vocab_size}-token vocabulary (seed {spec.seed})",
                           notes=tuple(notes))
