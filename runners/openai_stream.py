"""Pieces of the `openai` runner that need no event loop: settings, request body, stream parsing,
and the reachability probe.

`StreamState` turns the `data:` payloads of one streamed `/v1/completions` response into token
timestamps (one per token when the server sends `token_ids`, else one per non-empty text chunk),
the server's usage counts, and an error if the stream carried one. `probe_endpoint` asks
`GET /v1/models` with bounded retries before a run, so an unreachable server is one clear error
naming the URL instead of a run of failed requests.

Left out: HTTP sending and concurrency (runners/openai_runner.py).
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from pie_core.errors import BadInput
from pie_core.inputs import parse_options
from runners.base import BenchRequest, RunnerSpec

PROMPT_FORMATS = ("token_ids", "text")
_OPTIONS: dict[str, type] = {"base_url": str, "model_name": str, "prompt_format": str, "request_timeout_s": float,
                             "connect_attempts": int, "connect_retry_s": float, "max_connections": int,
                             "vllm_extras": bool, "api_key": str, "warmup": bool, "server_metrics": str,
                             "scrape_interval_s": float}


@dataclass(frozen=True)
class OpenAISettings:
    base_url: str
    model_name: str | None = None
    prompt_format: str = "token_ids"
    request_timeout_s: float = 600.0
    connect_attempts: int = 3
    connect_retry_s: float = 1.0
    max_connections: int | None = None  # default: max_concurrency, else 256
    vllm_extras: bool = True
    warmup: bool = True
    api_key: str | None = field(default=None, repr=False)
    server_metrics: str | None = None  # a /metrics URL, "off", or None: base_url's root + /metrics when it answers
    scrape_interval_s: float = 0.5

    def __post_init__(self) -> None:
        parsed = urlparse(self.base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise BadInput(f"openai base_url {self.base_url!r} is not an http(s) URL",
                           "give the server's address, e.g. http://127.0.0.1:8000")
        if self.prompt_format not in PROMPT_FORMATS:
            raise BadInput(f"openai prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {self.prompt_format!r}")
        if not self.request_timeout_s > 0 or not self.connect_retry_s >= 0:
            raise BadInput("openai request_timeout_s must be > 0 and connect_retry_s >= 0, "
                           f"got {self.request_timeout_s} and {self.connect_retry_s}")
        if not 0.05 <= self.scrape_interval_s <= 60:
            raise BadInput(f"openai scrape_interval_s must be between 0.05 and 60 seconds, got {self.scrape_interval_s}",
                           "e.g. scrape_interval_s=0.5")
        if self.connect_attempts < 1 or (self.max_connections is not None and self.max_connections < 1):
            raise BadInput("openai connect_attempts and max_connections must be at least 1, "
                           f"got {self.connect_attempts} and {self.max_connections}")

    @classmethod
    def from_spec(cls, spec: RunnerSpec, environ: Mapping[str, str]) -> "OpenAISettings":
        options = parse_options("openai", spec.options, _OPTIONS)
        if "base_url" not in options:
            raise BadInput("the openai runner needs the option base_url",
                           "give the server's address, e.g. base_url=http://127.0.0.1:8000")
        options.setdefault("api_key", environ.get("OPENAI_API_KEY") or None)
        return cls(**options)

    @property
    def api_root(self) -> str:
        root = self.base_url.rstrip("/")
        return root if root.endswith("/v1") else root + "/v1"

    @property
    def completions_url(self) -> str:
        return self.api_root + "/completions"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def resolve_model_name(self, spec_model: str, served: list[str]) -> str:
        """The explicit option; else the spec's model if served (or nothing is listed); else the one served."""
        if self.model_name:
            return self.model_name
        if not served or spec_model in served:
            return spec_model
        if len(served) == 1:
            return served[0]
        raise BadInput(f"the server at {self.base_url} serves {', '.join(served)}, not '{spec_model}'",
                       "choose one with the option model_name")

    def to_config(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "completions_url": self.completions_url,
                "prompt_format": self.prompt_format, "request_timeout_s": self.request_timeout_s,
                "max_connections": self.max_connections, "vllm_extras": self.vllm_extras, "warmup": self.warmup,
                "api_key_set": bool(self.api_key), "scrape_interval_s": self.scrape_interval_s}


