"""The `openai` runner: any OpenAI-compatible `/v1/completions` endpoint, streamed over HTTP.

This is how a user benchmarks a deployment pie does not run itself (`vllm serve`, a multi-GPU or
multi-node server). The one request loop (runners/request_loop.py) releases each request at its
arrival time (and only while fewer than `max_concurrency` are in flight) into `_StreamingEngine`,
which sends it as a streaming completion from an asyncio loop in a background thread and hands
back each chunk's tokens stamped when the chunk was read; the loop turns them into TTFT = first
token - release, ITL = gaps between tokens, E2EL = last token - release (vLLM's client-side
definitions). Prompts go as token id lists (exact counts) or as text.

vLLM's server extras are sent unless `vllm_extras=false`: `min_tokens` and `ignore_eos` so every
request yields exactly `output_len` tokens, and `return_token_ids` so each chunk names its tokens
(per-token timestamps and, with --save-outputs, the ids). `stream_options.include_usage` gives the
server's token counts. A server without these falls back to one token per non-empty text chunk.

Options (`RunnerSpec.options`): `base_url` (required, e.g. http://127.0.0.1:8000), `model_name`
(served name; default: the spec's model, or the one model the server lists), `warmup` (default
true: the first prompt is sent once, untimed, as `vllm bench serve` does), `prompt_format`
(`token_ids` or `text`), `request_timeout_s`, `connect_attempts`, `connect_retry_s`,
`max_connections`, `vllm_extras`, `api_key` (default: $OPENAI_API_KEY; never stored),
`server_metrics` (a Prometheus URL, or `off`; default: the server's `/metrics` when it answers) and
`scrape_interval_s` (default 0.5).

While it runs, the server's `/metrics` is scraped on the client's clock (runners/openai_watch.py):
the record's timeline has one window per scrape with the client's output tok/s and TTFT beside the
server's series, and the telemetry the server's totals and the token cross-check.

Failed requests (HTTP errors, timeouts, broken streams) are counted, not fatal. An endpoint that
cannot be reached before the run starts is a `BadInput` naming the URL, after bounded retries.

Left out: chat completions and sampling other than greedy.
"""
from __future__ import annotations

import asyncio
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from pie_core.errors import BadInput, RuntimeFailure
from results.record import RequestSample
from runners.base import (
    BenchRequest,
    PreparedRun,
    RequestDone,
    RunnerResult,
    RunnerSpec,
    machine_fingerprint,
    peak_host_memory_bytes,
)
from runners.openai_stream import OpenAISettings, StreamState, completion_body, probe_endpoint
from runners.openai_watch import ServerWatch
from runners.request_loop import TokenDelta, drive_engine


async def _post(session: Any, settings: OpenAISettings, body: dict[str, Any],
                on_chunk: Callable[[dict[str, Any], float], bool]) -> str | None:
    """POST one streamed completion; `on_chunk(payload, clock)` per `data:` line (True stops); the error, or None."""
    import aiohttp

    url = settings.completions_url
    try:
        async with session.post(url, json=body, headers=settings.headers()) as response:
            if response.status != 200:
                text = (await response.text())[:300]
                return f"HTTP {response.status} from {url}: {' '.join(text.split())}"
            async for raw_line in response.content:
                line = raw_line.decode("utf-8", errors="replace").strip()
                if not line.startswith("data:"):
                    continue  # blank separators, SSE comments and keep-alives
                payload = line[len("data:"):].strip()
                if payload == "[DONE]" or on_chunk(json.loads(payload), time.perf_counter()):
                    break
    except asyncio.TimeoutError:
        return f"timed out after {settings.request_timeout_s:g} s"
    except (aiohttp.ClientError, ValueError) as err:  # JSON and line-length errors are ValueErrors
        return f"{type(err).__name__}: {err}"
    return None


def _stream_error(error: str | None, state: StreamState) -> str | None:
    if error is not None:
        return error
    if state.error is not None:
        return f"server error in stream: {state.error}"
    return None if state.token_times else "the stream carried no tokens"


async def _warm_up(settings: OpenAISettings, model_name: str, request: BenchRequest) -> None:
    """Send the workload's first prompt for two tokens before timing anything (as `vllm bench serve`
    does), so a wrong model name or endpoint fails at once and one-time server costs stay out."""
    import aiohttp

    warm = BenchRequest(request_id="pie-warmup", prompt=request.prompt, prompt_token_ids=request.prompt_token_ids,
                        output_len=min(2, request.output_len))
    state = StreamState()

    def on_chunk(chunk: dict[str, Any], at: float) -> bool:
        state.feed(chunk, at)
        return state.error is not None

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=settings.request_timeout_s)) as session:
        error = _stream_error(await _post(session, settings, completion_body(settings, model_name, warm), on_chunk), state)
    if error is not None:
        raise RuntimeFailure(f"the warm-up request to {settings.completions_url} failed: {error}",
                             "check the option model_name and the server log; -O warmup=false skips this check")


