"""Text in and out of `pie serve`: prompts to token ids, chat messages to a prompt, tokens back to text.

`ServeText.load(model)` uses the model directory's own Hugging Face tokenizer when it has one (text in,
text out; chat through its chat template when it has one, else `PLAIN_CHAT_TEMPLATE`). A registry
shape, or a directory without tokenizer files, gets the labelled approximate tokenizer the workloads
use (runners/workloads/tokenize.py): text prompts are split and hashed into the vocabulary, and each
generated token comes back as the placeholder text `[ID]`, so a client that counts text chunks, usage
or token ids counts the same tokens. `description` says which of the two it is.

`ChoiceText` follows one choice's tokens: incremental detokenization (the Rust tokenizer's `DecodeStream`
where it applies, else a short window decoded per step; text that ends inside a multi-byte character is
held back) and stop strings (the text is cut before the stop string, which is never sent; the last
characters that could begin one are held back).

Left out: logprobs, tool calls, and multi-modal content.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pie_core.errors import BadInput
from runners.workloads.tokenize import ApproximateTokenizer, has_tokenizer, load_tokenizer

PLAIN_CHAT_TEMPLATE = "{role}: {content}\n"  # one line per message, then "assistant:" to answer
PLAIN_CHAT_ANSWER = "assistant:"
_REPLACEMENT = "\ufffd"  # what a partial UTF-8 sequence decodes to


class _HFDecoder:
    """vLLM's incremental detokenization: decode a window from `prefix` and keep what is new past `read`."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = self.read = 0

    def push(self, token_ids: Sequence[int]) -> str:
        self.ids.extend(token_ids)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        after = decode(self.ids[self.prefix:], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith(_REPLACEMENT):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""


class _StreamDecoder:
    """The Rust tokenizer's own incremental decoder (`tokenizers.decoders.DecodeStream`, which vLLM's fast
    detokenizer uses too): the text of decoding all ids at once, held back inside a multi-byte character,
    at about 0.5 µs a token where `_HFDecoder` spends about 15 µs decoding its window twice (OPT-125m
    tokens, this project's Xeon). Ids the tokenizer does not have (a model's padded vocabulary) add no text,
    as in `_HFDecoder`."""

    def __init__(self, backend: Any, stream_type: Any):
        self.backend, self.stream = backend, stream_type(skip_special_tokens=True)
        self.size = backend.get_vocab_size(with_added_tokens=True)

    def push(self, token_ids: Sequence[int]) -> str:
        pieces = []
        for token in token_ids:
            if 0 <= token < self.size:
                piece = self.stream.step(self.backend, token)
                if piece:
                    pieces.append(piece)
        return "".join(pieces)


def _decoder(tokenizer: Any) -> Any:
    """`_StreamDecoder` where the tokenizer has a Rust backend and decoding changes nothing after it (no
    `clean_up_tokenization_spaces`), else `_HFDecoder`."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        from tokenizers.decoders import DecodeStream
    except ImportError:  # tokenizers before 0.21
        return _HFDecoder(tokenizer)
    if backend is None or getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return _HFDecoder(tokenizer)
    return _StreamDecoder(backend, DecodeStream)


class _PlaceholderDecoder:
    @staticmethod
    def push(token_ids: Sequence[int]) -> str:
        return "".join(f"[{token}]" for token in token_ids)


class ServeText:
    def __init__(self, tokenizer: Any, description: str, approximate: ApproximateTokenizer | None = None):
        self.tokenizer, self.description, self.approximate = tokenizer, description, approximate

    @classmethod
    def load(cls, model: str) -> "ServeText":
        path = Path(model).expanduser()
        if has_tokenizer(path):
            from transformers import AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            except (OSError, ValueError) as err:
                raise BadInput(f"cannot load the tokenizer in '{path}': {err}",
                               "fix or remove the tokenizer files; without them an approximation is used") from None
            return cls(tokenizer, f"model tokenizer ({path}): text in, text out")
        approximate = load_tokenizer(model)
        assert isinstance(approximate, ApproximateTokenizer)
        return cls(None, f"{approximate.description}; outputs are token ids with placeholder text [ID] per token",
                   approximate)

    @property
    def exact(self) -> bool:
        return self.tokenizer is not None

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            return self.approximate.encode(text)
        return list(self.tokenizer(text).input_ids)

    def chat_prompt(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        """The prompt's token ids: the tokenizer's chat template when it has one, else PLAIN_CHAT_TEMPLATE."""
        if self.tokenizer is not None and getattr(self.tokenizer, "chat_template", None):
            conversation = [{"role": role, "content": content} for role, content in messages]
            from jinja2 import TemplateError  # transformers renders chat templates with jinja2

            try:
                ids = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
            except TemplateError as err:  # the template's own raise_exception(...): roles it does not take, say
                raise BadInput(f"the model's chat template refused these messages: {err}",
                               "send the roles and order the model's template expects") from None
            return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        text = "".join(PLAIN_CHAT_TEMPLATE.format(role=role, content=content) for role, content in messages)
        return self.encode(text + PLAIN_CHAT_ANSWER)

    def choice(self, stop: Sequence[str] = ()) -> "ChoiceText":
        return ChoiceText(_decoder(self.tokenizer) if self.tokenizer is not None else _PlaceholderDecoder(), stop)


class ChoiceText:
    """The text of one choice so far; `push` returns the text to send now and whether a stop string ended it."""

    def __init__(self, decoder: Any, stop: Sequence[str]):
        self.decoder, self.stop = decoder, tuple(stop)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.text = ""
        self.sent = 0
        self.stopped = False

    def push(self, token_ids: Sequence[int], final: bool) -> str:
        if self.stopped:
            return ""
        searched_from = max(0, len(self.text) - self.hold)
        self.text += self.decoder.push(token_ids)
        cut = min((at for at in (self.text.find(s, searched_from) for s in self.stop) if at >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = self.text[:cut], True
        upto = len(self.text) if (final or self.stopped) else max(self.sent, len(self.text) - self.hold)
        delta, self.sent = self.text[self.sent:upto], upto
        return delta
