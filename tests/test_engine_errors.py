"""LLMEngine refuses bad input with one clear BadInput, and one bad request never sinks the others."""
from __future__ import annotations

import pytest
import torch
from tiny_hf_model import tiny_model_dir

from pie_core.errors import BadInput
from runners.engine.config import EngineConfig
from runners.engine.llm_engine import LLMEngine
from runners.engine.sampling_params import SamplingParams

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def opt_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("errors") / "opt", perturb=0, max_position_embeddings=40,
                          eos_token_id=2)


def engine(opt_dir, **settings):
    base = dict(model=str(opt_dir), dtype="float32", block_size=4, num_device_blocks=32, max_num_seqs=4)
    return LLMEngine(EngineConfig(**{**base, **settings}))


def test_prompt_longer_than_context_is_refused(opt_dir):
    with pytest.raises(BadInput, match="context"):
        engine(opt_dir).add_request("long", list(range(3, 43)), SamplingParams(max_tokens=4))


def test_bad_request_in_generate_does_not_sink_the_others(opt_dir):
    outputs = engine(opt_dir).generate([[5, 6, 7], list(range(3, 50)), [8, 9]], SamplingParams(max_tokens=5, ignore_eos=True))
    assert [output.finish_reason for output in outputs] == ["length", "error", "length"]
    assert "context" in outputs[1].error and not outputs[1].output_token_ids
    assert len(outputs[0].output_token_ids) == 5 and len(outputs[2].output_token_ids) == 5


def test_generation_stops_at_the_context_limit(opt_dir):
    (output,) = engine(opt_dir).generate([list(range(3, 33))], SamplingParams(max_tokens=100, ignore_eos=True))
    assert output.finish_reason == "length" and len(output.output_token_ids) == 10  # 30 + 10 = max positions 40


def test_budget_too_small_for_one_sequence(opt_dir):
    small = engine(opt_dir, num_device_blocks=3)
    with pytest.raises(BadInput, match="KV blocks"):
        small.add_request("a", list(range(3, 20)), SamplingParams(max_tokens=4))
    with pytest.raises(BadInput, match="after staging"):
        engine(opt_dir, num_device_blocks=4, num_pool_blocks=64, prefetch_depth=2)


def test_prompt_longer_than_token_budget_is_chunked_not_refused(opt_dir):
    (output,) = engine(opt_dir, max_num_batched_tokens=8).generate([list(range(3, 20))], SamplingParams(max_tokens=2))
    assert output.finish_reason == "length" and len(output.output_token_ids) == 2


@pytest.mark.parametrize("settings, message", [
    (dict(dtype="float8"), "unknown dtype"),
    (dict(device="tpu"), "unknown device"),
    (dict(copy_worker="stream"), "copy_worker 'stream' does not exist on cpu"),
    (dict(block_size=6), "power of two"),
    (dict(rebuild_fraction=1.5), "rebuild_fraction"),
])
def test_config_errors(opt_dir, settings, message):
    with pytest.raises(BadInput, match=message):
        engine(opt_dir, **settings)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_bad_input(opt_dir):
    with pytest.raises(BadInput, match="CUDA"):
        engine(opt_dir, device="cuda")


def test_missing_tensors_surface_as_bad_input(opt_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((opt_dir / "config.json").read_text())
    tensors = load_file(str(opt_dir / "model.safetensors"))
    dropped = [name for name in tensors if "layers.1.fc1" in name]
    save_file({name: tensor for name, tensor in tensors.items() if name not in dropped}, str(broken / "model.safetensors"))
    with pytest.raises(BadInput, match="lacks 2 tensor"):
        engine(broken)
    with pytest.raises(BadInput, match="no \\*.safetensors"):
        engine(_config_only(opt_dir, tmp_path), random_weights=False)


def _config_only(opt_dir, tmp_path):
    path = tmp_path / "config_only"
    path.mkdir()
    (path / "config.json").write_text((opt_dir / "config.json").read_text())
    return path


def test_request_ids_tokens_and_pool_limit_are_checked(opt_dir):
    eng = engine(opt_dir, num_pool_blocks=8, num_device_blocks=40)
    eng.add_request("a", [5, 6], SamplingParams(max_tokens=2))
    with pytest.raises(BadInput, match="already in use"):
        eng.add_request("a", [5, 6], SamplingParams(max_tokens=2))
    with pytest.raises(BadInput, match="empty prompt"):
        eng.add_request("b", [], SamplingParams(max_tokens=2))
    with pytest.raises(BadInput, match="token ids"):
        eng.add_request("c", [5, 97], SamplingParams(max_tokens=2))
    with pytest.raises(BadInput, match="outside"):
        eng.set_pool_limit(9)
    eng.set_pool_limit(0)
    assert eng.pool_limit_blocks == 0 and eng.num_pool_blocks == 8


def test_abort_frees_blocks_and_reports(opt_dir):
    eng = engine(opt_dir)
    eng.add_request("a", [5, 6, 7], SamplingParams(max_tokens=20, ignore_eos=True))
    eng.add_request("b", [5, 6, 7], SamplingParams(max_tokens=3, ignore_eos=True))
    eng.step()
    eng.abort_request("a")
    eng.abort_request("unknown")  # nothing to do
    outputs = {}
    while eng.has_unfinished_requests():
        outputs.update({output.request_id: output for output in eng.step()})
    eng.check_invariants()
    assert outputs["b"].finish_reason == "length" and eng._outputs["a"].finish_reason == "abort"
    assert eng.block_manager.device_used == 0
