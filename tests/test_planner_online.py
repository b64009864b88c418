"""`pie tune --online` glue: the hill-climber drives a real (tiny, seeded) Pie engine on the CPU."""
from __future__ import annotations

import time

import pytest
from tiny_hf_model import tiny_model_dir

from pie_core.shapes import resolve_model
from planner.budgets import Budgets, WorkloadStats, activation_workspace_bytes
from planner.hardware import from_profile
from planner.tune import TuneRequest, make_plan
from runners.online_tuner import OnlineSettings, run_online
from tests.planner_fixtures import synthetic_profile

pytest.importorskip("transformers")


def test_online_climb_on_the_engine_returns_the_measured_best(tmp_path):
    # No weights: the engine uses seeded random weights.
    model = str(tiny_model_dir(tmp_path, weights=False, vocab_size=256, hidden_size=64, ffn_dim=128,
                               max_position_embeddings=256, word_embed_proj_dim=64))
    shape = resolve_model(model)
    hardware = from_profile(synthetic_profile(model, dtype="float32"))
    kv_bytes = shape.kv_bytes_per_token("float32")
    workspace = activation_workspace_bytes(shape, 4, 16, 512)
    device = shape.weight_bytes("float32") + workspace + 8 * 48 * kv_bytes  # room for about 8 sequences of KV
    plan = make_plan(TuneRequest(shape=shape, dtype="float32", hardware=hardware,
                                 budgets=Budgets(int(device / 0.95), 64 * 2**20, block_size=16, max_num_batched_tokens=512),
                                 workload=WorkloadStats("fixed", 24, 24, synthetic=True), max_batch_size=16))
    assert plan.settings.num_pool_blocks > 0, plan.explanation
    seen = []
    start = time.perf_counter()
    tuned = run_online(plan, OnlineSettings(num_prompts=16, window_steps=3, warmup_steps=1, max_moves=4, settle_steps=4),
                       on_move=seen.append)
    assert time.perf_counter() - start < 60
    online = tuned.online
    assert 1 <= online["num_moves"] <= 4 and len(seen) == online["num_moves"] + 1
    assert seen[0].pool_blocks == plan.settings.num_pool_blocks
    assert tuned.settings.num_pool_blocks == online["best_pool_blocks"] == seen[-1].best_blocks
    assert online["best_output_tok_s"] > 0 and online["workload"]["synthetic"]
    assert 0 <= online["best_pool_blocks"] <= online["pool_capacity_blocks"]
    # The CPU's default team copy cannot overlap compute: its stall is the copy, so no stall limit applies.
    assert online["copy_worker"] == "team" and online["max_stall_fraction"] == 1.0
