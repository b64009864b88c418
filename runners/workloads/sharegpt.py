"""ShareGPT: the `ShareGPT_V3_unfiltered_cleaned_split.json` shape, as vLLM's benchmark reads it.

A JSON list of `{"conversations": [{"from": ..., "value": ...}, ...]}`; prompt = first turn,
completion = second. Entries are shuffled with the seed, then tokenized in that order until
`num_prompts` pass vLLM's filter (prompt 4..1024 tokens, output >= 4 unless fixed, total
<= 2048 and <= the model's max length). Entries without two text turns are malformed: skipped
and counted.

Left out: multi-turn replay (only the first exchange is used), downloading the file.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from pie_core.errors import BadInput
from runners.workloads.common import TextEntry, read_json


def _entry(item: Any) -> TextEntry | None:
    if not isinstance(item, dict):
        return None
    turns = item.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2:
        return None
    first, second = turns[0], turns[1]
    if not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in (first, second)):
        return None
    return TextEntry(prompt=first["value"], completion=second["value"])


def read_sharegpt(path: Path, seed: int) -> tuple[list[TextEntry], list[str]]:
    """(entries in seeded-shuffled order, what was malformed: "entry 3: ...")."""
    data = read_json(path)
    if not isinstance(data, list):
        raise BadInput(f"'{path}' is not a ShareGPT file (expected a JSON list of conversations, got {type(data).__name__})",
                       "pass a file shaped like ShareGPT_V3_unfiltered_cleaned_split.json")
    entries = [_entry(item) for item in data]
    kept = [e for e in entries if e is not None]
    random.Random(seed).shuffle(kept)
    return kept, [f"entry {index}: no 'conversations' list with two turns whose 'value' is text"
                  for index, entry in enumerate(entries) if entry is None]
