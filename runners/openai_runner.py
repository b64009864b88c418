"""The `openai` runner: any OpenAI-compatible `/v1/completions` endpoint, streamed over HTTP.

This is how a user benchmarks a deployment pie does not run itself (`vllm serve`, a multi-GPU or
multi-node server). Each request is released at its arrival time (and only while fewer than
`max_concurrency` are in flight), sent as a streaming completion, and timed from the stream:
TTFT = first token - release, ITL = gaps between tokens, E2EL = last token - release (vLLM's
client-side definitions). Prompts go as token id lists (exact counts) or as text.

vLLM's server extras are sent unless `vllm_extras=false`: `min_tokens` and `ignore_eos` so every
request yields exactly `output_len` tokens, and `return_token_ids` so each chunk names its tokens
(per-token timestamps and, with --save-outputs, the ids). `stream_options.include_usage` gives the
server's token counts. A server without these falls back to one token per non-empty text chunk.

Options (`RunnerSpec.options`): `base_url` (required, e.g. http://127.0.0.1:8000), `model_name`
(served name; default: the spec's model, or the one model the server lists), `warmup` (default
true: the first prompt is sent once, untimed, as `vllm bench serve` does), `prompt_format`
(`token_ids` or `text`), `request_timeout_s`, `connect_attempts`, `connect_retry_s`,
`max_connections`, `vllm_extras`, `api_key` (default: $OPENAI_API_KEY; never stored).

Failed requests (HTTP errors, timeouts, broken streams) are counted, not fatal. An endpoint that
cannot be reached before the run starts is a `BadInput` naming the URL, after bounded retries.

Left out: chat completions, sampling other than greedy, and server-side memory figures.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pie_core.errors import BadInput, RuntimeFailure
from results.record import RequestSample
from runners.base import BenchRequest, RequestDone, RunnerResult, RunnerSpec, failed_sample, peak_host_memory_bytes
from runners.openai_stream import OpenAISettings, StreamState, completion_body, probe_endpoint


@dataclass(frozen=True)
class _Outcome:
    sample: RequestSample
    release_time: float
    done_time: float


async def _send(session: Any, settings: OpenAISettings, model_name: str, request: BenchRequest,
                save_outputs: bool, release_time: float) -> tuple[RequestSample, float]:
    import aiohttp

    url = settings.completions_url
    body = completion_body(settings, model_name, request)
    state = StreamState()
    try:
        async with session.post(url, json=body, headers=settings.headers()) as response:
            if response.status != 200:
                text = (await response.text())[:300]
                return failed_sample(request, f"HTTP {response.status} from {url}: {' '.join(text.split())}"), time.perf_counter()
            async for raw_line in response.content:
                line = raw_line.decode("utf-8", errors="replace").strip()
                if not line.startswith("data:"):
                    continue  # blank separators, SSE comments and keep-alives
                payload = line[len("data:"):].strip()
                if payload == "[DONE]":
                    break
                state.feed(json.loads(payload), time.perf_counter())
                if state.error is not None:
                    break
    except asyncio.TimeoutError:
        return failed_sample(request, f"timed out after {settings.request_timeout_s:g} s"), time.perf_counter()
    except (aiohttp.ClientError, ValueError) as err:  # JSON and line-length errors are ValueErrors
        return failed_sample(request, f"{type(err).__name__}: {err}"), time.perf_counter()
    return state.to_sample(request, release_time, save_outputs), time.perf_counter()


async def _warm_up(settings: OpenAISettings, model_name: str, request: BenchRequest) -> None:
    """Send the workload's first prompt for two tokens before timing anything (as `vllm bench serve`
    does), so a wrong model name or endpoint fails at once and one-time server costs stay out."""
    import aiohttp

    warm = BenchRequest(request_id="pie-warmup", prompt=request.prompt, prompt_token_ids=request.prompt_token_ids,
                        output_len=min(2, request.output_len))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=settings.request_timeout_s)) as session:
        sample, _ = await _send(session, settings, model_name, warm, False, time.perf_counter())
    if not sample.success:
        raise RuntimeFailure(f"the warm-up request to {settings.completions_url} failed: {sample.error}",
                             "check the option model_name and the server log; -O warmup=false skips this check")


async def _run_all(requests: Sequence[BenchRequest], spec: RunnerSpec, settings: OpenAISettings, model_name: str,
                   on_request_done: RequestDone) -> list[_Outcome]:
    import aiohttp

    limit = spec.max_concurrency
    connections = settings.max_connections or limit or 256
    semaphore = asyncio.Semaphore(limit) if limit else None
    timeout = aiohttp.ClientTimeout(total=settings.request_timeout_s)
    connector = aiohttp.TCPConnector(limit=connections)
    outcomes: list[_Outcome] = []
    start = time.perf_counter()

    async def one(session: aiohttp.ClientSession, request: BenchRequest) -> None:
        await asyncio.sleep(max(0.0, start + request.arrival_s - time.perf_counter()))
        if semaphore is not None:
            await semaphore.acquire()
        try:
            release_time = time.perf_counter()
            sample, done = await _send(session, settings, model_name, request, spec.save_outputs, release_time)
        finally:
            if semaphore is not None:
                semaphore.release()
        outcomes.append(_Outcome(sample, release_time, done))
        on_request_done(sample)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(one(session, request) for request in sorted(requests, key=lambda r: r.arrival_s)))
    return outcomes


class OpenAIRunner:
    name = "openai"

    def describe(self, spec: RunnerSpec) -> dict[str, Any]:
        """The settings this run will use (never the API key), checked before any work: an unreachable
        endpoint fails here, before a record is opened."""
        settings = OpenAISettings.from_spec(spec, os.environ)
        served = probe_endpoint(settings)
        return {"model": spec.model, **settings.to_config(), "model_name": settings.resolve_model_name(spec.model, served)}

    def run(self, requests: Sequence[BenchRequest], spec: RunnerSpec, on_request_done: RequestDone) -> RunnerResult:
        settings = OpenAISettings.from_spec(spec, os.environ)
        if settings.prompt_format == "text" and any(r.prompt is None for r in requests):
            raise BadInput("prompt_format=text, but the workload has requests without text",
                           "use prompt_format=token_ids, or a workload read from a text dataset")
        served = probe_endpoint(settings)  # BadInput naming the URL when it cannot be reached
        model_name = settings.resolve_model_name(spec.model, served)
        if settings.warmup and requests:
            asyncio.run(_warm_up(settings, model_name, min(requests, key=lambda r: r.arrival_s)))
        try:
            outcomes = asyncio.run(_run_all(requests, spec, settings, model_name, on_request_done))
        except RuntimeError as err:
            if "running event loop" in str(err):
                raise BadInput("the openai runner was called inside a running asyncio loop",
                               "call it from synchronous code") from None
            raise
        if outcomes:
            duration_s = max(o.done_time for o in outcomes) - min(o.release_time for o in outcomes)
        else:
            duration_s = 0.0
        failures = [o.sample.error for o in outcomes if not o.sample.success]
        telemetry = {"num_failed": len(failures), "first_errors": failures[:3], "served_models": served,
                     "token_ids_from_server": all(o.sample.output_token_ids is not None for o in outcomes
                                                  if o.sample.success) if spec.save_outputs else None}
        return RunnerResult(duration_s=max(0.0, duration_s), config={**settings.to_config(), "model_name": model_name},
                            telemetry=telemetry, peak_device_memory_bytes=None,
                            peak_host_memory_bytes=peak_host_memory_bytes())
