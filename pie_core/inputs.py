"""Checking what a user hands pie, one function per kind of input, for every command (torch-free).

Each check raises a one-line `BadInput` that names the input, what was given and what would do:

- numbers with their ranges: `check_number` (finite, the right kind, within bounds), `check_seed`,
  `check_threads` (at most this machine's CPUs), `check_block_size` (a power of two, the engine's and
  the planner's one rule);
- option values by their declared type: `OptionType` and `parse_options` (`-O KEY=VALUE` of every runner);
- paths to read: `readable_file` (missing, a directory, or a file of another kind are each said as such);
- paths to write: `writable_file` and `writable_dir`, checked before any work starts, creating nothing;
- every path's length (`check_path_length`: a name or a whole path longer than the file system takes).

Sizes are `pie_core/sizes.py` (`parse_size`); model directories `pie_core/model_dir.py`; plans,
profiles and records are read by their own classes through `readable_file`.
Left out: anything about a particular command's meaning (each caller names its flag and its example).
"""
from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pie_core.errors import BadInput, suggest

MAX_SEED = 2**32 - 1  # numpy's and torch's generators both take 0..2**32-1 from every entry point
_KIND_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _number_text(value: float) -> str:
    """1000000 -> '1000000', 0.5 -> '0.5', 1e-06 -> '1e-06': bounds as a user would type them."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


def _range_text(minimum: float | None, maximum: float | None, above: float | None, below: float | None) -> str:
    show = _number_text
    low = f"greater than {show(above)}" if above is not None else (f"at least {show(minimum)}" if minimum is not None else "")
    high = f"less than {show(below)}" if below is not None else (f"at most {show(maximum)}" if maximum is not None else "")
    if minimum is not None and maximum is not None and above is None and below is None:
        return f"between {show(minimum)} and {show(maximum)}"
    return " and ".join(part for part in (low, high) if part)


def check_number(value: Any, name: str, *, minimum: float | None = None, maximum: float | None = None,
                 above: float | None = None, below: float | None = None, integer: bool = False,
                 hint: str | None = None) -> int | float:
    """`value` if it is a finite number (an int when `integer`) within the bounds (`above`, `below`: exclusive).

    `name` is what the user typed (a flag such as '--num-prompts' or an option 'max_num_seqs').
    """
    kind = int if integer else float
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise BadInput(f"{name} must be {_KIND_WORDS[kind]}, got {value!r}", hint)
    if not math.isfinite(value):
        raise BadInput(f"{name} must be a finite number, got {value}", hint)
    if ((minimum is not None and value < minimum) or (maximum is not None and value > maximum)
            or (above is not None and not value > above) or (below is not None and not value < below)):
        given = value if isinstance(value, int) else f"{value:g}"
        raise BadInput(f"{name} must be {_range_text(minimum, maximum, above, below)}, got {given}", hint)
    return value


def check_seed(seed: int, name: str = "--seed") -> int:
    return int(check_number(seed, name, minimum=0, maximum=MAX_SEED, integer=True, hint="e.g. --seed 0"))


def max_threads() -> int:
    """The most compute threads worth asking for here: this process's CPUs (more only oversubscribe them)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_threads(threads: int | None, name: str = "--threads") -> int | None:
    """None (torch's own default) or 1..`max_threads()`: a thread count beyond the machine crashed OpenMP."""
    if threads is None:
        return None
    most = max_threads()
    return int(check_number(threads, name, minimum=1, maximum=most, integer=True,
                            hint=f"this machine runs {most} CPU thread(s) at once; give {name} 1..{most}"))


def check_block_size(block_size: int, name: str = "block_size") -> int:
    """Tokens per KV block: a power of two (the one rule of the engine, the planner and a plan)."""
    check_number(block_size, name, minimum=1, integer=True, hint=f"e.g. {name} 16")
    if block_size & (block_size - 1):
        lower = 1 << (block_size.bit_length() - 1)
        raise BadInput(f"{name} must be a power of two, got {block_size}", f"use {lower} or {lower * 2}")
    return block_size


@dataclass(frozen=True)
class OptionType:
    """A runner option's declared type: `kind` (bool, int, float, str), its bounds or its choices."""

    kind: type
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None  # exclusive lower bound
    choices: tuple[str, ...] = ()
    example: str = ""

    @classmethod
    def of(cls, declared: OptionType | type) -> OptionType:
        return declared if isinstance(declared, OptionType) else cls(declared)

    def parse(self, owner: str, name: str, value: Any) -> Any:
        """`value` (text from `-O KEY=VALUE`, or an already typed value from a flag) as this type, checked."""
        example = f"e.g. -O {name}={self.example or (self.choices[0] if self.choices else _EXAMPLES[self.kind])}"
        label = f"{owner} option {name}"
        if isinstance(value, str):
            text = value.strip()
            if not text:
                raise BadInput(f"{label} has no value", example)
            value = self._from_text(label, text, example)
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.kind is bool or self.kind is str:
            if not isinstance(value, self.kind):
                raise BadInput(f"{label}={value!r} is not {_KIND_WORDS[self.kind]}", example)
        else:
            check_number(value, label, minimum=self.minimum, maximum=self.maximum, above=self.above,
                         integer=self.kind is int, hint=example)
        if self.choices and value not in self.choices:
            raise BadInput(f"{label}={value!r} is not one of {', '.join(self.choices)}", example)
        return value

    def _from_text(self, label: str, text: str, example: str) -> Any:
        if self.kind is bool:
            if text.lower() not in _TRUE + _FALSE:
                raise BadInput(f"{label}={text!r} is not true/false", example)
            return text.lower() in _TRUE
        if self.kind is str:
            return text
        try:
            return self.kind(text)
        except ValueError:
            raise BadInput(f"{label}={text!r} is not {_KIND_WORDS[self.kind]}", example) from None


