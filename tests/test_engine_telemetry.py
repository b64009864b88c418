"""Per-iteration telemetry counts what the iteration actually computed."""
from __future__ import annotations

import pytest
from tiny_hf_model import tiny_model_dir

from runners.engine.config import EngineConfig
from runners.engine.llm_engine import LLMEngine
from runners.engine.sampling_params import SamplingParams

pytest.importorskip("transformers")


def test_stats_count_prompt_tokens_and_decodes(tmp_path):
    tiny_model_dir(tmp_path, perturb=0, max_position_embeddings=64)
    engine = LLMEngine(EngineConfig(model=str(tmp_path), dtype="float32", block_size=4, num_device_blocks=64, max_num_seqs=4))
    prompts = [list(range(3, 10)), list(range(3, 15))]  # 7 and 12 tokens
    engine.generate(prompts, SamplingParams(max_tokens=3, ignore_eos=True))
    first = engine.stats[0]
    assert (first.num_prefill_tokens, first.num_decode_tokens, first.batch_size) == (19, 0, 2)
    assert [s.num_decode_tokens for s in engine.stats[1:]] == [2, 2]
    assert sum(s.num_prefill_tokens for s in engine.stats) == 19
