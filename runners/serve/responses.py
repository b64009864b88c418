"""The JSON that `pie serve` sends back, in the OpenAI/vLLM shapes (torch-free, no HTTP).

`ChoiceState` is one choice of one HTTP request as tokens arrive (its text, token ids, finish reason);
`ChoiceChunks` builds one SSE chunk for a choice's new tokens, `usage_chunk` the last chunk with
`usage`, and `full_response` the non-streaming body. Completions use `text_completion` objects and
`choices[].text`; chat uses `chat.completion(.chunk)` and `delta`/`message`. With `return_token_ids`
(vLLM's extra) each choice carries its `token_ids` and its first chunk the `prompt_token_ids`.

Left out: HTTP, and turning token ids into text (text.py).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from runners.serve.text import ChoiceText


@dataclass
class ChoiceState:
    index: int
    request_id: str
    prompt_token_ids: list[int]
    text: ChoiceText
    token_ids: list[int] = field(default_factory=list)
    output: str = ""
    finish_reason: str | None = None
    started: bool = False  # a first event (token or end) arrived
    sent_first: bool = False

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


def usage(choices: list[ChoiceState]) -> dict[str, int]:
    prompt = sum(len(c.prompt_token_ids) for c in choices)
    completion = sum(len(c.token_ids) for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@dataclass(frozen=True)
class ResponseHead:
    response_id: str
    created: int
    model: str
    chat: bool
    return_token_ids: bool

    def base(self, streaming: bool) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if streaming else "chat.completion") if self.chat else "text_completion"
        return {"id": self.response_id, "object": kind, "created": self.created, "model": self.model}


_compact = json.JSONEncoder(separators=(",", ":")).encode  # `json.dumps(x, separators=...)`, one encoder for all calls


class ChoiceChunks:
    """The `data:` lines of one choice of a streaming response, one per step's new tokens.

    A chunk is the head (id, object, created, model), the choice's index, its text (chat: its `delta`, with
    the role in the first chunk), `logprobs`, `finish_reason`, and with `return_token_ids` its `token_ids`
    (and `prompt_token_ids` in the first chunk), and with `continuous_usage_stats` the running `usage`. The
    fixed parts are serialized once here and only the variable ones per chunk: the text is the same as
    serializing the whole chunk (keys in this order, compact separators, ASCII escapes) at a fraction of
    the cost per token, which the HTTP thread pays for every token of every stream."""

    def __init__(self, head: ResponseHead, index: int):
        fixed = _compact({**head.base(True), "choices": [{"index": index}]})
        self.open = f"data: {fixed[:-len('}]}')]},"  # up to and including `"index":N,`
        if head.chat:
            self.first_text, self.text = '"delta":{"role":"assistant","content":', '"delta":{"content":'
            self.after_text = '},"logprobs":null,"finish_reason":'
        else:
            self.first_text = self.text = '"text":'
            self.after_text = ',"logprobs":null,"finish_reason":'
        self.token_ids = head.return_token_ids

    def chunk(self, choice: ChoiceState, new_ids: Sequence[int], delta: str,
              continuous_usage: list[ChoiceState] | None) -> str:
        """One `data:` line for `choice`'s new tokens (and its finish reason, once it has one)."""
        first = not choice.sent_first
        reason = choice.finish_reason
        parts = [self.open, self.first_text if first else self.text, _compact(delta), self.after_text,
                 "null" if reason is None else _compact(reason)]
        if self.token_ids:
            parts += [',"token_ids":', _compact(new_ids)]
            if first:
                parts += [',"prompt_token_ids":', _compact(choice.prompt_token_ids)]
        parts.append("}]")
        if continuous_usage is not None:
            parts += [',"usage":', _compact(usage(continuous_usage))]
        parts.append("}\n\n")
        choice.sent_first = True
        return "".join(parts)


def usage_chunk(head: ResponseHead, choices: list[ChoiceState]) -> str:
    return sse({**head.base(True), "choices": [], "usage": usage(choices)})


def error_chunk(message: str, status: int) -> str:
    kind = "service_unavailable" if status == 503 else "server_error"
    return sse({"error": {"message": message, "type": kind, "param": None, "code": status}})


def sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, separators=(',', ':'))}\n\n"


def full_response(head: ResponseHead, choices: list[ChoiceState]) -> dict[str, Any]:
    items = []
    for choice in choices:
        if head.chat:
            item: dict[str, Any] = {"index": choice.index, "message": {"role": "assistant", "content": choice.output},
                                    "logprobs": None, "finish_reason": choice.finish_reason}
        else:
            item = {"index": choice.index, "text": choice.output, "logprobs": None, "finish_reason": choice.finish_reason}
        if head.return_token_ids:
            item.update(token_ids=list(choice.token_ids), prompt_token_ids=list(choice.prompt_token_ids))
        items.append(item)
    return {**head.base(False), "choices": items, "usage": usage(choices)}