_EXAMPLES = {bool: "true", int: "8", float: "0.5", str: "NAME"}


def parse_options(owner: str, given: Mapping[str, Any], declared: Mapping[str, OptionType | type]) -> dict[str, Any]:
    """Every given option parsed by its declared type; an undeclared name is bad input with suggestions.

    `owner` names the runner in messages ('unknown pie runner option ...', 'vllm option x=...').
    """
    parsed: dict[str, Any] = {}
    for name, value in given.items():
        if name not in declared:
            raise BadInput(f"unknown {owner} option '{name}'", suggest(name, declared))
        parsed[name] = None if value is None else OptionType.of(declared[name]).parse(owner, name, value)
    return parsed


def readable_file(path: Path | str, what: str, hint: str) -> Path:
    """`path` if it is a file this process may read; else one line saying it is missing, a directory or unreadable.

    `what` names the kind of file ('plan', 'profile', 'dataset file'); `hint` says where a right one comes from.
    """
    path = check_path_length(Path(path).expanduser(), what)
    if path.is_dir():
        raise BadInput(f"{what} '{path}' is a directory, not a file", hint)
    if not path.is_file():
        if path.exists():
            raise BadInput(f"{what} '{path}' is not a regular file", hint)
        raise BadInput(f"{what} '{path}' does not exist", hint)
    if not os.access(path, os.R_OK):
        raise BadInput(f"{what} '{path}' cannot be read (permission denied)", hint)
    return path


def _limit(name: str, default: int) -> int:
    try:
        return int(os.pathconf("/", name))
    except (AttributeError, OSError, ValueError):
        return default


def check_path_length(path: Path, name: str) -> Path:
    """`path` unless one of its names, or the whole path, is longer than the file system takes (OSError 36 later)."""
    longest = max((part for part in path.parts), key=lambda part: len(os.fsencode(part)), default="")
    most_name, most_path = _limit("PC_NAME_MAX", 255), _limit("PC_PATH_MAX", 4096)
    if len(os.fsencode(longest)) > most_name:
        raise BadInput(f"{name} '{longest[:40]}...' is a name of {len(os.fsencode(longest))} bytes; the file system takes "
                       f"at most {most_name}", "use a shorter name")
    if len(os.fsencode(str(path))) >= most_path:
        raise BadInput(f"{name} is a path of {len(os.fsencode(str(path)))} bytes; the file system takes less than {most_path}",
                       "use a shorter path")
    return path


def _nearest_existing(path: Path) -> Path:
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def _can_create_in(directory: Path) -> bool:
    """Whether a file can be made in `directory` (tried: permission bits say nothing to root or on /proc)."""
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".pie-write-check-"):
            return True
    except OSError:
        return False


def writable_file(path: Path | str, name: str) -> Path:
    """A path a result file can be written to, checked before any work: not a directory, and its nearest
    existing parent a directory where files can be made. Nothing is created."""
    path = check_path_length(Path(path).expanduser(), name)
    if path.is_dir():
        raise BadInput(f"{name} '{path}' is a directory", f"give a file name, e.g. {path / 'out.json'}")
    if path.exists() and not os.access(path, os.W_OK):
        raise BadInput(f"{name} '{path}' cannot be written (permission denied)", "choose another path")
    parent = _nearest_existing(path.parent)
    if not parent.is_dir():
        raise BadInput(f"{name} '{path}': '{parent}' is a file, not a directory", "choose a path under a directory")
    if not _can_create_in(parent):
        raise BadInput(f"{name} '{path}': no file can be written under '{parent}'", "choose a path in a writable directory")
    return path


def writable_dir(path: Path | str, name: str) -> Path:
    """A directory results can be written into (made later if missing), checked before any work."""
    path = check_path_length(Path(path).expanduser(), name)
    if path.exists() and not path.is_dir():
        raise BadInput(f"{name} '{path}' is a file, not a directory", "give a directory; it is made if missing")
    parent = _nearest_existing(path)
    if not parent.is_dir():
        raise BadInput(f"{name} '{path}': '{parent}' is a file, not a directory", "give a directory path")
    if not _can_create_in(parent):
        raise BadInput(f"{name} '{path}': nothing can be written under '{parent}'", "give a writable directory")
    return path
