"""Reading pie's JSON files: bytes to JSON safely, then JSON to frozen dataclasses, checked field by field.

`parse_json_text` turns text into JSON values with every way that can fail (not JSON, nested past
`MAX_DEPTH`, past Python's recursion limit) as a one-line `BadInput` naming the file. `decode_text`
reads UTF-8 (a byte-order mark is dropped) and names UTF-16 or other encodings as such.

`read_dataclass(cls, data, where, bounds)` builds `cls` from a parsed JSON object, checking each
field against its annotation (str, int, float, bool, dict, tuple[X, ...], nested dataclasses,
`X | None`, Any): a bool is not a number, a float must be finite, an int must fit in 64 bits, and
`bounds` add ranges per field. A field that is missing, of the wrong type or out of range is one
`BadInput` naming the file and the field's JSON path (`settings.num_pool_blocks`,
`link[0].median_gbps`), what was found and what was expected, with the file kind's hint. Keys the
class does not know are ignored (older and newer writers add fields). Ground layer: imports nothing
of the project but its errors.

Left out: cross-field rules (each file kind's reader checks its own after this) and writing.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pie_core.errors import BadInput

MAX_DEPTH = 32  # pie's own files nest under 8 levels; deeper is not a pie file (and would overflow readers)
MAX_INT = 2**63


@dataclass(frozen=True)
class Range:
    """Bounds of a number field; `above`/`below` are exclusive."""

    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    below: float | None = None

    def text(self) -> str:
        parts = []
        if self.above is not None:
            parts.append(f"greater than {self.above:g}")
        elif self.minimum is not None:
            parts.append(f"at least {self.minimum:g}")
        if self.below is not None:
            parts.append(f"less than {self.below:g}")
        elif self.maximum is not None:
            parts.append(f"at most {self.maximum:g}")
        return " and ".join(parts)

    def holds(self, value: float) -> bool:
        return not ((self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum)
                    or (self.above is not None and not value > self.above) or (self.below is not None and not value < self.below))


NON_NEGATIVE = Range(minimum=0)
POSITIVE = Range(above=0)
FRACTION = Range(minimum=0, maximum=1)


@dataclass(frozen=True)
class Where:
    """Which file (`source`, e.g. "plan 'p.json'"), where in it (`path`), and the hint for that kind of file."""

    source: str
    hint: str
    path: str = ""

    def at(self, key: str | int) -> "Where":
        step = f"[{key}]" if isinstance(key, int) else (f".{key}" if self.path else str(key))
        return dataclasses.replace(self, path=self.path + step)

    def error(self, problem: str) -> BadInput:
        field = f" field '{self.path}'" if self.path else ""
        return BadInput(f"{self.source}:{field} {problem}", self.hint)

    def expected(self, what: str, value: Any) -> BadInput:
        return self.error(f"must be {what}, got {shown(value)}")


def shown(value: Any, limit: int = 60) -> str:
    """A found value, short: 'a string "abc"', 'a list', 'null', '-3'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    if isinstance(value, str):
        text = value if len(value) <= limit else value[:limit] + "..."
        return f"the text {json.dumps(text)}"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def decode_text(raw: bytes, source: str, hint: str) -> str:
    """UTF-8 text (a leading byte-order mark is dropped); UTF-16 and other encodings are one-line bad input."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise BadInput(f"{source} is UTF-16; pie reads UTF-8", f"convert it (iconv -f UTF-16 -t UTF-8), or {hint}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise BadInput(f"{source} is not UTF-8 text (byte {err.start} is {raw[err.start:err.start + 1]!r})",
                       f"convert it to UTF-8, or {hint}") from None


def parse_json_text(text: str, source: str, hint: str) -> Any:
    """JSON values from text: invalid JSON, or nesting deeper than MAX_DEPTH, is one-line bad input."""
    try:
        data = json.loads(text)
    except RecursionError:
        field, place = _deep_place(text)
        raise BadInput(f"{source}{':' + field if field else ''} nests deeper than Python can read{place}", hint) from None
    except json.JSONDecodeError as err:
        raise BadInput(f"{source} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})", hint) from None
    depth_path = too_deep(data)
    if depth_path is not None:
        raise BadInput(f"{source}: field '{depth_path}' nests more than {MAX_DEPTH} levels deep; pie's files nest a few", hint)
    return data


def _deep_place(text: str) -> tuple[str, str]:
    """(" field 'a.b[1]'" or "", " (at line L column C)"): where `text` first nests past MAX_DEPTH, found by one scan
    of its brackets that keeps the path (for text Python's parser cannot descend into); ("", "") if none is found."""
    frames: list[list] = []  # [bracket, key or None, list index]
    in_string, escaped, start, last_string = False, False, 0, ""
    for offset, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string, last_string = False, text[start:offset]
            continue
        if char == '"':
            in_string, start = True, offset + 1
        elif char == ":" and frames and frames[-1][0] == "{":
            frames[-1][1] = last_string
        elif char == "," and frames and frames[-1][0] == "[":
            frames[-1][2] += 1
        elif char in "[{":
            if len(frames) >= MAX_DEPTH:
                steps = [f"[{index}]" if bracket == "[" else key for bracket, key, index in frames]
                while steps and steps[-1] in ("[0]", None):  # the bare run of brackets itself: name where it starts
                    steps.pop()
                path = "".join(step if step.startswith("[") or not n else f".{step}"
                               for n, step in enumerate(steps) if step is not None)
                line = text.count("\n", 0, offset) + 1
                column = offset - (text.rfind("\n", 0, offset) + 1) + 1
                return (f" field '{path}'" if path else ""), f" (at line {line} column {column})"
            frames.append([char, None, 0])
        elif char in "]}" and frames:
            frames.pop()
    return "", ""


def too_deep(data: Any, limit: int = MAX_DEPTH) -> str | None:
    """The JSON path where `data` first nests past `limit` levels, or None (iterative: no recursion)."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > limit:
            return path or "(top)"
        if isinstance(value, dict):
            stack.extend((item, f"{path}.{key}" if path else str(key), depth + 1) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{index}]", depth + 1) for index, item in enumerate(value))
    return None


def read_dataclass(cls: type, data: Any, where: Where, bounds: Mapping[str, Range] | None = None,
                   nested_bounds: Mapping[type, Mapping[str, Range]] | None = None) -> Any:
    """`cls(**fields)` from a JSON object, each field checked (module docstring). `bounds` apply to `cls`'s own
    fields, `nested_bounds[Other]` to the fields of a nested dataclass `Other`."""
    if not isinstance(data, dict):
        raise where.expected("an object", data)
    hints = typing.get_type_hints(cls)
    all_bounds = {cls: bounds or {}, **(nested_bounds or {})}
    values = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        here = where.at(field.name)
        if field.name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise here.error("is missing")
            continue
        values[field.name] = _value(hints[field.name], data[field.name], here, all_bounds[cls].get(field.name), all_bounds)
    try:
        return cls(**values)
    except BadInput as err:
        raise where.error(err.message) from None
    except (TypeError, ValueError) as err:
        raise where.error(str(err)) from None


def _value(annotation: Any, value: Any, where: Where, bound: Range | None, all_bounds: Mapping[type, Mapping[str, Range]]) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _value(options[0], value, where, bound, all_bounds)
        return value
    if dataclasses.is_dataclass(annotation):
        return read_dataclass(annotation, value, where, all_bounds.get(annotation), all_bounds)
    if annotation is bool:
        if not isinstance(value, bool):
            raise where.expected("true or false", value)
        return value
    if annotation in (int, float):
        return number(value, where, bound, integer=annotation is int)
    if annotation is str:
        if not isinstance(value, str):
            raise where.expected("text", value)
        return value
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise where.expected("an object", value)
        return value
    if origin is tuple or annotation is tuple:
        if not isinstance(value, list):
            raise where.expected("a list", value)
        item_type = args[0] if args else Any
        return tuple(_value(item_type, item, where.at(index), bound, all_bounds) for index, item in enumerate(value))
    if origin is list:
        if not isinstance(value, list):
            raise where.expected("a list", value)
        return list(value)
    return value


def number(value: Any, where: Where, bound: Range | None = None, integer: bool = False) -> int | float:
    """A finite number (an int within 64 bits when `integer`; an int is taken for a float) within `bound`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise where.expected("a whole number" if integer else "a number", value)
    if isinstance(value, float) and not math.isfinite(value):
        raise where.expected("a finite number", value)
    if isinstance(value, int) and abs(value) >= MAX_INT:
        raise where.expected("a number below 2**63", value)
    if bound is not None and not bound.holds(value):
        raise where.expected(bound.text(), value)
    return value if integer else float(value)
