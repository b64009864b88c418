"""`pie serve`'s streaming chunks and the direct path that writes token chunks from `deliver` (runners/serve/app.py).

The chunk text is checked against serializing the whole chunk as a dict (how it was built before); the direct path
against the handler's path on a real aiohttp server and socket, with a scripted engine (no model) whose events the
test hands to `deliver` one step at a time: the same bytes, in order when readiness comes and goes, under a client
that stops reading (backpressure), and an abort when the client goes away.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web

sys.path.insert(0, str(Path(__file__).parent))
from runners.serve import app as app_module
from runners.serve.app import ServeApp, ServedModel
from runners.serve.engine_loop import TokenEvent
from runners.serve.responses import ChoiceChunks, ChoiceState, ResponseHead, usage
from runners.serve.text import ChoiceText, ServeText
from tiny_hf_model import tiny_model_dir

EXTRAS = {"plain": {}, "token ids + usage": {"return_token_ids": True,
                                             "stream_options": {"include_usage": True, "continuous_usage_stats": True}}}


def reference_chunk(head, choice, new_ids, delta, continuous_usage):
    """A streaming chunk as a dict serialized whole: the shape and key order the server has always sent."""
    if head.chat:
        message = {"role": "assistant", "content": delta} if not choice.sent_first else {"content": delta}
        item = {"index": choice.index, "delta": message, "logprobs": None, "finish_reason": choice.finish_reason}
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
    return f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("token_ids", [False, True])
@pytest.mark.parametrize("continuous", [False, True])
def test_chunks_are_the_text_of_serializing_the_whole_chunk(chat, token_ids, continuous):
    head = ResponseHead("cmpl-ab\"c", 1700000000, "org/módel \"x\"", chat, token_ids)
    steps = [((5,), "Hé \"q\"\n", None), ((6, 7), "", None), ((), "\u2603 \U0001f525\\", None), ((8,), "end", "length")]
    made, expected = [], []
    for build, out in ((ChoiceChunks(head, 2).chunk, made), (partial(reference_chunk, head), expected)):
        choice = ChoiceState(2, "r-2", [3, 14, 15], ChoiceText(None, ()))
        for new_ids, delta, reason in steps:
            choice.token_ids.extend(new_ids)
            choice.finish_reason = reason
            out.append(build(choice, new_ids, delta, [choice] if continuous else None))
    assert made == expected
    assert all(json.loads(line[len("data: "):]) for line in made)


# --- the direct path, on a real server ----------------------------------------------------------------------------
class ScriptedEngine:
    """The engine side of ServeApp: records what was submitted and aborted; the test delivers the events."""

    def __init__(self):
        self.submitted: list[str] = []
        self.aborted: list[str] = []

    def submit(self, request_id, prompt_token_ids, params, arrival):
        self.submitted.append(request_id)

    def abort(self, request_id, error=None):
        self.aborted.append(request_id)


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    return ServeText.load(str(tiny_model_dir(tmp_path_factory.mktemp("fastpath") / "m", weights=False, tokenizer=True)))


@contextlib.asynccontextmanager
async def serving(text):
    config = SimpleNamespace(model_len=100_000, block_size=16)
    app = ServeApp(ServedModel("tiny", "tiny", config, 100_000, 100_000, text.description), text, None, None, 64)
    app.engine = ScriptedEngine()
    runner = web.AppRunner(app.build(), handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield app, runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def until(check, limit_s=10.0):
    deadline = asyncio.get_running_loop().time() + limit_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.002)


def request_body(chat, max_tokens, extra):
    fields = {"model": "tiny", "max_tokens": max_tokens, "stream": True}
    if chat:
        return "/v1/chat/completions", {**fields, "messages": [{"role": "user", "content": "the fox"}], **extra}
    return "/v1/completions", {**fields, "prompt": "the quick brown fox", **extra}


def tokens_of(text, count):
    ids = text.encode("the quick brown fox jumps over the lazy dog")
    return [ids[i % len(ids)] for i in range(count)]


async def deliver_steps(app, request_ids, tokens, finish=True, pause_s=0.001, burst=1):
    """One step per token (an event per request, the last one finished), the loop running after every `burst`
    steps (two steps' hand-offs can run back to back, before the handler wakes)."""
    for i, token in enumerate(tokens):
        last = finish and i == len(tokens) - 1
        app.deliver([TokenEvent(request_id, (token,), last, "length" if last else None) for request_id in request_ids])
        if (i + 1) % burst == 0:
            await asyncio.sleep(pause_s)


def content(line):
    item = json.loads(line[len("data: "):])["choices"][0]
    return item["text"] if "text" in item else item["delta"]["content"]


def count_direct_sends(monkeypatch):
    sent = []
    real_send = app_module._DirectWriter.send
    monkeypatch.setattr(app_module._DirectWriter, "send", lambda self, *args: (sent.append(1), real_send(self, *args)))
    return sent


def streamed(text, chat, extra, tokens, burst=1):
    async def main():
        async with serving(text) as (app, port), aiohttp.ClientSession() as session:
            path, body = request_body(chat, len(tokens), extra)
            reader = asyncio.ensure_future(session.post(f"http://127.0.0.1:{port}{path}", json=body))
            await until(lambda: app.engine.submitted)
            await deliver_steps(app, app.engine.submitted, tokens, burst=burst)
            async with await reader as response:
                raw = (await response.read()).decode()
            await until(lambda: app.active == 0)
            assert response.status == 200 and not app.streams and app.queued == 0
        return re.sub(r'"created":\d+', '"created":0', re.sub(r'"id":"(chatcmpl|cmpl)-[0-9a-f]+"', '"id":"X"', raw))

    return asyncio.run(asyncio.wait_for(main(), 60))


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
@pytest.mark.parametrize("extra", list(EXTRAS.values()), ids=list(EXTRAS))
def test_direct_path_sends_the_bytes_of_the_handlers_path(text, chat, extra, monkeypatch):
    tokens = tokens_of(text, 24)
    sent = count_direct_sends(monkeypatch)
    direct = streamed(text, chat, extra, tokens)
    assert len(sent) == len(tokens) - 2  # the first chunk and the end are the handler's
    lines = [line for line in direct.split("\n\n") if line]
    assert lines[-1] == "data: [DONE]" and len(lines) == len(tokens) + 1 + ("stream_options" in extra)
    assert "".join(content(line) for line in lines[:len(tokens)]) == text.tokenizer.decode(tokens, skip_special_tokens=True)

    with monkeypatch.context() as patch:  # every event through the handler, as before the direct path
        patch.setattr(app_module._DirectWriter, "open", classmethod(lambda cls, *args: None))
        assert streamed(text, chat, extra, tokens) == direct
    assert len(sent) == len(tokens) - 2

    calls = []
    real_ready = app_module._DirectWriter.ready
    with monkeypatch.context() as patch:  # not ready at every third token: it, and what follows before the handler
        patch.setattr(app_module._DirectWriter, "ready",  # runs, take the queue, in order
                      lambda self: (calls.append(1), len(calls) % 3 != 0 and real_ready(self))[1])
        assert streamed(text, chat, extra, tokens, burst=2) == direct
    assert len(tokens) - 2 < len(sent) < 2 * (len(tokens) - 2)

    real_write = web.StreamResponse.write

    async def slow_write(self, data):  # the handler's writes wait before their bytes go out: nothing may overtake them
        await asyncio.sleep(0.003)
        await real_write(self, data)

    monkeypatch.setattr(web.StreamResponse, "write", slow_write)
    assert streamed(text, chat, extra, tokens) == direct


def test_a_stop_string_or_two_prompts_keep_the_handlers_path(text, monkeypatch):
    sent = count_direct_sends(monkeypatch)
    streamed(text, False, {"stop": ["zebra"]}, tokens_of(text, 6))
    streamed(text, False, {"prompt": ["the fox", "the dog"]}, tokens_of(text, 1))
    assert sent == []


def test_a_client_that_goes_away_mid_stream_is_aborted(text, monkeypatch):
    sent = count_direct_sends(monkeypatch)

    async def main():
        async with serving(text) as (app, port), aiohttp.ClientSession() as session:
            path, body = request_body(False, 10_000, EXTRAS["token ids + usage"])
            reader = asyncio.ensure_future(session.post(f"http://127.0.0.1:{port}{path}", json=body))
            await until(lambda: app.engine.submitted)
            request_ids, tokens, seen = app.engine.submitted[:1], iter(tokens_of(text, 10_000)), 0
            await deliver_steps(app, request_ids, [next(tokens)], finish=False)
            async with await reader as response:
                while seen < 3:
                    seen += (await response.content.readline()).startswith(b"data:")
                    await deliver_steps(app, request_ids, [next(tokens)], finish=False)
                response.close()  # the client goes away
            while not app.engine.aborted:  # the engine keeps producing until the abort reaches it
                await deliver_steps(app, request_ids, [next(tokens)], finish=False)
            await until(lambda: app.active == 0)
            assert app.engine.aborted == request_ids and not app.streams and app.queued == 0

    asyncio.run(asyncio.wait_for(main(), 60))
    assert sent  # the second and third chunks went the direct way


def test_a_client_that_stops_reading_holds_the_direct_path_back(text, monkeypatch):
    """A client that reads nothing: direct writes stop once the write buffer reaches its high-water mark, the rest
    waits in the handler's queue, and when the client reads again every token arrives, in order."""
    sent = count_direct_sends(monkeypatch)
    tokens = tokens_of(text, 4000)

    async def main():
        async with serving(text) as (app, port):
            client = socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.connect(("127.0.0.1", port))
            client.setblocking(False)
            reader, writer = await asyncio.open_connection(sock=client, limit=1024)
            path, body = request_body(False, len(tokens), EXTRAS["token ids + usage"])
            payload = json.dumps(body).encode()
            writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
            await until(lambda: app.engine.submitted)
            request_ids = app.engine.submitted[:1]
            await deliver_steps(app, request_ids, tokens[:1], finish=False)
            route = app.streams[request_ids[0]]
            await until(lambda: route.direct is not None)
            transport, high_water = route.direct.transport, route.direct.high_water
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            buffered = []
            for token in tokens[1:-1]:
                await deliver_steps(app, request_ids, [token], finish=False, pause_s=0)
                buffered.append(transport.get_write_buffer_size())
            assert max(buffered) >= high_water and len(sent) < len(tokens) - 2
            assert max(buffered) < 3 * high_water  # bounded: the handler's writes wait on the buffer too
            await deliver_steps(app, request_ids, tokens[-1:])
            raw = b""
            while not raw.endswith(b"\r\n0\r\n\r\n"):
                raw += await reader.read(65536)
            writer.close()
            return raw

    raw = asyncio.run(asyncio.wait_for(main(), 60))
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200") and b"Transfer-Encoding: chunked" in head
    data = b""
    while True:  # undo the chunked framing
        size, rest = body.split(b"\r\n", 1)
        if int(size, 16) == 0:
            break
        data, body = data + rest[:int(size, 16)], rest[int(size, 16) + 2:]
    lines = [line[6:] for line in data.decode().split("\n\n") if line]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert [t for c in chunks if c["choices"] for t in c["choices"][0]["token_ids"]] == tokens
    assert chunks[-1]["usage"]["completion_tokens"] == len(tokens)
