"""The mean lengths `pie tune` plans for: a built-in workload's published means, or a workload file's measured ones.

Left out: planning (planner/); reading files (the workload loaders of this package).
"""
from __future__ import annotations

from pathlib import Path

from pie_core.errors import BadInput
from pie_core.inputs import readable_file
from planner.budgets import BUILTIN_WORKLOADS, WorkloadStats, builtin_workload, decode_weighted_context
from runners.workloads import WorkloadSpec, load_workload
from runners.workloads.common import read_json


def workload_stats(workload: str, model: str) -> WorkloadStats:
    """`sharegpt`/`alpaca` (published means), or a ShareGPT/Alpaca JSON or JSONL file measured with `model`'s tokenizer."""
    if workload.strip().lower() in BUILTIN_WORKLOADS:
        return builtin_workload(workload)
    path = Path(workload).expanduser()
    if not (path.exists() or path.suffix or "/" in workload):
        builtin_workload(workload)  # raises: unknown name, listing the valid ones
    readable_file(path, "workload file", "give a ShareGPT/Alpaca JSON or JSONL file, or --workload sharegpt|alpaca")
    name = "jsonl" if path.suffix == ".jsonl" else _json_kind(path)
    try:
        requests, info = load_workload(WorkloadSpec(name=name, model=model, dataset_path=path, num_prompts=100000))
    except BadInput as err:
        if "no usable requests" not in err.message:
            raise
        # `pie tune` has no --output-len: the fix is the file, or a built-in workload
        raise BadInput(err.message, "fix the file's entries, or plan for --workload sharegpt|alpaca") from None
    return WorkloadStats(name=str(path), mean_input_tokens=info.mean_prompt_len, mean_output_tokens=info.mean_output_len,
                         synthetic=False, num_requests=info.num_requests,
                         decode_context_tokens=decode_weighted_context((r.prompt_len, r.output_len) for r in requests))


def _json_kind(path: Path) -> str:
    data = read_json(path, "workload file")
    first = data[0] if isinstance(data, list) and data else {}
    if isinstance(first, dict) and "conversations" in first:
        return "sharegpt"
    if isinstance(first, dict) and "instruction" in first:
        return "alpaca"
    raise BadInput(f"workload file '{path}' is neither ShareGPT nor Alpaca JSON", "or give a .jsonl file")
