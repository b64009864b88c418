"""Alpaca: `instruction` (+ `input`) -> `output`, from a JSON list or a JSON-lines file.

Prompt = instruction, or instruction + blank line + input when input is non-empty; the
completion is `output` (not needed when `--output-len` fixes the length). Entries are shuffled
with the seed and filtered like ShareGPT (see common.LengthFilter). Entries without a string
`instruction` (or `output`, when the length is not fixed) are malformed: skipped and counted.

Left out: the Alpaca prompt template ("Below is an instruction..."): raw fields only.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from pie_core.errors import BadInput
from runners.workloads.common import TextEntry, parse_line, read_json, read_text


def _entry(item: Any, need_output: bool) -> TextEntry | None:
    if not isinstance(item, dict) or not isinstance(item.get("instruction"), str):
        return None
    extra = item.get("input", "")
    if extra is None:
        extra = ""
    if not isinstance(extra, str):
        return None
    output = item.get("output")
    if need_output and not isinstance(output, str):
        return None
    prompt = item["instruction"] + (f"\n\n{extra}" if extra.strip() else "")
    return TextEntry(prompt=prompt, completion=output if isinstance(output, str) else None)


def _items(path: Path) -> list[Any]:
    if path.suffix == ".jsonl":
        items = []
        for line in read_text(path).splitlines():
            if line.strip():
                items.append(parse_line(line)[0])  # not JSON: None, counted as malformed
        return items
    data = read_json(path)
    if not isinstance(data, list):
        raise BadInput(f"'{path}' is not an Alpaca file (expected a JSON list of records, got {type(data).__name__})",
                       "pass a JSON list of {instruction, input, output} records")
    return data


def read_alpaca(path: Path, seed: int, need_output: bool) -> tuple[list[TextEntry], list[str]]:
    """(entries in seeded-shuffled order, what was malformed: "entry 3: ...")."""
    items = _items(path)
    entries = [_entry(item, need_output) for item in items]
    kept = [e for e in entries if e is not None]
    random.Random(seed).shuffle(kept)
    needed = "'instruction'" + (" and 'output'" if need_output else "") + " as text (and 'input' text or absent)"
    return kept, [f"entry {index}: needs {needed}" for index, entry in enumerate(entries) if entry is None]
