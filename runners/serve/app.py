"""The HTTP side of `pie serve`: aiohttp.web routes, checks, and streaming (docs/serve.md).

Routes: `GET /health`, `GET /v1/models`, `GET /metrics`, `POST /v1/completions`,
`POST /v1/chat/completions`. A generate request is parsed (protocol.py), its model name checked
(404), its prompts tokenized (text.py) and checked against the context and the device budget (400),
then admitted unless `max_queue` requests already wait for their first token (503 with
`Retry-After`), and handed to the engine thread. Its tokens come back on this loop in one
`deliver(events)` call per engine step and are streamed as SSE chunks (one per token and choice,
`data: [DONE]` last) or collected into one JSON response. A streaming request's handler writes its
first chunk and its end; the token chunks in between `deliver` writes itself where it can
(`_DirectWriter`), so the handler is not woken once per token. A client that goes away cancels its
handler (aiohttp's handler cancellation), and the handler's `finally` aborts what is still running,
which frees its blocks. With an API key, every `/v1/` route needs `Authorization: Bearer KEY` (401).

Left out: starting, logging and stopping (server.py), and the engine (engine_loop.py).
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web

from pie_core.errors import BadInput
from runners.engine.config import check_request
from runners.engine.sampling_params import SamplingParams
from runners.serve.engine_loop import TokenEvent
from runners.serve.metrics import CONTENT_TYPE
from runners.serve.protocol import ApiError, GenerateRequest, bad, parse_request
from runners.serve.responses import ChoiceChunks, ChoiceState, ResponseHead, error_chunk, full_response, usage_chunk

RETRY_AFTER_S = 1
# set on a request once its streamed response has sent its headers (a typed key where aiohttp has them, 3.12 on)
_PREPARED = web.RequestKey("pie_response_prepared", bool) if hasattr(web, "RequestKey") else "pie_response_prepared"


@dataclass(frozen=True)
class ServedModel:
    """What the routes need to know about the model behind them."""

    name: str  # the served model name
    root: str  # --model as given
    engine_config: Any  # runners.engine.config.EngineConfig
    vocab_size: int
    num_device_blocks: int  # resident, after staging
    text_description: str


@dataclass(eq=False)
class _Route:
    """Where `deliver` sends one choice's events: its handler's queue, or, while `direct` is set, straight
    onto the connection."""

    events: asyncio.Queue
    choice: ChoiceState
    direct: _DirectWriter | None = None


class _DirectWriter:
    """Writes one streaming choice's token chunks from `deliver`, without waking its handler.

    Why: waking a handler once per token and stream (its queue, a task step, aiohttp's async write path)
    cost the HTTP thread more CPU than building and sending the chunk, and that thread takes its CPU from
    the engine's. The bytes are the ones `StreamResponse.write` sends for the same data: the response's
    HTTP/1.1 chunked framing, written to the same transport, in order. It is used only between the
    handler's own writes (aiohttp sends the headers with the first one, and nothing may overtake what the
    handler writes), for one choice without stop strings (a stop string ends the stream, which is the
    handler's to do), and only while the connection is open and its write buffer is below the transport's
    high-water mark; otherwise an event takes the handler's path, whose writes wait on the buffer."""

    def __init__(self, route: _Route, transport: asyncio.WriteTransport, high_water: int, chunks: ChoiceChunks,
                 continuous_usage: list[ChoiceState] | None):
        self.route, self.transport, self.high_water = route, transport, high_water
        self.chunks, self.continuous_usage = chunks, continuous_usage

    @classmethod
    def open(cls, route: _Route | None, request: web.Request, response: web.StreamResponse, chunks: ChoiceChunks,
             continuous_usage: list[ChoiceState] | None) -> _DirectWriter | None:
        """A writer for a prepared response whose framing is plain chunked encoding, else None (the handler's path)."""
        transport = request.transport
        if route is None or transport is None or response.headers.get(hdrs.TRANSFER_ENCODING) != "chunked" or \
                hdrs.CONTENT_ENCODING in response.headers:
            return None
        try:
            high_water = transport.get_write_buffer_limits()[1]
        except (AttributeError, NotImplementedError):  # a transport without flow-control limits
            return None
        return cls(route, transport, high_water, chunks, continuous_usage)

    def ready(self) -> bool:
        return not self.transport.is_closing() and self.transport.get_write_buffer_size() < self.high_water

    def send(self, new_ids: tuple[int, ...], delta: str) -> None:
        data = self.chunks.chunk(self.route.choice, new_ids, delta, self.continuous_usage).encode()
        self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))

    def pause(self) -> None:
        self.route.direct = None

    def resume(self) -> None:
        if not self.route.choice.done:
            self.route.direct = self


