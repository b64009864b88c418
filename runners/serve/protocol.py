"""Request bodies of `/v1/completions` and `/v1/chat/completions`, parsed into one frozen request, and
OpenAI-style errors (torch-free).

Every field is checked by type and range, and a field this server does not support is refused by name
(`ApiError`, a 400 whose body names the `param`), never ignored: the only fields accepted without an
effect are those given their neutral value (`repetition_penalty: 1`, `logprobs: null`, `n: 1`, ...),
which is what clients such as vLLM's benchmark send by default. vLLM's extras `min_tokens`,
`ignore_eos`, `stop_token_ids` and `return_token_ids` are supported.

Left out: tokenizing, length checks against the model (app.py), and everything about sampling
itself (runners/engine/sampler.py).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               500: "server_error", 503: "service_unavailable"}
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's and vLLM's default for /v1/completions
MAX_STOP_STRINGS = 8
SEED_RANGE = (-2**63, 2**63 - 1)  # vLLM's: a signed 64-bit integer
ROLES = ("system", "user", "assistant")

# Fields accepted only at a value that changes nothing (None is always accepted for these).
_NEUTRAL_COMMON: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "repetition_penalty": (1, 1.0),
    "top_k": (-1, 0), "min_p": (0, 0.0), "logit_bias": ({},), "best_of": (1,), "include_stop_str_in_output": (False,),
    "skip_special_tokens": (True,), "user": None}  # user: any string, metadata only (docs/serve.md)
_NEUTRAL_COMPLETION = {**_NEUTRAL_COMMON, "logprobs": (), "suffix": ("",), "echo": (False,), "n": (1,)}
_NEUTRAL_CHAT = {**_NEUTRAL_COMMON, "logprobs": (False,), "top_logprobs": (0,), "tools": ([],), "tool_choice": ("none",),
                 "parallel_tool_calls": (True, False), "response_format": ({"type": "text"},), "n": (1,),
                 "add_generation_prompt": (True,), "echo": (False,)}
_SUPPORTED_COMMON = ("model", "max_tokens", "min_tokens", "ignore_eos", "temperature", "top_p", "seed", "stop",
                     "stop_token_ids", "stream", "stream_options", "return_token_ids")


class ApiError(Exception):
    """An OpenAI-style error: HTTP `status`, a message, and the request field it is about."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.status}}


def bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param)


