"""The JSON that `pie serve` sends back, in the OpenAI/vLLM shapes (torch-free, pure functions).

`ChoiceState` is one choice of one HTTP request as tokens arrive (its text, token ids, finish reason);
`stream_chunk` builds one SSE chunk for a choice's new tokens, `usage_chunk` the last chunk with
`usage`, and `full_response` the non-streaming body. Completions use `text_completion` objects and
`choices[].text`; chat uses `chat.completion(.chunk)` and `delta`/`message`. With `return_token_ids`
(vLLM's extra) each choice carries its `token_ids` and its first chunk the `prompt_token_ids`.

Left out: HTTP, and turning token ids into text (text.py).
"""
from __future__ import annotations

import json
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


def stream_chunk(head: ResponseHead, choice: ChoiceState, new_ids: list[int], delta: str,
                 continuous_usage: list[ChoiceState] | None) -> str:
    """One `data:` line for `choice`'s new tokens (and its finish reason, once it has one)."""
    if head.chat:
        message: dict[str, Any] = {"content": delta}
        if not choice.sent_first:
            message = {"role": "assistant", "content": delta}
        item: dict[str, Any] = {"index": choice.index, "delta": message, "logprobs": None,
                                "finish_reason": choice.finish_reason}
    else:
        item = {"index": choice.index, "text": delta, "logprobs": None, "finish_reason": choice.finish_reason}
    if head.return_token_ids:
        item["token_ids"] = list(new_ids)
        if not choice.sent_first:
            item["prompt_token_ids"] = list(choice.prompt_token_ids)
    choice.sent_first = True
    chunk = {**head.base(True), "choices": [item]}
    if continuous_usage is not None:
        chunk["usage"] = usage(continuous_usage)
    return sse(chunk)


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