class ServeApp:
    def __init__(self, model: ServedModel, text: Any, metrics: Any, api_key: str | None, max_queue: int,
                 log: Callable[[str], None] = print):
        self.model, self.text, self.metrics, self.api_key, self.max_queue = model, text, metrics, api_key, max_queue
        self.log = log
        self.engine: Any = None  # the EngineLoop, set by the server once the loop exists
        self.streams: dict[str, _Route] = {}
        self.queued = 0  # admitted requests (choices) without a first event yet
        self.active = 0  # generate handlers running
        self.accepting = True

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._auth])
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    # --- the engine's hand-off, on this loop --------------------------------------------------------
    def deliver(self, events: list[TokenEvent]) -> None:
        """Hand each event to its choice: a token of a stream whose direct path is on (and has nothing queued
        before it) is decoded and written here; everything else goes to the handler's queue."""
        for event in events:
            route = self.streams.get(event.request_id)
            if route is None:
                continue
            direct = route.direct
            if direct is not None and not event.finished and route.events.empty() and direct.ready():
                new_ids, delta = self._advance(route.choice, event)
                if new_ids or delta:
                    direct.send(new_ids, delta)
            else:
                route.events.put_nowait((route.choice, event))

    # --- middlewares and small routes ---------------------------------------------------------------
    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as err:
            headers = {"Retry-After": str(RETRY_AFTER_S)} if err.status == 503 else None
            return web.json_response(err.body(), status=err.status, headers=headers)
        except web.HTTPException as err:
            if err.status < 400:
                raise
            return web.json_response(ApiError(err.status, f"{err.reason}: {request.method} {request.path}").body(),
                                     status=err.status)
        except (asyncio.CancelledError, ConnectionError):
            raise  # the client went away: nothing to answer
        except Exception as err:  # a bug in one request fails that request, in the API's shape
            self.log(f"pie serve: {request.method} {request.path} failed: {type(err).__name__}: {err}")
            if request.get(_PREPARED):
                raise
            return web.json_response(ApiError(500, f"internal error: {type(err).__name__}: {err}").body(), status=500)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.api_key and request.path.startswith("/v1/") and \
                request.headers.get("Authorization", "") != f"Bearer {self.api_key}":
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'")
        return await handler(request)

    async def _health(self, _request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _models(self, _request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": self.model.name, "object": "model", "created": int(time.time()), "owned_by": "pie",
            "root": self.model.root, "max_model_len": self.model.engine_config.model_len,
            "tokenizer": self.model.text_description}]})

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    # --- generation ---------------------------------------------------------------------------------
    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        if not self.accepting:
            raise ApiError(503, "the server is shutting down")
        arrival = time.perf_counter()
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise bad(f"the request body is not valid JSON: {err}") from None
        except RecursionError:  # arrays or objects nested past Python's recursion limit
            raise bad("the request body nests deeper than this server reads; no field of a request nests more "
                      "than a few levels") from None
        parsed = parse_request(body, chat)
        if parsed.model is not None and parsed.model != self.model.name:
            raise ApiError(404, f"The model `{parsed.model}` does not exist; this server serves `{self.model.name}`", "model")
        if parsed.stop and not self.text.exact:
            raise bad("'stop' strings need the model's tokenizer; this server uses an approximate one "
                      "(use stop_token_ids)", "stop")
        try:
            prompts = [self.text.chat_prompt(parsed.messages)] if chat else \
                [list(p) if isinstance(p, tuple) else self.text.encode(p) for p in parsed.prompts]
        except BadInput as err:
            raise bad(err.one_line(), "messages" if chat else "prompt") from None
        params = [self._params(parsed, ids) for ids in prompts]
        if self.queued + len(prompts) > self.max_queue:
            raise ApiError(503, f"{self.queued} requests are waiting (the limit is --max-queue {self.max_queue}); retry later")
        head = ResponseHead(f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", int(time.time()), self.model.name,
                            chat, parsed.return_token_ids)
        events: asyncio.Queue = asyncio.Queue()
        choices = [ChoiceState(index, f"{head.response_id}-{index}", ids, self.text.choice(parsed.stop))
                   for index, ids in enumerate(prompts)]
        self.active += 1
        try:
            for choice, choice_params in zip(choices, params):
                self.streams[choice.request_id] = _Route(events, choice)
                self.queued += 1
                self.engine.submit(choice.request_id, choice.prompt_token_ids, choice_params, arrival)
            if parsed.stream:
                return await self._stream(request, head, parsed, choices, events)
            return await self._collect(head, choices, events)
        finally:
            self.active -= 1
            for choice in choices:
                self.streams.pop(choice.request_id, None)
                if not choice.started:
                    self.queued -= 1
                if not choice.done:
                    self.engine.abort(choice.request_id)

    def _params(self, parsed: GenerateRequest, prompt: list[int]) -> SamplingParams:
        config = self.model.engine_config
        if not prompt:
            raise bad("'prompt' is empty: give at least one token id, or text", "prompt")
        room = config.model_len - len(prompt)
        max_tokens = parsed.max_tokens if parsed.max_tokens is not None else max(1, room)
        if len(prompt) + max_tokens > config.model_len:
            raise bad(f"This model's maximum context length is {config.model_len} tokens. However, you requested "
                      f"{len(prompt) + max_tokens} tokens ({len(prompt)} in the prompt, {max_tokens} in the completion). "
                      "Reduce the prompt or max_tokens.", "max_tokens")
        try:
            check_request("request", prompt, max_tokens, config, self.model.vocab_size, self.model.num_device_blocks)
            return SamplingParams(max_tokens=max_tokens, min_tokens=parsed.min_tokens, temperature=parsed.temperature,
                                  top_p=parsed.top_p, seed=parsed.seed, ignore_eos=parsed.ignore_eos,
                                  stop_token_ids=parsed.stop_token_ids)
        except BadInput as err:
            raise bad(err.one_line(), "prompt" if "prompt" in str(err) or "token ids" in str(err) else None) from None

    async def _events(self, events: asyncio.Queue) -> list[tuple[ChoiceState, TokenEvent]]:
        batch = [await events.get()]
        while not events.empty():
            batch.append(events.get_nowait())
        return batch

    def _advance(self, choice: ChoiceState, event: TokenEvent) -> tuple[tuple[int, ...], str]:
        """Apply one event to its choice: the new token ids and the text to send now."""
        if not choice.started:
            choice.started = True
            self.queued -= 1
        if event.finished and event.error is not None:
            choice.finish_reason = "error"
            return (), ""
        new_ids = event.token_ids
        choice.token_ids.extend(new_ids)
        delta = choice.text.push(new_ids, final=event.finished)
        choice.output += delta
        if choice.text.stopped:
            choice.finish_reason = "stop"
            if not event.finished:
                self.streams.pop(choice.request_id, None)
                self.engine.abort(choice.request_id)
        elif event.finished:
            choice.finish_reason = event.finish_reason or "stop"
        return new_ids, delta

    async def _collect(self, head: ResponseHead, choices: list[ChoiceState], events: asyncio.Queue) -> web.Response:
        while not all(c.done for c in choices):
            for choice, event in await self._events(events):
                self._advance(choice, event)
                if choice.finish_reason == "error":
                    raise ApiError(event.status, f"request failed: {event.error}")
        return web.json_response(full_response(head, choices))

    async def _stream(self, request: web.Request, head: ResponseHead, parsed: GenerateRequest,
                      choices: list[ChoiceState], events: asyncio.Queue) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        request[_PREPARED] = True  # from here an error can only go into the stream, not into a new response
        chunks = [ChoiceChunks(head, choice.index) for choice in choices]
        continuous_usage = choices if parsed.continuous_usage_stats else None
        direct = _DirectWriter.open(self._direct_route(choices), request, response, chunks[0], continuous_usage)
        try:
            while not all(c.done for c in choices):
                lines = []
                for choice, event in await self._events(events):
                    new_ids, delta = self._advance(choice, event)
                    if choice.finish_reason == "error":
                        lines.append(error_chunk(f"request failed: {event.error}", event.status))
                        await response.write("".join(lines).encode() + b"data: [DONE]\n\n")
                        return response
                    if new_ids or delta or choice.done:
                        lines.append(chunks[choice.index].chunk(choice, new_ids, delta, continuous_usage))
                if lines:
                    await self._write(response, direct, "".join(lines).encode())
            tail = usage_chunk(head, choices) if parsed.include_usage else ""
            await response.write(tail.encode() + b"data: [DONE]\n\n")
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away; `finally` in _generate aborts what still runs
        return response

    def _direct_route(self, choices: list[ChoiceState]) -> _Route | None:
        """The route whose tokens `deliver` may write itself: a stream of one choice without stop strings."""
        if len(choices) != 1 or choices[0].text.stop:
            return None
        return self.streams.get(choices[0].request_id)

    @staticmethod
    async def _write(response: web.StreamResponse, direct: _DirectWriter | None, data: bytes) -> None:
        """The handler's write; the direct path is off while it runs (nothing may overtake these bytes) and on
        after it (the headers have gone out with the first bytes)."""
        if direct is None:
            await response.write(data)
            return
        direct.pause()
        await response.write(data)
        direct.resume()
