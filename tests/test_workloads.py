"""Workload loaders on small files the tests write: shapes, filters, malformed entries, errors."""
import json

import pytest

from pie_core.errors import BadInput
from runners.workloads import WorkloadSpec, load_workload
from runners.workloads.tokenize import ApproximateTokenizer, load_tokenizer

from bench_helpers import write_sharegpt
from tiny_hf_model import save_tokenizer

WORDS = "one two three four five six seven eight nine ten eleven twelve".split()


def text(n):
    return " ".join(WORDS[i % len(WORDS)] for i in range(n))


def test_sharegpt_filter_malformed_and_seeded_shuffle(tmp_path):
    good = [(text(5 + i), text(6 + i)) for i in range(10)]
    short = [(text(2), text(10)), (text(10), text(2))]  # prompt < 4 tokens; output < 4 tokens
    malformed = [{"conversations": [{"from": "human", "value": "only one turn"}]}, "not a dict",
                 {"conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]}, {"no": "conversations"}]
    path = write_sharegpt(tmp_path / "sg.json", good + short, malformed)
    requests, info = load_workload(WorkloadSpec("sharegpt", "opt-125m", path, num_prompts=100, seed=3))
    assert len(requests) == 10 and not info.synthetic and info.num_malformed == 4 and info.num_filtered == 2
    assert "approximate" in info.tokenizer and info.dataset_path == str(path)
    lens = sorted((r.prompt_len, r.output_len) for r in requests)
    assert lens == [(5 + i, 6 + i) for i in range(10)]  # word-level approximation: one id per word
    again, _ = load_workload(WorkloadSpec("sharegpt", "opt-125m", path, num_prompts=100, seed=3))
    other, _ = load_workload(WorkloadSpec("sharegpt", "opt-125m", path, num_prompts=100, seed=4))
    assert [r.prompt for r in again] == [r.prompt for r in requests] != [r.prompt for r in other]
    assert "only 10 of 100" in info.notes[0]


def test_sharegpt_output_len_and_model_length(tmp_path):
    path = write_sharegpt(tmp_path / "sg.json", [(text(20), text(2)), (text(30), text(40))])
    requests, info = load_workload(WorkloadSpec("sharegpt", "opt-125m", path, num_prompts=5, output_len=7))
    assert [r.output_len for r in requests] == [7, 7] and info.output_len_fixed == 7  # short output kept when fixed
    model = tmp_path / "tiny"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "opt", "hidden_size": 32, "num_hidden_layers": 2,
                                                  "num_attention_heads": 4, "vocab_size": 97, "max_position_embeddings": 30}))
    requests, info = load_workload(WorkloadSpec("sharegpt", str(model), path, num_prompts=5, output_len=7))
    assert [r.prompt_len for r in requests] == [20] and info.num_filtered == 1 and info.max_model_len == 30
    assert all(0 <= t < 97 for r in requests for t in r.prompt_token_ids)


def test_model_tokenizer_is_used(tmp_path):
    model = tmp_path / "tok"
    model.mkdir()
    save_tokenizer(model)
    (model / "config.json").write_text(json.dumps({"model_type": "opt", "hidden_size": 32, "num_hidden_layers": 2,
                                                  "num_attention_heads": 4, "vocab_size": 97, "max_position_embeddings": 128}))
    tokenizer = load_tokenizer(str(model))
    assert tokenizer.exact and "model tokenizer" in tokenizer.description
    path = write_sharegpt(tmp_path / "sg.json", [("the quick brown fox jumps", "over a lazy dog again")])
    (request,), info = load_workload(WorkloadSpec("sharegpt", str(model), path, num_prompts=1))
    assert request.prompt_token_ids == tuple(tokenizer.encode("the quick brown fox jumps"))
    assert info.tokenizer == tokenizer.description


def test_alpaca(tmp_path):
    rows = [{"instruction": text(4), "input": text(3), "output": text(5)},
            {"instruction": text(6), "input": "", "output": text(8)},
            {"instruction": 5, "output": "x"}, {"input": "no instruction"}]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(rows))
    requests, info = load_workload(WorkloadSpec("alpaca", "opt-125m", path, num_prompts=10))
    assert info.num_malformed == 2 and sorted((r.prompt_len, r.output_len) for r in requests) == [(6, 8), (7, 5)]
    assert any(r.prompt == f"{text(4)}\n\n{text(3)}" for r in requests)
    lines = tmp_path / "alpaca.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n{torn\n")
    requests, info = load_workload(WorkloadSpec("alpaca", "opt-125m", lines, num_prompts=10))
    assert len(requests) == 2 and info.num_malformed == 1


