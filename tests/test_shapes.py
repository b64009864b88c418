import json

import pytest
from tiny_hf_model import tiny_model_dir

from pie_core.errors import BadInput
from pie_core.shapes import REGISTRY, resolve_model

MIB = 1024 * 1024


@pytest.mark.parametrize("name, mib", [("opt-13b", 0.78), ("opt-30b", 1.31), ("llama-3-8b", 0.125)])
def test_kv_bytes_per_token_matches_hand_computed(name, mib):
    assert resolve_model(name).kv_bytes_per_token("float16") / MIB == pytest.approx(mib, abs=0.005)


def test_kv_bytes_per_token_exact():
    # 2 * layers * kv_heads * head_dim * 2 bytes
    assert REGISTRY["opt-30b"].kv_bytes_per_token() == 2 * 48 * 56 * 128 * 2
    assert REGISTRY["llama-2-70b"].kv_bytes_per_token() == 2 * 80 * 8 * 128 * 2
    assert REGISTRY["qwen2.5-7b"].kv_bytes_per_token() == 56 * 1024


@pytest.mark.parametrize("name, billions", [("opt-125m", 0.125), ("opt-1.3b", 1.316), ("opt-30b", 29.97),
                                             ("llama-2-7b", 6.738), ("llama-3-8b", 8.03), ("llama-2-70b", 68.98),
                                             ("qwen2.5-7b", 7.62), ("mistral-7b", 7.24)])
def test_parameter_counts_match_published(name, billions):
    assert REGISTRY[name].num_params() / 1e9 == pytest.approx(billions, rel=0.01)


def test_weight_and_activation_bytes():
    shape = REGISTRY["opt-13b"]
    assert shape.weight_bytes("float16") == 2 * shape.num_params()
    assert shape.weight_bytes("float32") == 4 * shape.num_params()
    assert shape.activation_bytes_per_token_per_layer("float16") == 5120 * 2
    assert shape.rebuild_saves_bytes  # multi-head: h < 2 * h
    assert not REGISTRY["llama-3-8b"].rebuild_saves_bytes  # GQA: 4096 > 2 * 1024


def test_unknown_model_suggests_close_names():
    with pytest.raises(BadInput) as err:
        resolve_model("opt-31b")
    assert "opt-30b" in err.value.one_line()


def test_directory_without_config(tmp_path):
    with pytest.raises(BadInput, match="config.json"):
        resolve_model(str(tmp_path))


def test_hf_config_roundtrip(tmp_path):
    pytest.importorskip("transformers")
    tiny_model_dir(tmp_path, "llama", weights=False, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, intermediate_size=128, vocab_size=100, max_position_embeddings=2048)
    shape = resolve_model(str(tmp_path))
    assert (shape.family, shape.num_kv_heads, shape.head_dim) == ("llama", 2, 16)
    opt_dir = tiny_model_dir(tmp_path / "opt", weights=False, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4, ffn_dim=64, vocab_size=50, max_position_embeddings=64)
    assert resolve_model(str(opt_dir)).intermediate_size == 64


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(BadInput, match="gpt2"):
        resolve_model(str(tmp_path))


def test_engine_refuses_what_it_does_not_implement():
    from runners.engine.config import EngineConfig

    with pytest.raises(BadInput, match="RoPE scaling"):
        EngineConfig(model="llama-3.1-8b")
    with pytest.raises(BadInput, match="sliding-window"):
        EngineConfig(model="mistral-7b")
    assert EngineConfig(model="mistral-7b", max_model_len=4096).model_len == 4096