def completion_body(settings: OpenAISettings, model_name: str, request: BenchRequest) -> dict[str, Any]:
    """The JSON body of one streamed, greedy completion of exactly `output_len` tokens."""
    if settings.prompt_format == "text":
        if request.prompt is None:
            raise BadInput(f"request {request.request_id} has no text", "use prompt_format=token_ids")
        prompt: Any = request.prompt
    else:
        prompt = list(request.prompt_token_ids)
    body: dict[str, Any] = {"model": model_name, "prompt": prompt, "max_tokens": request.output_len,
                            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
    if settings.vllm_extras:
        body.update({"min_tokens": request.output_len, "ignore_eos": True, "return_token_ids": True})
    return body


@dataclass
class StreamState:
    """What one streamed response said so far."""

    token_times: list[float] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    completion_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None

    def feed(self, chunk: Any, at: float) -> None:
        """One decoded `data:` payload, received at clock time `at`. A payload that is not a completion chunk
        (a JSON value of another shape: the server's bug, or not an OpenAI server) sets `error`, naming what
        was wrong, and adds nothing; it never raises."""
        malformed = _malformed(chunk)
        if malformed is not None:
            self.error = f"malformed chunk: {malformed}"
            return
        if chunk.get("error"):
            error = chunk["error"]
            self.error = str(error.get("message", error) if isinstance(error, Mapping) else error)
            return
        for choice in chunk.get("choices") or ():
            ids = choice.get("token_ids") or ()
            text = choice.get("text") or ""
            if ids:
                self.token_ids.extend(ids)
                self.token_times.extend(at for _ in ids)
            elif text:
                self.token_times.append(at)
            self.text += text
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        usage = chunk.get("usage")
        if isinstance(usage, Mapping) and usage.get("completion_tokens") is not None:
            self.completion_tokens = usage["completion_tokens"]


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _malformed(chunk: Any) -> str | None:
    """What makes `chunk` something other than a completion chunk (or an error chunk), or None."""
    if not isinstance(chunk, Mapping):
        return f"a JSON {type(chunk).__name__}, not an object"
    choices = chunk.get("choices")
    if choices is not None and not isinstance(choices, list):
        return "'choices' is not a list"
    for index, choice in enumerate(choices or ()):
        if not isinstance(choice, Mapping):
            return f"choices[{index}] is not an object"
        ids, text, reason = choice.get("token_ids"), choice.get("text"), choice.get("finish_reason")
        if ids is not None and not (isinstance(ids, list) and all(_is_count(t) for t in ids)):
            return f"choices[{index}].token_ids is not a list of token ids"
        if text is not None and not isinstance(text, str):
            return f"choices[{index}].text is not a string"
        if reason is not None and not isinstance(reason, str):
            return f"choices[{index}].finish_reason is not a string"
    usage = chunk.get("usage")
    if isinstance(usage, Mapping) and usage.get("completion_tokens") is not None and not _is_count(usage["completion_tokens"]):
        return "usage.completion_tokens is not a count"
    return None


def probe_endpoint(settings: OpenAISettings) -> list[str]:
    """The model ids the server lists; BadInput naming the URL if it cannot be reached."""
    url = settings.api_root + "/models"
    last_error = ""
    for attempt in range(settings.connect_attempts):
        if attempt:
            time.sleep(settings.connect_retry_s)
        try:
            request = urllib.request.Request(url, headers=settings.headers())
            with urllib.request.urlopen(request, timeout=min(10.0, settings.request_timeout_s)) as response:
                listing = json.loads(response.read().decode("utf-8") or "{}")
            return [str(item.get("id")) for item in listing.get("data", []) if isinstance(item, Mapping)]
        except urllib.error.HTTPError as err:
            if err.code in (401, 403):
                raise BadInput(f"{url} refused the request (HTTP {err.code})",
                               "set OPENAI_API_KEY or the option api_key") from None
            return []  # reachable; a server without /v1/models is still usable
        except (urllib.error.URLError, OSError, json.JSONDecodeError) as err:
            last_error = str(getattr(err, "reason", err))
    raise BadInput(f"cannot reach {url} after {settings.connect_attempts} attempts ({last_error})",
                   "start the server, or fix the option base_url")
