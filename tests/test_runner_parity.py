"""With greedy decoding and --save-outputs, the pie and hf runners produce the same token ids.

Tiny seeded models saved to tmp dirs: OPT with weights (pool off and on), Llama with weights,
and an OPT directory without weights (both runners then use the loader's seeded random weights).
"""
import json

import pytest
import torch

from results.store import load_record

from cli_helpers import run_pie
from tiny_hf_model import TOKENIZER_IDS, tiny_model_dir

WORKLOAD = ["--workload", "uniform", "--input-len", "20", "--output-len", "12", "--range-ratio", "0.5", "-n", "8",
            "--dtype", "float32", "--save-outputs"]


def bench(args, monkeypatch, capsys):
    code, out, err = run_pie(["bench", *args, "--json"], monkeypatch, capsys)
    assert code in (0, None), err
    payload = json.loads(out)
    return payload, load_record(payload["record_path"])


def outputs(record):
    assert record.complete and all(s.success for s in record.requests)
    return {s.request_id: s.output_token_ids for s in record.requests}


@pytest.fixture(scope="module")
def opt_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("parity") / "opt", **TOKENIZER_IDS)


@pytest.mark.parametrize("pool", [None, ["--option", "block_size=4", "--device-blocks", "60", "--pool-blocks", "48"]],
                         ids=["no-pool", "cpu-pool"])
def test_pie_matches_hf_on_tiny_opt(pool, opt_dir, tmp_path, monkeypatch, capsys):
    _, reference = bench(["-m", opt_dir, "--runner", "hf", *WORKLOAD, "--results-dir", tmp_path], monkeypatch, capsys)
    payload, record = bench(["-m", opt_dir, "--runner", "pie", *WORKLOAD, *(pool or []), "--results-dir", tmp_path],
                            monkeypatch, capsys)
    assert outputs(record) == outputs(reference)
    assert all(len(ids) == s.output_len for s in record.requests for ids in [s.output_token_ids])
    if pool:
        # 8 requests of up to 48 tokens in 4-token blocks exceed the 12 resident device blocks (60 less 48 staging)
        assert payload["config"]["num_pool_blocks"] == 48
        assert payload["telemetry"]["peak_pool_blocks_used"] > 0 and payload["telemetry"]["h2d_bytes"] > 0


def test_pie_matches_hf_on_tiny_llama(tmp_path, monkeypatch, capsys):
    model = tiny_model_dir(tmp_path / "llama", "llama", seed=1, **TOKENIZER_IDS)
    _, reference = bench(["-m", model, "--runner", "hf", *WORKLOAD, "--results-dir", tmp_path], monkeypatch, capsys)
    _, record = bench(["-m", model, "--runner", "pie", *WORKLOAD, "--results-dir", tmp_path], monkeypatch, capsys)
    assert outputs(record) == outputs(reference)


def test_seeded_random_weights_match_without_safetensors(opt_dir, tmp_path, monkeypatch, capsys):
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text((opt_dir / "config.json").read_text())
    hf_payload, reference = bench(["-m", config_only, "--runner", "hf", *WORKLOAD, "--results-dir", tmp_path], monkeypatch, capsys)
    pie_payload, record = bench(["-m", config_only, "--runner", "pie", *WORKLOAD, "--results-dir", tmp_path], monkeypatch, capsys)
    assert hf_payload["config"]["random_weights"] and pie_payload["config"]["random_weights"]
    assert outputs(record) == outputs(reference)
    _, with_weights = bench(["-m", opt_dir, "--runner", "pie", *WORKLOAD, "--results-dir", tmp_path], monkeypatch, capsys)
    assert outputs(with_weights) != outputs(record)  # the random weights are not the saved ones


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pie_matches_hf_on_cuda(opt_dir, tmp_path, monkeypatch, capsys):
    pool = ["--option", "block_size=4", "--device-blocks", "60", "--pool-blocks", "48"]
    _, reference = bench(["-m", opt_dir, "--runner", "hf", "--device", "cuda", *WORKLOAD, "--results-dir", tmp_path],
                         monkeypatch, capsys)
    payload, record = bench(["-m", opt_dir, "--runner", "pie", "--device", "cuda", *WORKLOAD, *pool, "--results-dir", tmp_path],
                            monkeypatch, capsys)
    assert outputs(record) == outputs(reference)
    assert payload["summary"]["peak_device_memory_bytes"] > 0 and payload["telemetry"]["h2d_bytes"] > 0
