"""JSONL: one request per line, in file order (no shuffle, no vLLM length filter).

Each line is an object with a prompt, either `"prompt": "text"` or
`"prompt_token_ids": [ints]`, and optionally its length to generate: `"output_len"` (or
vLLM's `"max_tokens"`) as an int, or `"completion": "text"` to tokenize. `--output-len`
overrides them all; a line with none of them generates DEFAULT_OUTPUT_LEN tokens (noted in the
workload info). Lines that are not such objects, or whose token ids fall outside the
vocabulary, are malformed: skipped and counted. Requests longer than the model's max length
are filtered and counted.

Left out: per-line sampling settings (benchmarks are greedy with a fixed length).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from runners.base import BenchRequest
from runners.workloads.common import WorkloadSpec, parse_line, read_text

DEFAULT_OUTPUT_LEN = 128


def _output_len(item: dict[str, Any], tokenizer: Any, spec: WorkloadSpec) -> tuple[int | None, bool]:
    """(output length or None if malformed, whether the default was used)."""
    if spec.output_len is not None:
        return spec.output_len, False
    for key in ("output_len", "max_tokens"):
        if key in item:
            value = item[key]
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            return (value if ok else None), False
    if "completion" in item:
        return (len(tokenizer.encode(item["completion"])) or None) if isinstance(item["completion"], str) else None, False
    return DEFAULT_OUTPUT_LEN, True


def _prompt(item: dict[str, Any], tokenizer: Any, vocab_size: int) -> tuple[str | None, tuple[int, ...]] | None:
    ids = item.get("prompt_token_ids")
    if ids is not None:
        if not isinstance(ids, list) or not ids or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab_size for t in ids):
            return None
        text = item.get("prompt") if isinstance(item.get("prompt"), str) else None
        return text, tuple(ids)
    text = item.get("prompt")
    if not isinstance(text, str):
        return None
    ids = tuple(tokenizer.encode(text))
    return (text, ids) if ids else None


def load_jsonl(path: Path, tokenizer: Any, spec: WorkloadSpec, max_model_len: int,
               vocab_size: int) -> tuple[list[BenchRequest], list[str], int, int]:
    """(requests, what was malformed ("line 3: ..."), num_filtered, num_defaulted_output_len)."""
    requests: list[BenchRequest] = []
    malformed: list[str] = []
    filtered = defaulted = 0
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if len(requests) >= spec.num_prompts:
            break
        if not line.strip():
            continue
        item, why = parse_line(line)
        if why is not None:
            malformed.append(f"line {number}: {why}")
            continue
        prompt = _prompt(item, tokenizer, vocab_size) if isinstance(item, dict) else None
        output_len, used_default = _output_len(item, tokenizer, spec) if prompt else (None, False)
        if prompt is None or output_len is None:
            malformed.append(f"line {number}: " + ("not an object" if not isinstance(item, dict) else
                             "no usable prompt (text, or token ids in the vocabulary)" if prompt is None else
                             "output_len/max_tokens is not a whole number of at least 1"))
            continue
        text, ids = prompt
        if len(ids) + output_len > max_model_len:
            filtered += 1
            continue
        defaulted += used_default
        requests.append(BenchRequest(request_id=f"jsonl-{len(requests)}", prompt=text, prompt_token_ids=ids,
                                     output_len=output_len))
    return requests, malformed, filtered, defaulted