def test_jsonl(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join([
        json.dumps({"prompt": text(5), "output_len": 3}),
        json.dumps({"prompt_token_ids": [5, 6, 7], "max_tokens": 4}),
        json.dumps({"prompt": text(4), "completion": text(6)}),
        json.dumps({"prompt": text(4)}),
        json.dumps({"prompt_token_ids": [5, 10**9]}),  # outside the vocabulary
        json.dumps({"prompt": text(3), "output_len": 0}),
        json.dumps([1, 2]), "{not json", "",
        json.dumps({"prompt_token_ids": [5] * 2000, "output_len": 100}),  # longer than the model
    ]))
    requests, info = load_workload(WorkloadSpec("jsonl", "opt-125m", path, num_prompts=50))
    assert [(r.prompt_len, r.output_len) for r in requests] == [(5, 3), (3, 4), (4, 6), (4, 128)]
    assert info.num_malformed == 4 and info.num_filtered == 1 and "generated 128" in info.notes[0]
    requests, _ = load_workload(WorkloadSpec("jsonl", "opt-125m", path, num_prompts=2, output_len=9))
    assert [r.output_len for r in requests] == [9, 9]


def test_synthetic_distributions():
    requests, info = load_workload(WorkloadSpec("sharegpt", "opt-125m", num_prompts=4000, seed=1))
    assert info.synthetic and info.name == "synthetic-sharegpt" and "none" in info.tokenizer
    assert abs(info.mean_prompt_len - 161) / 161 < 0.1 and abs(info.mean_output_len - 338) / 338 < 0.1
    assert all(4 <= r.prompt_len <= 1024 and r.prompt_len + r.output_len <= 2048 for r in requests)
    _, alpaca = load_workload(WorkloadSpec("alpaca", "opt-125m", num_prompts=4000, seed=1))
    assert abs(alpaca.mean_prompt_len - 19) / 19 < 0.1 and abs(alpaca.mean_output_len - 58) / 58 < 0.1
    fixed, info = load_workload(WorkloadSpec("fixed", "opt-125m", num_prompts=3, input_len=10, output_len=5))
    assert [(r.prompt_len, r.output_len, r.prompt) for r in fixed] == [(10, 5, None)] * 3
    uniform, _ = load_workload(WorkloadSpec("uniform", "opt-125m", num_prompts=200, input_len=100, output_len=20, range_ratio=0.5))
    assert all(50 <= r.prompt_len <= 150 and 10 <= r.output_len <= 30 for r in uniform)
    again, _ = load_workload(WorkloadSpec("uniform", "opt-125m", num_prompts=200, input_len=100, output_len=20, range_ratio=0.5))
    assert again == uniform
    assert all(4 <= t < 50272 for r in uniform for t in r.prompt_token_ids)


def test_bad_inputs(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        load_workload(WorkloadSpec("sharegpt", "opt-125m", tmp_path / "missing.json"))
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(BadInput, match="is not valid JSON"):
        load_workload(WorkloadSpec("sharegpt", "opt-125m", broken))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"conversations": []}))
    with pytest.raises(BadInput, match="not a ShareGPT file"):
        load_workload(WorkloadSpec("sharegpt", "opt-125m", wrong))
    empty = write_sharegpt(tmp_path / "empty.json", [(text(2), text(2))], ["junk"])
    with pytest.raises(BadInput, match="no usable requests .1 malformed, 1 outside"):
        load_workload(WorkloadSpec("sharegpt", "opt-125m", empty))
    with pytest.raises(BadInput, match="needs --dataset-path"):
        load_workload(WorkloadSpec("jsonl", "opt-125m"))
    with pytest.raises(BadInput, match="unknown workload"):
        WorkloadSpec("sharegtp")
    with pytest.raises(BadInput, match="exceed the model's max length"):
        load_workload(WorkloadSpec("fixed", "opt-125m", input_len=2000, output_len=100))


def test_approximate_tokenizer_is_deterministic():
    tokenizer = ApproximateTokenizer(1000, "test")
    assert tokenizer.encode("Hello, world!") == tokenizer.encode("Hello, world!")
    assert len(tokenizer.encode("Hello, world!")) == 4 and not tokenizer.exact
    assert all(4 <= t < 1000 for t in tokenizer.encode(text(50)))
