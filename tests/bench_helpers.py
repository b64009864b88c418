"""Helpers for the bench tests: ShareGPT files in tmp dirs (tiny models come from tiny_hf_model)."""
from __future__ import annotations

import json
from pathlib import Path


def write_sharegpt(path: Path, conversations: list, extra: list | None = None) -> Path:
    items = [{"id": str(i), "conversations": [{"from": "human", "value": p}, {"from": "gpt", "value": c}]}
             for i, (p, c) in enumerate(conversations)]
    path.write_text(json.dumps(items + list(extra or [])))
    return path
