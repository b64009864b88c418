"""The openai runner against a tiny fake SSE server on 127.0.0.1: parsing, timing, failures, limits."""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pie_core.errors import BadInput
from runners.base import BenchRequest, RunnerSpec
from runners.openai_runner import OpenAIRunner, _stream_error
from runners.openai_stream import OpenAISettings, StreamState, completion_body, probe_endpoint
from runners.registry import get_runner

HTTP_500, SLOW, STREAM_ERROR, TEXT_ONLY, MALFORMED = 9001, 9002, 9003, 9004, 9005  # first prompt token picks a behaviour
TOKEN_GAP_S = 0.004


class FakeServer:
    """Serves /v1/models and a streamed /v1/completions; records bodies and peak concurrency."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.received_at: dict[int, float] = {}
        self.in_flight = 0
        self.peak_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                if self.path != "/v1/models":
                    self.send_error(404)
                    return
                payload = json.dumps({"data": [{"id": "tiny-model"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.bodies.append(body)
                    server.in_flight += 1
                    server.peak_in_flight = max(server.peak_in_flight, server.in_flight)
                    prompt = body["prompt"]
                    key = prompt[0] if isinstance(prompt, list) else 0
                    if isinstance(prompt, list) and len(prompt) > 1:
                        server.received_at[prompt[1]] = time.perf_counter()
                try:
                    self.respond(body, key)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def respond(self, body, key):
                if key == HTTP_500:
                    self.send_error(500, "boom")
                    return
                if key == SLOW:
                    time.sleep(1.0)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                if key == STREAM_ERROR:
                    self.event({"error": {"message": "out of blocks", "code": 500}})
                    return
                if key == MALFORMED:  # a token, then a payload that is JSON but no chunk
                    self.event({"choices": [{"index": 0, "text": "w0 ", "token_ids": [100]}]})
                    self.event([1, 2])
                    return
                for i in range(body["max_tokens"]):
                    choice = {"index": 0, "text": f"w{i} ", "finish_reason": None}
                    if key != TEXT_ONLY and body.get("return_token_ids"):
                        choice["token_ids"] = [100 + i]
                    self.event({"choices": [choice]})
                    time.sleep(TOKEN_GAP_S)
                self.event({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]})
                self.event({"choices": [], "usage": {"prompt_tokens": len(body["prompt"]),
                                                     "completion_tokens": body["max_tokens"]}})
                self.wfile.write(b"data: [DONE]\n\n")

            def event(self, payload):
                self.wfile.write(b": keep-alive\n\n" + f"data: {json.dumps(payload)}\n\n".encode())
                self.wfile.flush()

        class Server(ThreadingHTTPServer):
            request_queue_size = 64  # listen()'s backlog (socketserver's default of 5 drops the connects of a burst)

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    with FakeServer() as fake:
        yield fake


def request(index, first_token=5, output_len=4, arrival_s=0.0, prompt=None):
    return BenchRequest(request_id=f"r{index}", prompt=prompt, prompt_token_ids=(first_token, index, 7, 8),
                        output_len=output_len, arrival_s=arrival_s)


def run(requests, url, max_concurrency=None, save_outputs=True, **options):
    samples = []
    spec = RunnerSpec(model="tiny-model", save_outputs=save_outputs, max_concurrency=max_concurrency,
                      options={"base_url": url, **options})
    runner = OpenAIRunner()
    result = runner.run(runner.prepare(spec), requests, samples.append)
    return {s.request_id: s for s in samples}, result


def test_stream_state_counts_tokens_and_usage():
    state = StreamState()
    state.feed({"choices": [{"text": "a", "token_ids": [5]}]}, 1.0)
    state.feed({"choices": [{"text": "bc", "token_ids": [6, 7]}]}, 1.5)
    state.feed({"choices": [{"text": "", "finish_reason": "length"}]}, 1.6)
    state.feed({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}}, 1.7)
    assert state.token_ids == [5, 6, 7] and state.token_times == [1.0, 1.5, 1.5] and state.completion_tokens == 3
    assert state.finish_reason == "length" and state.text == "abc" and _stream_error(None, state) is None


def test_stream_state_text_fallback_error_and_empty():
    state = StreamState()
    for i, at in enumerate((1.0, 1.2, 1.5)):
        state.feed({"choices": [{"text": f"t{i}"}]}, at)
    state.feed({"choices": [{"text": ""}]}, 1.6)  # empty text is not a token
    assert state.token_times == [1.0, 1.2, 1.5] and not state.token_ids
    broken = StreamState()
    broken.feed({"error": {"message": "out of blocks"}}, 1.0)
    assert "server error in stream: out of blocks" == _stream_error(None, broken)
    assert "no tokens" in _stream_error(None, StreamState())
    assert _stream_error("HTTP 500", state) == "HTTP 500"


@pytest.mark.parametrize("chunk, words", [
    ([1, 2], "a JSON list, not an object"),
    ("text", "a JSON str, not an object"),
    ({"choices": {"text": "a"}}, "'choices' is not a list"),
    ({"choices": ["a"]}, "choices[0] is not an object"),
    ({"choices": [{"token_ids": [5, "6"]}]}, "choices[0].token_ids"),
    ({"choices": [{"token_ids": [-1]}]}, "choices[0].token_ids"),
    ({"choices": [{"token_ids": [True]}]}, "choices[0].token_ids"),
    ({"choices": [{"text": 5}]}, "choices[0].text"),
    ({"choices": [{"text": "a", "finish_reason": 1}]}, "choices[0].finish_reason"),
    ({"choices": [], "usage": {"completion_tokens": "3"}}, "usage.completion_tokens"),
    ({"choices": [], "usage": {"completion_tokens": 2.5}}, "usage.completion_tokens"),
])
def test_stream_state_turns_a_malformed_chunk_into_the_request_error(chunk, words):
    state = StreamState()
    state.feed({"choices": [{"text": "a", "token_ids": [5]}]}, 1.0)
    state.feed(chunk, 2.0)
    assert _stream_error(None, state) == f"server error in stream: malformed chunk: {words}" or words in state.error
    assert state.token_ids == [5] and state.token_times == [1.0] and state.text == "a"


def test_stream_state_never_raises_on_any_json():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=5)
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["choices", "token_ids", "text", "finish_reason", "usage", "completion_tokens", "error", "x"]),
        inner, max_size=4), max_leaves=12)

    @hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
    @hypothesis.given(chunks=st.lists(values, max_size=4))
    def feed_all(chunks):
        state = StreamState()
        for at, chunk in enumerate(chunks):
            state.feed(chunk, float(at))
        assert all(type(t) is int and t >= 0 for t in state.token_ids) and isinstance(state.text, str)
        assert state.completion_tokens is None or type(state.completion_tokens) is int
        assert len(state.token_times) >= len(state.token_ids)

    feed_all()


def test_completion_body_forces_exact_greedy_output():
    settings = OpenAISettings(base_url="http://h:1")
    body = completion_body(settings, "m", request(3, output_len=9))
    assert body["prompt"] == [5, 3, 7, 8] and body["max_tokens"] == body["min_tokens"] == 9
    assert body["ignore_eos"] is True and body["temperature"] == 0 and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True} and body["return_token_ids"] is True
    plain = completion_body(OpenAISettings(base_url="http://h:1", vllm_extras=False, prompt_format="text"), "m",
                            request(3, prompt="hello there"))
    assert plain["prompt"] == "hello there" and "min_tokens" not in plain and "ignore_eos" not in plain
    with pytest.raises(BadInput, match="no text"):
        completion_body(OpenAISettings(base_url="http://h:1", prompt_format="text"), "m", request(4))


def test_settings_errors_and_secrets():
    def spec(**options):
        return RunnerSpec(model="m", options=options)

    with pytest.raises(BadInput, match="needs the option base_url"):
        OpenAISettings.from_spec(spec(), {})
    with pytest.raises(BadInput, match="base_ur") as unknown:
        OpenAISettings.from_spec(spec(base_ur="http://x"), {})
    assert "base_url" in unknown.value.hint
    with pytest.raises(BadInput, match="not an http"):
        OpenAISettings.from_spec(spec(base_url="localhost:8000"), {})
    with pytest.raises(BadInput, match="prompt_format"):
        OpenAISettings.from_spec(spec(base_url="http://x", prompt_format="chat"), {})
    with pytest.raises(BadInput, match="is not a number"):
        OpenAISettings.from_spec(spec(base_url="http://x", request_timeout_s="soon"), {})
    settings = OpenAISettings.from_spec(spec(base_url="http://x/v1/", vllm_extras="false"), {"OPENAI_API_KEY": "sk-1"})
    assert settings.completions_url == "http://x/v1/completions" and settings.vllm_extras is False
    assert settings.headers() == {"Authorization": "Bearer sk-1"}
    assert "sk-1" not in json.dumps(settings.to_config()) and settings.to_config()["api_key_set"] is True
    assert settings.resolve_model_name("m", ["served"]) == "served"
    assert settings.resolve_model_name("m", []) == "m"
    with pytest.raises(BadInput, match="serves a, b, not 'm'") as ambiguous:
        settings.resolve_model_name("m", ["a", "b"])
    assert "model_name" in ambiguous.value.hint


def test_registry_knows_the_runners():
    assert isinstance(get_runner("openai"), OpenAIRunner)
    with pytest.raises(BadInput, match="opena") as unknown:
        get_runner("opena")
    assert "openai" in unknown.value.hint


def test_run_times_every_token_and_counts_failures(server):
    requests = [request(0), request(1, output_len=6), request(2, first_token=HTTP_500),
                request(3, first_token=STREAM_ERROR), request(4, first_token=TEXT_ONLY, output_len=5),
                request(5, first_token=SLOW), request(6, first_token=MALFORMED)]
    samples, result = run(requests, server.url, request_timeout_s=0.5)
    assert set(samples) == {f"r{i}" for i in range(7)}
    for rid in ("r0", "r1", "r4"):
        sample = samples[rid]
        assert sample.success and 0 < sample.ttft_s <= sample.e2el_s
        assert len(sample.itl_s) == sample.output_len - 1
        assert sample.e2el_s >= TOKEN_GAP_S * (sample.output_len - 1)
    assert samples["r0"].output_len == 4 and samples["r0"].output_token_ids == (100, 101, 102, 103)
    assert samples["r1"].output_len == 6 and samples["r4"].output_len == 5
    assert samples["r4"].output_token_ids is None  # the server sent text only
    assert "HTTP 500" in samples["r2"].error and not samples["r2"].success
    assert "out of blocks" in samples["r3"].error
    assert "timed out" in samples["r5"].error
    assert "malformed chunk: a JSON list, not an object" in samples["r6"].error and not samples["r6"].success
    assert result.telemetry["num_failed"] == 4 and result.config["model_name"] == "tiny-model"
    assert 0 < result.duration_s < 5
    assert all(body["model"] == "tiny-model" and body["min_tokens"] == body["max_tokens"] for body in server.bodies)


def test_run_honours_max_concurrency_and_arrivals(server):
    requests = [request(i, output_len=8) for i in range(6)] + [request(6, output_len=2, arrival_s=0.4)]
    samples, _ = run(requests, server.url, max_concurrency=2, save_outputs=False)
    assert all(s.success for s in samples.values()) and len(samples) == 7
    assert server.peak_in_flight <= 2
    received = server.received_at
    assert received[6] - min(received[i] for i in range(6)) >= 0.39  # released no earlier than its arrival
    assert samples["r6"].arrival_s == 0.4 and samples["r0"].output_token_ids is None


def test_unreachable_endpoint_is_bad_input_naming_the_url():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    settings = OpenAISettings(base_url=url, connect_attempts=2, connect_retry_s=0.05)
    started = time.perf_counter()
    with pytest.raises(BadInput, match=f"cannot reach {url}/v1/models after 2 attempts"):
        probe_endpoint(settings)
    assert time.perf_counter() - started < 5
    with pytest.raises(BadInput, match="cannot reach"):
        run([request(0)], url, connect_attempts=1)


def test_failed_warm_up_stops_before_timing(server):
    from pie_core.errors import RuntimeFailure

    with pytest.raises(RuntimeFailure, match="warm-up request to .*/v1/completions failed: HTTP 500"):
        run([request(0, first_token=HTTP_500), request(1)], server.url)
    with pytest.raises(RuntimeFailure, match="failed: server error in stream: malformed chunk: a JSON list"):
        run([request(0, first_token=MALFORMED), request(1)], server.url)  # was an AttributeError out of the run
    samples, _ = run([request(0, first_token=HTTP_500), request(1)], server.url, warmup="false")
    assert not samples["r0"].success and samples["r1"].success


def test_text_prompts_need_text_before_anything_is_sent(server):
    with pytest.raises(BadInput, match="without text"):
        run([request(0, prompt="a b c"), request(1)], server.url, prompt_format="text")
    assert server.bodies == []
    samples, _ = run([request(0, prompt="a b c")], server.url, prompt_format="text")
    assert samples["r0"].success and server.bodies[-1]["prompt"] == "a b c"


def test_prepare_checks_the_endpoint_before_a_record_is_opened(server):
    runner = OpenAIRunner()
    config = runner.prepare(RunnerSpec(model="other", options={"base_url": server.url, "api_key": "sk-secret"})).config
    assert config["model_name"] == "tiny-model" and "sk-secret" not in json.dumps(config)
    with pytest.raises(BadInput, match="cannot reach"):
        runner.prepare(RunnerSpec(model="m", options={"base_url": "http://127.0.0.1:9", "connect_attempts": 1}))
