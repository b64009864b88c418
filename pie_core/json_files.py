"""Atomic writes of the versioned JSON files pie keeps (profiles, plans), and JSON cleaning.

`save_keeping` is how a command saves what it measured: when the chosen path fails at the last
moment (its output path was checked before the work, see pie_core/inputs.py, but a disk can fill),
the file goes to a fallback and the error names where it is. Ground layer: every package above
uses it. `read_json_file` is how every JSON file is read (checked path, UTF-8, depth, parse errors as
one line naming the file); validating the values stays with each file's class.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import secrets
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pie_core.errors import BadInput, RuntimeFailure
from pie_core.inputs import readable_file
from pie_core.json_fields import decode_text, parse_json_text


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write `data` as indented JSON via a temporary file and a rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # no half-written file is left beside a failed write
        raise
    return path


def read_json_file(path: Path | str, what: str, where_from: str, hint: str) -> Any:
    """The JSON in a file of kind `what` ('plan', 'profile'); missing, unreadable, not UTF-8, not JSON or nested too
    deep is one-line bad input. `where_from` says where a right file comes from, `hint` how to remake this one."""
    path = readable_file(path, what, where_from)
    source = f"{what} '{path}'"
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise BadInput(f"cannot read {source}: {err.strerror or err}", where_from) from None
    return parse_json_text(decode_text(raw, source, hint), source, hint)


def save_keeping(save: Callable[[Path], Path], path: Path, what: str, fallbacks: Sequence[Path] = ()) -> Path:
    """`save(path)`; if that fails, `save` to the first of `fallbacks` (then the temp directory) that takes it,
    and raise `RuntimeFailure` naming where the file went, so what was measured is not lost."""
    try:
        return save(path)
    except OSError as err:
        failure = f"cannot write the {what} to '{path}' ({err.strerror or err})"
        spare = Path(tempfile.gettempdir()) / f"pie-{path.stem or what}-{os.getpid()}-{secrets.token_hex(3)}.json"
        for fallback in (*fallbacks, spare):
            if Path(fallback) == Path(path):
                continue
            try:
                kept = save(Path(fallback))
            except OSError:
                continue
            raise RuntimeFailure(f"{failure}; it was saved to '{kept}' instead", f"move it where it belongs: mv {kept} {path}") from None
        raise RuntimeFailure(f"{failure}, nor anywhere else", "free some disk space and run it again") from None


def to_jsonable(value: Any) -> Any:
    """Dataclasses, tuples, paths and non-finite floats to plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value
