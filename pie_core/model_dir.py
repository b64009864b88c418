"""A local Hugging Face model directory, read and checked before any weight is loaded (torch-free).

- `read_config(directory)`: its config.json as a JSON object; missing, unreadable, not JSON or not
  an object is one `BadInput` line.
- `config_value(config, key, kind, source, default)`: one field of it, of its declared kind (a
  whole number, a number, true/false, text): `"num_hidden_layers": "five"` names the key and the
  file instead of failing later as a TypeError.
- `safetensors_index(directory)`: every `*.safetensors` file's header (the format opens with an
  8-byte length and a JSON table of tensors), as tensor name -> `TensorEntry`; a corrupt or
  truncated file is named as such, before anything is read or a record is opened.

Left out: the tensors' data (runners/engine/loader.py reads it, through this index) and which
tensors a model family needs (the loader's table).
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pie_core.errors import BadInput

MISSING = object()
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
# bytes per element of the safetensors dtypes (others are checked for bounds only)
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
_KINDS = {int: "a whole number", float: "a number", bool: "true or false", str: "text", dict: "an object"}
_RESAVE = "re-save the model with save_pretrained(safe_serialization=True), or copy the file again"


@dataclass(frozen=True)
class TensorEntry:
    shape: tuple[int, ...]
    dtype: str
    file: Path


def read_config(directory: Path) -> dict[str, Any]:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise BadInput(f"'{directory}' has no config.json", "pass a Hugging Face model directory or a registry name (see `pie models`)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadInput(f"cannot read {path}: {err}", "is the file valid JSON?") from None
    if not isinstance(config, dict):
        raise BadInput(f"{path} is not a Hugging Face config (a JSON {type(config).__name__}, not an object)",
                       "give the config.json that save_pretrained wrote")
    return config


def config_value(config: dict[str, Any], key: str, kind: type, source: str, default: Any = MISSING) -> Any:
    """`config[key]` as `kind` (an int for a float field is widened; None or absent takes `default`)."""
    value = config.get(key)
    if value is None:
        if default is MISSING:
            raise BadInput(f"{source}: config.json lacks '{key}'", "is this a complete Hugging Face model directory?")
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind) or (kind is float and not math.isfinite(value)):
        raise BadInput(f"{source}: config.json '{key}' must be {_KINDS[kind]}, got {value!r}",
                       "fix config.json; save_pretrained writes a valid one")
    return value


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """(the JSON table, bytes of data after it)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise BadInput(f"'{path}' is not a safetensors file ({size} bytes: shorter than its header)", _RESAVE)
        (length,) = struct.unpack("<Q", prefix)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise BadInput(f"'{path}' is corrupt or truncated: its header claims {length} bytes, the file has {size}", _RESAVE)
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadInput(f"'{path}' is corrupt: its header is not JSON", _RESAVE) from None
    if not isinstance(header, dict):
        raise BadInput(f"'{path}' is corrupt: its header is not a table of tensors", _RESAVE)
    return header, size - 8 - length


def _entry(path: Path, name: str, info: Any, data_bytes: int) -> TensorEntry:
    try:
        shape, dtype, (begin, end) = tuple(int(n) for n in info["shape"]), str(info["dtype"]), info["data_offsets"]
    except (TypeError, KeyError, ValueError):
        raise BadInput(f"'{path}' is corrupt: tensor {name} has no valid shape, dtype and offsets", _RESAVE) from None
    if not 0 <= begin <= end or any(n < 0 for n in shape):
        raise BadInput(f"'{path}' is corrupt: tensor {name} has offsets {begin}..{end} and shape {shape}", _RESAVE)
    if end > data_bytes:
        raise BadInput(f"'{path}' is truncated: tensor {name} ends at byte {end} of the data, which holds {data_bytes}", _RESAVE)
    width = _DTYPE_BYTES.get(dtype)
    if width is not None and math.prod(shape) * width != end - begin:
        raise BadInput(f"'{path}' is corrupt: tensor {name} ({dtype} {shape}) takes {end - begin} bytes", _RESAVE)
    return TensorEntry(shape, dtype, path)


def safetensors_index(directory: Path) -> dict[str, TensorEntry]:
    """Tensor name (as stored) -> its entry, over every `*.safetensors` file in `directory`; the first file
    that holds a name keeps it. Empty when there are no such files."""
    index: dict[str, TensorEntry] = {}
    for path in sorted(Path(directory).glob("*.safetensors")):
        try:
            header, data_bytes = _read_header(path)
        except OSError as err:
            raise BadInput(f"cannot read '{path}': {err.strerror or err}", "is the file readable?") from None
        for name, info in header.items():
            if name != "__metadata__" and name not in index:
                index[name] = _entry(path, name, info, data_bytes)
    return index