class _StreamingEngine:
    """The HTTP client behind `runners.request_loop.StepEngine`: `add` starts a streamed completion on the
    background loop; `wait_step(timeout)` returns the chunks' tokens that arrived, waiting at most
    `timeout` seconds (until the next request is due) for the first one."""

    name = "openai"

    def __init__(self, settings: OpenAISettings, model_name: str, connections: int, watch: ServerWatch):
        self.settings, self.model_name, self.connections, self.watch = settings, model_name, connections, watch
        self.events: queue.Queue[TokenDelta] = queue.Queue()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="pie-openai-client", daemon=True)
        self.thread.start()
        self.session = asyncio.run_coroutine_threadsafe(self._open(), self.loop).result()

    async def _open(self) -> Any:
        import aiohttp

        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.connections),
                                     timeout=aiohttp.ClientTimeout(total=self.settings.request_timeout_s))

    def add(self, request: BenchRequest) -> None:
        body = completion_body(self.settings, self.model_name, request)  # BadInput: a refused request
        asyncio.run_coroutine_threadsafe(self._stream(request.request_id, body), self.loop)

    async def _stream(self, request_id: str, body: dict[str, Any]) -> None:
        state = StreamState()

        def on_chunk(chunk: dict[str, Any], at: float) -> bool:
            num_times, num_ids = len(state.token_times), len(state.token_ids)
            state.feed(chunk, at)
            if len(state.token_times) > num_times:
                self.watch.note_tokens(request_id, state.token_times[num_times:])
                self.events.put(TokenDelta(request_id, tuple(state.token_ids[num_ids:]), False,
                                           tuple(state.token_times[num_times:])))
            return state.error is not None

        try:
            error = _stream_error(await _post(self.session, self.settings, body, on_chunk), state)
        except Exception as err:  # noqa: BLE001 - the request fails; the run goes on
            error = f"{type(err).__name__}: {err}"
        self.events.put(TokenDelta(request_id, (), True, (), error, state.completion_tokens))

    def wait_step(self, timeout: float | None) -> list[TokenDelta]:
        try:
            deltas = [self.events.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                deltas.append(self.events.get_nowait())
            except queue.Empty:
                return deltas

    def step(self) -> list[TokenDelta]:
        return self.wait_step(None)

    def call(self, coroutine: Any, timeout_s: float = 30.0) -> Any:
        """Run `coroutine` on the client loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=timeout_s)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.session.close(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


class OpenAIRunner:
    name = "openai"

    def prepare(self, spec: RunnerSpec) -> PreparedRun:
        """The settings this run will use (never the API key), checked before any work: an unreachable
        endpoint fails here, before a record is opened."""
        settings = OpenAISettings.from_spec(spec, os.environ)
        served = probe_endpoint(settings)
        model_name = settings.resolve_model_name(spec.model, served)
        watch = ServerWatch.prepare(settings)  # BadInput: an explicit metrics URL that does not answer
        return PreparedRun(spec, {"model": spec.model, **settings.to_config(), "model_name": model_name, **watch.config()},
                           machine_fingerprint(spec.device), (settings, served, model_name, watch))

    def run(self, prepared: PreparedRun, requests: Sequence[BenchRequest], on_request_done: RequestDone) -> RunnerResult:
        spec, (settings, served, model_name, checked) = prepared.spec, prepared.state
        watch = checked.fresh()
        if settings.prompt_format == "text" and any(r.prompt is None for r in requests):
            raise BadInput("prompt_format=text, but the workload has requests without text",
                           "use prompt_format=token_ids, or a workload read from a text dataset")
        if settings.warmup and requests:
            try:
                asyncio.run(_warm_up(settings, model_name, min(requests, key=lambda r: r.arrival_s)))
            except RuntimeError as err:
                if "running event loop" in str(err):
                    raise BadInput("the openai runner was called inside a running asyncio loop",
                                   "call it from synchronous code") from None
                raise
        samples: list[RequestSample] = []

        def done(sample: RequestSample) -> None:
            samples.append(sample)
            on_request_done(sample)

        engine = _StreamingEngine(settings, model_name, settings.max_connections or spec.max_concurrency or 256, watch)
        finished = False
        try:
            engine.call(watch.begin(time.perf_counter))
            driven = drive_engine(engine, requests, spec.max_concurrency, spec.save_outputs, done)
            engine.call(watch.finish(time.perf_counter, sum(s.output_len for s in samples if s.success)))
            finished = True
        finally:
            if not finished:
                engine.call(watch.abandon())
            engine.close()
        timeline, watched = watch.result(samples)
        failures = [s.error for s in samples if not s.success]
        telemetry = {"num_failed": len(failures), "first_errors": failures[:3], "served_models": served,
                     "token_ids_from_server": all(s.output_token_ids is not None for s in samples
                                                  if s.success) if spec.save_outputs else None}
        return RunnerResult(duration_s=driven.duration_s,
                            config={**settings.to_config(), "model_name": model_name, **watch.config()},
                            telemetry={**telemetry, **watched}, peak_device_memory_bytes=None,
                            peak_host_memory_bytes=peak_host_memory_bytes(), timeline=timeline)
