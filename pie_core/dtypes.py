"""Names and sizes of the element types pie supports (torch-free)."""
from __future__ import annotations

from pie_core.errors import BadInput, suggest

DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}
AUTO = "auto"
ACCEPTED = "bfloat16 (bf16), float16 (fp16, half), float32 (fp32, float)"


def canonical_dtype(name: str, allow_auto: bool = False) -> str:
    """'bf16' -> 'bfloat16' ('auto' stays 'auto' where allowed); raise BadInput naming the accepted names."""
    key = name.strip().lower().removeprefix("torch.")
    key = _ALIASES.get(key, key)
    if allow_auto and key == AUTO:
        return AUTO
    if key not in DTYPE_BYTES:
        accepted = f"auto, {ACCEPTED}" if allow_auto else ACCEPTED
        close = suggest(key, [*DTYPE_BYTES, *_ALIASES, *([AUTO] if allow_auto else [])])
        hint = f"{close} accepted: {accepted}" if close.startswith("did you mean") else f"accepted: {accepted}"
        raise BadInput(f"unknown dtype '{name}'", hint)
    return key


def dtype_bytes(name: str) -> int:
    return DTYPE_BYTES[canonical_dtype(name)]
