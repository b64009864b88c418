"""`pie serve` under abuse: abandoned streams, many streams, bad requests, a full queue, an injected failure,
SIGTERM mid-stream, and `--adaptive` under a two-phase load read back from /metrics.

Tiny seeded model with a tokenizer; servers on 127.0.0.1 and free ports, every loop bounded in count and time.
"""
from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
import time
from pathlib import Path

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import InProcessServer, ServeProcess, get, metric, post, read_stream
from tiny_hf_model import vllm_model_dir

PROMPT = [5, 9, 12, 7, 30, 22, 8, 15]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return vllm_model_dir(tmp_path_factory.mktemp("serve-reliability") / "opt", "opt")


@pytest.fixture(scope="module")
def served(model_dir):
    with InProcessServer(model_dir, served_model_name="tiny") as server:
        yield server


def body(max_tokens: int, stream: bool = True, **extra):
    fields = {"model": "tiny", "prompt": PROMPT, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0,
              "return_token_ids": True, **extra}
    if stream:
        fields.update(stream=True, stream_options={"include_usage": True})
    return fields


def token_ids(payloads):
    return [t for p in payloads if isinstance(p, dict) and p.get("choices") for t in p["choices"][0].get("token_ids", [])]


def wait_for(check, limit_s: float = 20.0):
    deadline = time.monotonic() + limit_s
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_50_aborted_streams_leave_no_block_in_use(served):
    async def abandon(session):
        async with session.post(served.url + "/v1/completions", json=body(230)) as response:
            seen = 0
            async for raw in response.content:
                seen += raw.startswith(b"data:")
                if seen == 2:
                    break
            response.close()  # the client goes away mid-stream
            return seen

    async def main():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            return await asyncio.gather(*(abandon(session) for _ in range(50)))

    assert asyncio.run(main()) == [2] * 50
    wait_for(lambda: metric(served.url, "vllm:num_requests_running") == 0 and metric(served.url, "pie:device_blocks_used") == 0)
    assert metric(served.url, "vllm:num_requests_waiting") == 0
    _, text = get(served.url + "/metrics")
    aborted = [line for line in text.decode().splitlines() if line.startswith('vllm:request_success_total{finished_reason="abort"')]
    assert float(aborted[0].rsplit(" ", 1)[1]) >= 50
    wait_for(lambda: not served.engine.has_unfinished_requests())


def test_200_concurrent_streams_all_finish_with_exact_counts(served):
    async def main():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            return await asyncio.gather(*(read_stream(session, served.url + "/v1/completions", body(1 + i % 16))
                                          for i in range(200)))

    results = asyncio.run(main())
    for index, (status, payloads) in enumerate(results):
        assert status == 200 and payloads[-1] == "[DONE]"
        expected = 1 + index % 16
        assert len(token_ids(payloads)) == payloads[-2]["usage"]["completion_tokens"] == expected
        finished = [p["choices"][0]["finish_reason"] for p in payloads[:-1] if p.get("choices")]
        assert finished[-1] == "length" and all(reason is None for reason in finished[:-1])
    wait_for(lambda: metric(served.url, "pie:device_blocks_used") == 0)


def test_401_400_404_and_503_and_it_keeps_serving(model_dir):
    with InProcessServer(model_dir, served_model_name="tiny", api_key="secret", max_queue=2) as server:
        url, auth = server.url, {"Authorization": "Bearer secret"}

        async def post(session, payload, raw=None, headers=auth):
            async with session.post(url + "/v1/completions", json=None if raw else payload, data=raw,
                                    headers=headers) as response:
                return response.status, await response.json(), response.headers

        async def main():
            async with aiohttp.ClientSession() as session:
                results = {"no key": await post(session, body(2, stream=False), headers={}),
                           "wrong key": await post(session, body(2, stream=False), headers={"Authorization": "Bearer x"}),
                           "malformed": await post(session, None, raw=b'{"prompt": [1, 2'),
                           "wrong type": await post(session, body("5", stream=False)),
                           "unsupported": await post(session, body(2, stream=False, presence_penalty=0.5)),
                           "too long": await post(session, body(250, stream=False, prompt=list(range(5, 15)))),
                           "unknown model": await post(session, body(2, stream=False, model="gpt-4"))}
                async with session.get(url + "/v1/nowhere", headers=auth) as response:
                    results["no route"] = (response.status, await response.json(), response.headers)
                results["ok"] = await post(session, body(3, stream=False))
                return results

        results = asyncio.run(main())
        expected = {"no key": 401, "wrong key": 401, "malformed": 400, "wrong type": 400, "unsupported": 400,
                    "too long": 400, "unknown model": 404, "no route": 404, "ok": 200}
        assert {name: status for name, (status, _, _) in results.items()} == expected
        for name, (status, payload, _) in results.items():
            if status != 200:
                assert payload["error"]["code"] == status and payload["error"]["message"], name
        assert results["wrong type"][1]["error"]["param"] == "max_tokens"
        assert results["unsupported"][1]["error"]["param"] == "presence_penalty"
        assert results["unknown model"][1]["error"]["param"] == "model"
        assert results["ok"][1]["usage"]["completion_tokens"] == 3
        assert get(url + "/health")[0] == 200  # no key needed

        # 503: hold the engine so two requests wait for their first token; the third is refused.
        engine, gate = server.engine, threading.Event()
        real_step = engine.step
        engine.step = lambda: (gate.wait(30), real_step())[1]
        try:
            async def full_queue():
                async with aiohttp.ClientSession() as session:
                    waiting = [asyncio.ensure_future(post(session, body(4, stream=False))) for _ in range(2)]
                    for _ in range(400):
                        if server.server.app.queued == 2:
                            break
                        await asyncio.sleep(0.01)
                    refused = await post(session, body(4, stream=False))
                    gate.set()
                    return refused, await asyncio.gather(*waiting)

            refused, served_after = asyncio.run(full_queue())
        finally:
            gate.set()
            engine.step = real_step
        assert refused[0] == 503 and refused[2]["Retry-After"] == "1" and "max-queue" in refused[1]["error"]["message"]
        assert [status for status, _, _ in served_after] == [200, 200]


