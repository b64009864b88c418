"""Turning workload text into token ids: the model's own tokenizer, or a labelled approximation.

`load_tokenizer(model)` uses the Hugging Face tokenizer saved in a local model directory
(never downloads). A registry name, or a directory without tokenizer files, gets
`ApproximateTokenizer`: a deterministic split into words and punctuation marks, each mapped
to an id by a stable hash into the model's vocabulary. Its counts approximate BPE lengths,
not equal them; its `description` says so and ends up in the output and the record.

Left out: decoding text back (benchmarks compare token ids), chat templates.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Protocol

from pie_core.errors import BadInput
from pie_core.shapes import resolve_model

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
_PIECES = re.compile(r"\w+|[^\w\s]", re.UNICODE)
RESERVED_IDS = 4  # ids below this (pad/bos/eos/unk in most vocabularies) are never produced


class TextTokenizer(Protocol):
    description: str
    exact: bool  # True when this is the model's own tokenizer
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...


class HFTokenizer:
    def __init__(self, directory: Path):
        from transformers import AutoTokenizer

        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError) as err:
            raise BadInput(f"cannot load the tokenizer in '{directory}': {err}",
                           "fix or remove the tokenizer files; without them an approximation is used") from None
        self.description = f"model tokenizer ({directory})"
        self.exact = True
        self.vocab_size = len(self._tokenizer)

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer(text).input_ids)


class ApproximateTokenizer:
    """Words and punctuation marks, each hashed (blake2b) to an id in [RESERVED_IDS, vocab_size)."""

    def __init__(self, vocab_size: int, reason: str):
        self.vocab_size = vocab_size
        self.exact = False
        self.description = (f"approximate: word/punctuation split, ids hashed into the {vocab_size}-token vocabulary "
                            f"({reason}); lengths approximate the model tokenizer's")

    def _id(self, piece: str) -> int:
        digest = int.from_bytes(hashlib.blake2b(piece.encode("utf-8"), digest_size=8).digest(), "little")
        span = self.vocab_size - RESERVED_IDS if self.vocab_size > 2 * RESERVED_IDS else self.vocab_size
        return (self.vocab_size - span) + digest % span

    def encode(self, text: str) -> list[int]:
        return [self._id(piece) for piece in _PIECES.findall(text)]


def has_tokenizer(directory: Path) -> bool:
    return directory.is_dir() and any((directory / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(model: str) -> TextTokenizer:
    """The model directory's tokenizer when it has one, else the labelled approximation."""
    path = Path(model).expanduser()
    if has_tokenizer(path):
        return HFTokenizer(path)
    reason = f"no tokenizer files in '{path}'" if path.is_dir() else f"'{model}' is a registry name without a tokenizer"
    return ApproximateTokenizer(resolve_model(model).vocab_size, reason)
