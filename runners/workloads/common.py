"""What every workload loader shares: its settings, what it reports, vLLM's length filter, file reading.

`WorkloadSpec` is what the CLI asks for; `WorkloadInfo` describes what was loaded (stored in
the record's workload field and shown by `pie bench`); `LengthFilter` is vLLM's ShareGPT
filter (prompt 4..1024 tokens, prompt + output <= 2048), tightened to the model's max length;
`take_requests` tokenizes text entries in order until enough pass the filter.

Left out: reading any particular file format (one module per format).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pie_core.errors import BadInput
from pie_core.inputs import check_number, check_seed, readable_file
from pie_core.json_fields import decode_text, parse_json_text

WORKLOADS = ("sharegpt", "alpaca", "jsonl", "burstgpt", "fixed", "uniform", "phases")
OWN_ARRIVALS = ("burstgpt", "phases")  # workloads that set their own arrival times
INPUT_LEN_WORKLOADS = ("fixed", "uniform", "phases")  # the synthetic workloads whose prompt length --input-len sets
TRACE_FIELDS = ("time_scale", "trace_start", "trace_duration", "trace_model", "trace_log_type")
DEFAULT_NUM_PROMPTS = 64
MIN_PROMPT_LEN = 4
MAX_PROMPT_LEN = 1024
MAX_TOTAL_LEN = 2048
MIN_OUTPUT_LEN = 4
MAX_NUM_PROMPTS = 1_000_000  # every request is built (tokenized, timed) before the run starts


@dataclass(frozen=True)
class WorkloadSpec:
    name: str = "sharegpt"  # one of WORKLOADS
    model: str = "opt-125m"  # for its tokenizer, vocabulary and max length
    dataset_path: Path | None = None
    num_prompts: int = DEFAULT_NUM_PROMPTS
    seed: int = 0
    output_len: int | None = None  # fix every request's output length
    input_len: int | None = None  # fixed/uniform synthetic prompt length
    range_ratio: float = 0.5  # uniform: lengths in [len * (1 - r), len * (1 + r)]
    time_scale: float = 1.0  # burstgpt: replayed gap = trace gap x time_scale
    trace_start: float | None = None  # burstgpt: window start, in the trace's seconds
    trace_duration: float | None = None  # burstgpt: window length, in the trace's seconds
    trace_model: str | None = None  # burstgpt: keep rows of this Model
    trace_log_type: str | None = None  # burstgpt: keep rows of this Log Type

    def __post_init__(self) -> None:
        if self.name not in WORKLOADS:
            from pie_core.errors import suggest

            raise BadInput(f"unknown workload '{self.name}'", suggest(self.name, WORKLOADS))
        check_number(self.num_prompts, "--num-prompts", minimum=1, maximum=MAX_NUM_PROMPTS, integer=True,
                     hint=f"give 1..{MAX_NUM_PROMPTS:,} requests (all are built before the run starts)")
        check_seed(self.seed)
        for name in ("output_len", "input_len"):
            if getattr(self, name) is not None:
                check_number(getattr(self, name), f"--{name.replace('_', '-')}", minimum=1, integer=True,
                             hint=f"give tokens per request, e.g. --{name.replace('_', '-')} 128")
        if self.input_len is not None and self.name not in INPUT_LEN_WORKLOADS:
            raise BadInput(f"--input-len sets the prompts of the {', '.join(INPUT_LEN_WORKLOADS)} workloads; "
                           f"'{self.name}' takes its prompts from its data (or its published means)",
                           "drop --input-len, or use --workload fixed or uniform")
        check_number(self.range_ratio, "--range-ratio", minimum=0, below=1, hint="e.g. --range-ratio 0.5: lengths within +-50%")
        check_number(self.time_scale, "--time-scale", above=0,
                     hint="e.g. --time-scale 0.1 replays the trace ten times faster, 1 as recorded")
        if self.trace_duration is not None:
            check_number(self.trace_duration, "--trace-duration", above=0, hint="give the window's length in the trace's seconds")
        if self.trace_start is not None:
            check_number(self.trace_start, "--trace-start", hint="give the window's start in the trace's seconds")
        if self.name != "burstgpt":
            given = [name for name in TRACE_FIELDS if getattr(self, name) != WorkloadSpec.__dataclass_fields__[name].default]
            if given:
                flag = given[0].replace("_", "-")
                raise BadInput(f"--{flag} applies only to trace replay, not workload '{self.name}'",
                               f"use --workload burstgpt --dataset-path FILE.csv, or drop --{flag}")


@dataclass(frozen=True)
class WorkloadInfo:
    name: str  # e.g. "sharegpt", "synthetic-sharegpt"
    synthetic: bool
    source: str  # the file, or the distribution for synthetic workloads
    tokenizer: str  # what turned text into ids (or how synthetic ids were drawn)
    num_prompts: int  # asked for
    num_requests: int  # loaded
    mean_prompt_len: float
    mean_output_len: float
    max_model_len: int
    seed: int
    dataset_path: str | None = None
    output_len_fixed: int | None = None
    num_malformed: int = 0  # entries skipped because they did not have the expected shape
    num_filtered: int = 0  # entries skipped by the length filter
    notes: tuple[str, ...] = field(default_factory=tuple)
    arrivals: str | None = None  # set when the workload times its own requests (trace replay, phases)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["notes"] = list(self.notes)
        return data


@dataclass(frozen=True)
class LengthFilter:
    max_model_len: int
    fixed_output: bool = False

    @property
    def max_total_len(self) -> int:
        return min(MAX_TOTAL_LEN, self.max_model_len)

    def keeps(self, prompt_len: int, output_len: int) -> bool:
        if prompt_len < MIN_PROMPT_LEN or prompt_len > MAX_PROMPT_LEN:
            return False
        if not self.fixed_output and output_len < MIN_OUTPUT_LEN:
            return False
        return output_len >= 1 and prompt_len + output_len <= self.max_total_len


DATASET_HINT = "is it the dataset file, and complete?"


def read_json(path: Path, what: str = "dataset file") -> Any:
    """A whole JSON file; missing, unreadable, not UTF-8, not JSON or nested too deep is a one-line BadInput."""
    return parse_json_text(read_text(path, what), f"{what} '{path}'", DATASET_HINT)


def read_text(path: Path, what: str = "dataset file") -> str:
    """A UTF-8 text file (a byte-order mark is dropped; UTF-16 and other encodings are named as such)."""
    path = readable_file(path, what, "give --dataset-path an existing file")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise BadInput(f"cannot read '{path}': {err.strerror or err}", "is it a file you may read?") from None
    return decode_text(raw, f"{what} '{path}'", "give a UTF-8 dataset file")


def parse_line(line: str) -> tuple[Any, str | None]:
    """(value, None) for a JSON line, or (None, why) when it is not one (invalid, or nested too deep)."""
    try:
        return parse_json_text(line, "line", DATASET_HINT), None
    except BadInput as err:
        return None, err.message.removeprefix("line ").removeprefix(": ")


def malformed_note(path: Path, malformed: list[str]) -> str:
    """One warning naming how many entries were skipped as malformed, and the first of them."""
    return f"{path.name}: skipped {len(malformed)} malformed entr{'y' if len(malformed) == 1 else 'ies'}; the first: {malformed[0]}"


def no_requests_error(path: Path | None, malformed: int, filtered: int, model_len: int,
                      first_malformed: list[str] = (), length_flag: str = "--output-len") -> BadInput:
    """No request survived: says how many were malformed (naming the first) and how many the length filter dropped.
    `length_flag` is the command's flag that fixes output lengths ('' when it has none, e.g. `pie tune`)."""
    where = f"'{path}'" if path else "the workload"
    first = f"; the first malformed: {first_malformed[0]}" if first_malformed else ""
    fix = "fix the file's entries" if malformed and not filtered else (
        f"give shorter entries, or fix output lengths with {length_flag}" if length_flag else "give shorter entries")
    return BadInput(f"{where} gave no usable requests ({malformed} malformed, {filtered} outside the length filter "
                    f"of prompt {MIN_PROMPT_LEN}..{MAX_PROMPT_LEN} tokens and total <= {min(MAX_TOTAL_LEN, model_len)}{first})", fix)


@dataclass(frozen=True)
class TextEntry:
    """One prompt from a text dataset, before tokenizing."""

    prompt: str
    completion: str | None = None  # its output length comes from tokenizing this
    output_len: int | None = None  # or is given directly


def take_requests(entries: list[TextEntry], tokenizer: Any, spec: WorkloadSpec, length_filter: LengthFilter,
                  prefix: str) -> tuple[list[Any], int]:
    """Tokenize entries in order until `spec.num_prompts` pass the filter; return (requests, num_filtered)."""
    from runners.base import BenchRequest

    requests, filtered = [], 0
    for entry in entries:
        if len(requests) >= spec.num_prompts:
            break
        prompt_ids = tuple(tokenizer.encode(entry.prompt))
        if spec.output_len is not None:
            output_len = spec.output_len
        elif entry.output_len is not None:
            output_len = entry.output_len
        else:
            output_len = len(tokenizer.encode(entry.completion or ""))
        if not length_filter.keeps(len(prompt_ids), output_len):
            filtered += 1
            continue
        requests.append(BenchRequest(request_id=f"{prefix}-{len(requests)}", prompt=entry.prompt,
                                     prompt_token_ids=prompt_ids, output_len=output_len))
    return requests, filtered
