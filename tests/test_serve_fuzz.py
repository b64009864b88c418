"""Property-based fuzzing of `pie serve`'s request bodies, sent over HTTP to a live server (in-process, tiny model).

Valid bodies of `/v1/completions` (text and token-id prompts) and `/v1/chat/completions`, each with every
supported field set, are mutated by `tests/fuzz_mutations.py` (a value of another type, a negative or huge
number, NaN or inf; a key deleted or given twice; a value nested 100,000 lists deep; the body cut short or
re-encoded) and posted as raw bytes. Every answer must be one of:
- 200 with a well-formed response: for a stream, SSE `data:` payloads that are JSON objects with
  `choices`, or an error chunk, and `data: [DONE]` last; otherwise one JSON object with `choices` and
  `usage`;
- 400 or 404 with an OpenAI-style error body (`error.message`, `error.type`, `error.code` equal to the status).
Never a 500, never a dropped connection. After the cases the server still answers a plain request with the
exact token count, and every block it handed out is free again.

The number of cases is bounded (12 examples per property, as tests/test_fuzz_inputs.py; PIE_FUZZ_EXAMPLES
for a longer run), and every request is bounded in time.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from fuzz_mutations import Mutation, mutate_document, mutations  # noqa: E402
from serve_helpers import InProcessServer, metric, post  # noqa: E402
from tiny_hf_model import vllm_model_dir  # noqa: E402

FUZZ = settings(max_examples=int(os.environ.get("PIE_FUZZ_EXAMPLES", "12")), deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
REQUEST_LIMIT_S = 30
COMMON = {"model": "tiny", "max_tokens": 4, "min_tokens": 1, "ignore_eos": True, "temperature": 0.7, "top_p": 0.9,
          "seed": 3, "stop": ["zz"], "stop_token_ids": [2], "return_token_ids": True, "n": 1, "logprobs": None}
BODIES = {
    "/v1/completions": [
        {**COMMON, "prompt": "the cat sat on the mat", "stream": True,
         "stream_options": {"include_usage": True, "continuous_usage_stats": True}},
        {**COMMON, "prompt": [[5, 9, 12], [7, 30]], "stream": False, "echo": False},
    ],
    "/v1/chat/completions": [
        {**COMMON, "messages": [{"role": "system", "content": "be brief"},
                                {"role": "user", "content": [{"type": "text", "text": "the cat"}]}],
         "stream": True, "stream_options": {"include_usage": True}},
        {**COMMON, "messages": [{"role": "user", "content": "the dog ran"}], "max_completion_tokens": 3,
         "stream": False},
    ],
}
CASES = {"count": 0, "ok": 0, "refused": 0}
# always run, whatever hypothesis draws: a value nested past Python's recursion limit (it was a 500 once)
DEEP = Mutation(kind="deep", line=0, where=2, value=None, cut=0.5, encoding="utf-8-sig")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model = vllm_model_dir(tmp_path_factory.mktemp("serve-fuzz") / "opt", "opt")
    with InProcessServer(model, served_model_name="tiny") as server:
        yield server


def check_answer(status: int, raw: bytes, said: str) -> None:
    CASES["count"] += 1
    if status != 200:
        assert status in (400, 404), said
        error = json.loads(raw)["error"]
        assert error["code"] == status and error["type"] and error["message"], said
        CASES["refused"] += 1
        return
    CASES["ok"] += 1
    text = raw.decode()
    if not text.startswith("data:"):
        data = json.loads(text)
        assert data["choices"] and data["usage"]["completion_tokens"] >= 1, said
        return
    payloads = [line[len("data:"):].strip() for line in text.splitlines() if line.startswith("data:")]
    assert payloads[-1] == "[DONE]", said
    for payload in payloads[:-1]:
        chunk = json.loads(payload)
        assert isinstance(chunk, dict) and ("choices" in chunk or "error" in chunk), said


def run_case(served, path: str, index: int, mutation: Mutation) -> None:
    body = BODIES[path][index % len(BODIES[path])]
    payload, where = mutate_document(json.dumps(body), mutation)
    status, raw = post(served.url + path, payload, timeout=REQUEST_LIMIT_S)
    check_answer(status, raw, f"{path} body {index} {mutation.describe()} at {where}: {status} {raw[:600]!r}")


@FUZZ
@given(mutation=mutations(), index=hypothesis.strategies.integers(0, 1))
@example(mutation=DEEP, index=0)
def test_completion_bodies(served, mutation, index):
    run_case(served, "/v1/completions", index, mutation)


@FUZZ
@given(mutation=mutations(), index=hypothesis.strategies.integers(0, 1))
@example(mutation=DEEP, index=1)
def test_chat_bodies(served, mutation, index):
    run_case(served, "/v1/chat/completions", index, mutation)


@pytest.mark.parametrize("extra, param, words", [
    ({"prompt": [[]]}, "prompt", "'prompt' is empty"),  # was a 400 worded "request 'request' has an empty prompt"
    ({"prompt": [5], "seed": 2**70}, "seed", "64-bit"),  # was a 500 (the generator's seed overflowed)
    ({"prompt": [5], "seed": -2**63 - 1}, "seed", "64-bit"),
])
def test_what_fuzzing_found_is_a_400_naming_the_field(served, extra, param, words):
    status, raw = post(served.url + "/v1/completions", json.dumps({"model": "tiny", "max_tokens": 2, **extra}).encode())
    error = json.loads(raw)["error"]
    assert status == 400 and error["param"] == param and words in error["message"], raw


def test_64_bit_seeds_at_both_ends_are_served(served):
    for seed in (-2**63, 2**63 - 1):
        status, raw = post(served.url + "/v1/completions", json.dumps(
            {"model": "tiny", "prompt": [5, 9], "max_tokens": 2, "seed": seed, "ignore_eos": True}).encode())
        assert status == 200, raw


def test_valid_bodies_are_served(served):
    """The unmutated bodies are answered 200, so the mutations start from requests that work."""
    for path, bodies in BODIES.items():
        for body in bodies:
            status, raw = post(served.url + path, json.dumps(body).encode())
            assert status == 200, raw[:600]


def test_zz_server_still_serves_and_frees_every_block(served):
    """Runs after the properties (pytest keeps file order): they ran, and left the server whole."""
    assert CASES["count"] >= 2 * FUZZ.max_examples and CASES["ok"] and CASES["refused"], CASES
    status, raw = post(served.url + "/v1/completions", json.dumps(
        {"model": "tiny", "prompt": [5, 9, 12], "max_tokens": 5, "ignore_eos": True, "temperature": 0,
         "return_token_ids": True}).encode())
    assert status == 200 and len(json.loads(raw)["choices"][0]["token_ids"]) == 5
    deadline = time.monotonic() + 20
    while metric(served.url, "pie:device_blocks_used") != 0 or metric(served.url, "vllm:num_requests_running") != 0:
        assert time.monotonic() < deadline, "blocks still in use after the fuzz cases"
        time.sleep(0.05)