@dataclass(frozen=True)
class GenerateRequest:
    """One parsed request. `prompts`: text or token-id tuples (completions); `messages`: (role, text) pairs (chat)."""

    chat: bool
    model: str | None
    prompts: tuple[str | tuple[int, ...], ...] = ()
    messages: tuple[tuple[str, str], ...] = ()
    max_tokens: int | None = None  # None: what the context leaves (chat), DEFAULT_COMPLETION_MAX_TOKENS (completions)
    min_tokens: int = 0
    ignore_eos: bool = False
    temperature: float = 1.0  # OpenAI's default
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    stream: bool = False
    include_usage: bool = False
    continuous_usage_stats: bool = False
    return_token_ids: bool = False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(body: Mapping[str, Any], name: str, minimum: int, default: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if not _is_int(value) or value < minimum:
        raise bad(f"'{name}' must be an integer >= {minimum}, got {value!r}", name)
    return value


def _number(body: Mapping[str, Any], name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(f"'{name}' must be a number, got {value!r}", name)
    if value > high or value < low or (low_open and value == low):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise bad(f"'{name}' must be in {interval}, got {value!r}", name)
    return float(value)


def _bool(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad(f"'{name}' must be true or false, got {value!r}", name)
    return value


def _token_ids(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(_is_int(t) and t >= 0 for t in value):
        raise bad(f"'{name}' must be a list of non-negative token ids", name)
    return tuple(value)


def _check_fields(body: Mapping[str, Any], supported: tuple[str, ...], neutral: Mapping[str, Any]) -> None:
    for name, value in body.items():
        if name in supported:
            continue
        if name not in neutral:
            raise bad(f"'{name}' is not supported by pie serve (docs/serve.md lists the fields)", name)
        accepted = neutral[name]
        if value is not None and accepted is not None and not any(
                value == a and isinstance(value, bool) == isinstance(a, bool) for a in accepted):
            raise bad(f"'{name}' is supported only at its neutral value; pie serve does not implement {name}={value!r}", name)


def _prompts(value: Any) -> tuple[str | tuple[int, ...], ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(_is_int(t) for t in value):
        return (_token_ids(value, "prompt"),)
    if isinstance(value, list) and value and all(isinstance(p, (str, list)) for p in value):
        return tuple(p if isinstance(p, str) else _token_ids(p, "prompt") for p in value)
    raise bad("'prompt' must be text, a list of token ids, or a non-empty list of either", "prompt")


def _messages(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise bad("'messages' must be a non-empty list of {role, content}", "messages")
    parsed = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, Mapping):
            raise bad(f"'{where}' must be an object with role and content", where)
        extra = set(message) - {"role", "content", "name"}
        if extra:
            raise bad(f"'{where}.{sorted(extra)[0]}' is not supported by pie serve", f"{where}.{sorted(extra)[0]}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise bad(f"'{where}.role' must be one of {', '.join(ROLES)}, got {role!r}", f"{where}.role")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise bad(f"'{where}.content' parts must be {{type: text, text}}; pie serve takes text only", f"{where}.content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise bad(f"'{where}.content' must be text, got {content!r}", f"{where}.content")
        parsed.append((role, content))
    return tuple(parsed)


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOP_STRINGS:
        raise bad(f"'stop' must be a non-empty string or a list of at most {MAX_STOP_STRINGS} of them", "stop")
    return tuple(stops)


def parse_request(body: Any, chat: bool) -> GenerateRequest:
    """The request of one JSON body (already decoded); ApiError(400) naming the field that is wrong."""
    if not isinstance(body, Mapping):
        raise bad("the request body must be a JSON object")
    supported = _SUPPORTED_COMMON + (("messages", "max_completion_tokens") if chat else ("prompt",))
    _check_fields(body, supported, _NEUTRAL_CHAT if chat else _NEUTRAL_COMPLETION)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad(f"'model' must be a string, got {model!r}", "model")
    if chat:
        if "messages" not in body:
            raise bad("'messages' is required", "messages")
        source: dict[str, Any] = {"messages": _messages(body["messages"])}
        max_tokens = _int(body, "max_completion_tokens", 1, None)
        max_tokens = _int(body, "max_tokens", 1, max_tokens)
    else:
        if "prompt" not in body:
            raise bad("'prompt' is required", "prompt")
        source = {"prompts": _prompts(body["prompt"])}
        max_tokens = _int(body, "max_tokens", 1, DEFAULT_COMPLETION_MAX_TOKENS)
    min_tokens = _int(body, "min_tokens", 0, 0)
    if max_tokens is not None and min_tokens > max_tokens:
        raise bad(f"'min_tokens' ({min_tokens}) must not exceed 'max_tokens' ({max_tokens})", "min_tokens")
    stream = _bool(body, "stream")
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise bad("'stream_options' is only allowed when 'stream' is true", "stream_options")
        if not isinstance(options, Mapping) or set(options) - {"include_usage", "continuous_usage_stats"}:
            raise bad("'stream_options' takes include_usage and continuous_usage_stats", "stream_options")
    options = options or {}
    seed = body.get("seed")
    if seed is not None and not (_is_int(seed) and SEED_RANGE[0] <= seed <= SEED_RANGE[1]):
        raise bad(f"'seed' must be a 64-bit integer (from {SEED_RANGE[0]} to {SEED_RANGE[1]}), got {seed!r}", "seed")
    stop_ids = body.get("stop_token_ids")
    return GenerateRequest(
        chat=chat, model=model, max_tokens=max_tokens, min_tokens=min_tokens, ignore_eos=_bool(body, "ignore_eos"),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0), top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        seed=seed, stop=_stop(body.get("stop")),
        stop_token_ids=() if stop_ids is None else _token_ids(stop_ids, "stop_token_ids"), stream=stream,
        include_usage=_bool(options, "include_usage"), continuous_usage_stats=_bool(options, "continuous_usage_stats"),
        return_token_ids=_bool(body, "return_token_ids"), **source)