def test_an_injected_failure_fails_one_request_and_the_next_is_served(served):
    runner = served.engine.runner
    real_execute = runner.execute
    calls = {"n": 0}

    def fail_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected failure")
        return real_execute(*args, **kwargs)

    async def main():
        async with aiohttp.ClientSession() as session:
            async with session.post(served.url + "/v1/completions", json=body(5, stream=False)) as response:
                failed = (response.status, await response.json())
            after = await read_stream(session, served.url + "/v1/completions", body(6))
            return failed, after

    runner.execute = fail_once
    try:
        failed, (status, payloads) = asyncio.run(main())
    finally:
        runner.execute = real_execute
    assert failed[0] == 500 and "injected failure" in failed[1]["error"]["message"]
    assert status == 200 and len(token_ids(payloads)) == 6 and payloads[-1] == "[DONE]"
    wait_for(lambda: metric(served.url, "pie:device_blocks_used") == 0)
    served.engine.check_invariants()


def test_an_exception_in_a_handler_is_an_openai_500_logged_in_one_line_and_the_next_is_served(served):
    text = served.server.app.text
    real_encode = text.encode

    def broken(prompt):
        raise RuntimeError("injected handler bug")

    text.encode = broken
    try:
        failed = _post_json(served.url + "/v1/completions", body(2, stream=False, prompt="the cat"))
    finally:
        text.encode = real_encode
    assert failed[0] == 500 and failed[1]["error"] == {
        "message": "internal error: RuntimeError: injected handler bug", "type": "server_error", "param": None, "code": 500}
    assert [line for line in served.lines if "injected handler bug" in line] == [
        "pie serve: POST /v1/completions failed: RuntimeError: injected handler bug"]
    status, payload = _post_json(served.url + "/v1/completions", body(3, stream=False, prompt="the cat"))
    assert status == 200 and payload["usage"]["completion_tokens"] == 3


def test_a_chat_template_that_refuses_the_messages_is_a_400_naming_them(tmp_path):
    model = vllm_model_dir(tmp_path / "opt", "opt")
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                               "{{ raise_exception('System role not supported') }}{% endif %}{{ m['content'] }}{% endfor %}")
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    chat = {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "the cat"}]}
    with InProcessServer(model, served_model_name="tiny") as server:
        url = server.url + "/v1/chat/completions"
        ok = _post_json(url, chat)
        refused = _post_json(url, {**chat, "messages": [{"role": "system", "content": "x"}, *chat["messages"]]})
    assert ok[0] == 200 and ok[1]["usage"]["completion_tokens"] == 2
    assert refused[0] == 400 and refused[1]["error"]["param"] == "messages"
    assert "chat template refused these messages: System role not supported" in refused[1]["error"]["message"]


def _post_json(url, payload):
    status, raw = post(url, json.dumps(payload).encode())
    return status, json.loads(raw)


