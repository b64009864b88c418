"""Mutations of valid pie files for the fuzz tests: what a hand edit, a crash or another tool does to a file.

A mutation takes the text of a valid file (a JSON document, or JSON lines) and returns bytes:

- `replace`: one value, anywhere in the tree, becomes another type, a negative or huge number, NaN or inf;
- `delete`: one key goes;
- `duplicate`: one key appears twice with different values (Python's json keeps the last);
- `deep`: one value becomes a list nested far deeper than Python's recursion limit;
- `truncate`: the file is cut at some byte (a crash mid-write);
- `encode`: the file is re-encoded (UTF-16, a BOM, Latin-1 with a non-ASCII character).

Hypothesis draws which mutation, where and with what; `describe` says it in words for a failure report.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

KINDS = ("replace", "delete", "duplicate", "deep", "truncate", "encode")
VALUES = ("text", "", -1, -1e9, 0, 0.5, 1e308, 2**70, math.nan, math.inf, -math.inf, None, True, [], {}, [1, "a"], {"a": 1})
ENCODINGS = ("utf-16", "utf-8-sig", "latin-1")
DEEP = 100_000
PLACEHOLDER = "\u0000pie-deep\u0000"


@dataclass(frozen=True)
class Mutation:
    kind: str
    line: int  # which JSON line (0 for a JSON document)
    where: int  # index into the tree's paths (mod their count)
    value: Any
    cut: float  # truncate: fraction of the bytes kept
    encoding: str

    def describe(self) -> str:
        return f"{self.kind} line {self.line} path #{self.where} value {self.value!r} cut {self.cut:.2f} {self.encoding}"


def mutations() -> st.SearchStrategy[Mutation]:
    return st.builds(Mutation, kind=st.sampled_from(KINDS), line=st.integers(0, 50), where=st.integers(0, 10_000),
                     value=st.sampled_from(VALUES), cut=st.floats(0.0, 0.999), encoding=st.sampled_from(ENCODINGS))


def tree_paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a JSON tree (dict keys and the first few list items), the root included."""
    found = [prefix]
    if isinstance(tree, dict):
        for key, value in tree.items():
            found += tree_paths(value, prefix + (key,))
    elif isinstance(tree, list):
        for index, value in enumerate(tree[:3]):
            found += tree_paths(value, prefix + (index,))
    return found


def _parent(tree: Any, path: tuple) -> Any:
    for step in path[:-1]:
        tree = tree[step]
    return tree


def mutate_document(text: str, mutation: Mutation) -> tuple[bytes, tuple]:
    """(mutated bytes, the path it touched: () for whole-file mutations)."""
    if mutation.kind == "truncate":
        raw = text.encode("utf-8")
        return raw[: max(1, int(len(raw) * mutation.cut))], ()
    if mutation.kind == "encode":
        return (text.replace('"', '"\u00e9', 1) if mutation.encoding == "latin-1" else text).encode(mutation.encoding), ()
    tree = json.loads(text)
    paths = [p for p in tree_paths(tree) if p] or [()]
    path = paths[mutation.where % len(paths)]
    if not path:
        return text.encode("utf-8"), ()
    parent, key = _parent(tree, path), path[-1]
    if mutation.kind == "delete":
        if isinstance(parent, dict):
            del parent[key]
        else:
            parent.pop(key)
        return json.dumps(tree).encode("utf-8"), path
    if mutation.kind == "deep":
        parent[key] = PLACEHOLDER
        return json.dumps(tree).replace(json.dumps(PLACEHOLDER), "[" * DEEP + "]" * DEEP).encode("utf-8"), path
    if mutation.kind == "duplicate" and isinstance(parent, dict):
        # the key once with its own value, then again with the drawn one: the reader sees the second
        original = json.dumps({key: parent[key]})[1:-1]
        parent[key] = mutation.value
        body = json.dumps(tree, allow_nan=True)
        replaced = json.dumps({key: mutation.value})[1:-1]
        return body.replace(replaced, original + ", " + replaced, 1).encode("utf-8"), path
    parent[key] = mutation.value
    return json.dumps(tree, allow_nan=True).encode("utf-8"), path


def mutate_lines(text: str, mutation: Mutation) -> tuple[bytes, tuple]:
    """A JSON-lines file: whole-file mutations act on the file, the others on one line."""
    if mutation.kind in ("truncate", "encode"):
        return mutate_document(text, mutation)
    lines = text.splitlines()
    index = mutation.line % len(lines)
    mutated, path = mutate_document(lines[index], mutation)
    lines[index] = mutated.decode("utf-8")
    return ("\n".join(lines) + "\n").encode("utf-8"), (index, *path)
