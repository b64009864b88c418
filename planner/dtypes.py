"""Names and sizes of the element types pie supports (torch-free)."""
from __future__ import annotations

from pie_cli.errors import BadInput, suggest

DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}


def canonical_dtype(name: str) -> str:
    """'bf16' -> 'bfloat16'; raise BadInput for an unknown name."""
    key = name.strip().lower().removeprefix("torch.")
    key = _ALIASES.get(key, key)
    if key not in DTYPE_BYTES:
        raise BadInput(f"unknown dtype '{name}'", suggest(name, DTYPE_BYTES))
    return key


def dtype_bytes(name: str) -> int:
    return DTYPE_BYTES[canonical_dtype(name)]