@pytest.mark.slow
def test_sigterm_during_20_streams(model_dir, tmp_path):
    grace_s = 0.3
    server = ServeProcess(model_dir, "--served-model-name", "tiny", "--dtype", "float32", "--shutdown-grace", str(grace_s),
                          "-O", "max_num_seqs=2", log_path=tmp_path / "serve.log")
    try:
        server.wait_ready()
        finished = asyncio.Event()

        async def one(session):
            result = await read_stream(session, server.url + "/v1/completions", body(200))
            finished.set()
            return result

        async def main():
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
                streams = [asyncio.ensure_future(one(session)) for _ in range(20)]
                await asyncio.wait_for(finished.wait(), 60)
                server.process.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                results = await asyncio.wait_for(asyncio.gather(*streams), 60)
                return signalled, results

        signalled, results = asyncio.run(main())
        code = server.process.wait(timeout=grace_s + 15)
        exit_s = time.monotonic() - signalled
    finally:
        server.stop()
    assert code == 0, server.log()
    complete = [p for status, p in results if len(token_ids(p)) == 200 and p[-2].get("usage", {}).get("completion_tokens") == 200]
    cut = [p for status, p in results if any(isinstance(x, dict) and "error" in x for x in p)]
    assert len(complete) + len(cut) == 20 and complete and cut
    assert all(p[-1] == "[DONE]" and "shutting down" in p[-2]["error"]["message"] for p in cut)
    assert exit_s < grace_s + 10, f"exit took {exit_s:.1f} s"
    assert "pie serve: stopped" in server.log()


def test_adaptive_pool_limit_grows_under_load_and_shrinks_after(model_dir):
    options = {"num_device_blocks": 30, "num_pool_blocks": 20, "block_size": 4, "max_num_seqs": 8, "prefetch_depth": 1,
               "adaptive": True, "window_steps": 2}
    with InProcessServer(model_dir, options, served_model_name="tiny") as server:
        limits, stop = [], threading.Event()

        def watch():
            while not stop.is_set():
                limits.append(metric(server.url, "pie:pool_limit_blocks"))
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()

        async def main():
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
                heavy = await asyncio.gather(*(read_stream(session, server.url + "/v1/completions",
                                                           body(32, prompt=list(range(5, 29)))) for _ in range(16)))
                peak = max(limits)
                light = 0
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and light < 200:  # a trickle: one short request at a time
                    status, payloads = await read_stream(session, server.url + "/v1/completions", body(8, prompt=[5, 6, 7]))
                    assert status == 200 and len(token_ids(payloads)) == 8
                    light += 1
                    if metric(server.url, "pie:pool_limit_blocks") < peak:
                        break
                return heavy, peak

        try:
            heavy, peak = asyncio.run(main())
        finally:
            stop.set()
            watcher.join(timeout=5)
        assert all(status == 200 and len(token_ids(p)) == 32 for status, p in heavy)
        assert limits[0] == 0 and peak > 0, limits
        assert metric(server.url, "pie:pool_limit_blocks") < peak
        _, text = get(server.url + "/metrics")
        assert 'pie:controller_moves_total{model_name="tiny",move="grow"}' in text.decode()
        assert any("-> grow" in line for line in server.lines) and any("-> shrink" in line for line in server.lines)
    assert json.dumps(limits)  # the series the test read, for a failure message


def test_run_server_steps_the_engine_on_the_main_thread_and_a_signal_stops_it(model_dir):
    """`pie serve`'s blocking form builds and steps the engine on the calling (main) thread, with HTTP on a second
    one (runners/serve/engine_loop.py says why); SIGTERM makes it shut down and return, the engine closed."""
    import os

    from runners.base import RunnerSpec
    from runners.engine.llm_engine import LLMEngine
    from runners.serve.server import ServeSettings, run_server

    assert threading.current_thread() is threading.main_thread()
    stepped_on: set[str] = set()
    closed: list[bool] = []
    real_step, real_close = LLMEngine.step, LLMEngine.close

    def step(self):
        stepped_on.add(threading.current_thread().name)
        return real_step(self)

    def close(self):
        closed.append(True)
        return real_close(self)

    lines: list[str] = []
    answers: list[int] = []

    def client() -> None:  # waits for the ready line, sends one request, then SIGTERM to this process
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any("ready at" in line for line in lines):
            time.sleep(0.05)
        url = next((line.split("ready at ", 1)[1].split(" ", 1)[0] for line in lines if "ready at" in line), None)
        try:
            if url is not None:
                answers.append(get(url + "/health")[0])
                status, payload, _ = asyncio.run(_post_once(url, body(3, stream=False)))
                answers.append(status)
                answers.append(payload["usage"]["completion_tokens"])
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    spec = RunnerSpec(model=str(model_dir), dtype="float32", device="cpu", seed=0, options={})
    sender = threading.Thread(target=client, name="test-client", daemon=True)
    LLMEngine.step, LLMEngine.close = step, close
    try:
        sender.start()
        run_server(spec, ServeSettings(port=0, served_model_name="tiny", shutdown_grace_s=5), lines.append)
    finally:
        LLMEngine.step, LLMEngine.close = real_step, real_close
        sender.join(timeout=30)
    assert answers == [200, 200, 3], lines
    assert stepped_on == {threading.main_thread().name}
    assert closed and lines[-1] == "pie serve: stopped"


async def _post_once(url: str, payload: dict):
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/v1/completions", json=payload, timeout=aiohttp.ClientTimeout(total=60)) as response:
            return response.status, await response.json(), response.headers
