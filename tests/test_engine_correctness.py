"""Greedy tokens of LLMEngine == transformers (fp32) on the same seeded tiny weights.

Tiny OPT (multi-head, so the rebuild path applies) and tiny Llama with grouped-query
attention are saved with save_pretrained and loaded by the engine from that directory. Each
configuration also proves it exercised what it claims (pooled blocks streamed, K/V rebuilt,
preemptions), and block invariants are checked after every step.
"""
from __future__ import annotations

import random
import time

import pytest
import torch

from pie_core.capability import c_variant
from pie_core.device_probe import detect_capability
from runners.engine.config import EngineConfig
from runners.engine.llm_engine import LLMEngine
from runners.engine.sampling_params import SamplingParams

from capability_records import CPU_RECORDS
from tiny_hf_model import save_model, tiny_model

pytest.importorskip("transformers")

MAX_TOKENS = 12
# Large perturbations: outputs then depend on the whole (pooled) context.
PERTURB = 0.3


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    opt = tiny_model("opt", seed=0, perturb=PERTURB, num_hidden_layers=4, max_position_embeddings=96, eos_token_id=2)
    llama = tiny_model("llama", seed=1, perturb=PERTURB, num_hidden_layers=4, eos_token_id=2)
    return {"opt": (opt, save_model(opt, root / "opt")), "llama": (llama, save_model(llama, root / "llama"))}


def prompts_for(vocab: int, count: int = 6, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(5, 30))] for _ in range(count)]


def reference_greedy(model, prompt: list[int], max_tokens: int) -> list[int]:
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(max_tokens):
            logits = model(torch.tensor([tokens])).logits[0, -1]
            tokens.append(int(logits.argmax()))
    return tokens[len(prompt):]


@pytest.fixture(scope="module")
def references(tiny_models):
    return {family: [reference_greedy(model, prompt, MAX_TOKENS) for prompt in prompts_for(model.config.vocab_size)]
            for family, (model, _) in tiny_models.items()}


def run_engine(path, vocab, prepare=None, capability=None, **settings) -> tuple[list[list[int]], LLMEngine]:
    config = EngineConfig(model=str(path), dtype="float32", block_size=4, max_num_seqs=6, **settings)
    engine = LLMEngine(config, capability=capability)
    if prepare is not None:
        prepare(engine)
    params = SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True)
    for index, prompt in enumerate(prompts_for(vocab)):
        engine.add_request(str(index), prompt, params)
    outputs = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            outputs[output.request_id] = output
        engine.check_invariants()
    assert all(output.finish_reason == "length" for output in outputs.values())
    return [outputs[str(index)].output_token_ids for index in range(len(outputs))], engine


CASES = {
    "pool_off": dict(num_device_blocks=64, num_pool_blocks=0),
    "pool_half_depth1": dict(num_device_blocks=26, num_pool_blocks=24, prefetch_depth=1),
    "pool_half_depth3": dict(num_device_blocks=38, num_pool_blocks=24, prefetch_depth=3),
    "preemption": dict(num_device_blocks=16, num_pool_blocks=0),
    "preemption_with_pool": dict(num_device_blocks=20, num_pool_blocks=8, prefetch_depth=2),
    # The CPU default copies with the layer loop's own threads ("team"); the copy thread too:
    "pool_half_depth1_thread": dict(num_device_blocks=26, num_pool_blocks=24, prefetch_depth=1, copy_worker="thread"),
    "pool_half_depth3_thread": dict(num_device_blocks=38, num_pool_blocks=24, prefetch_depth=3, copy_worker="thread"),
}


@pytest.mark.parametrize("family", ["opt", "llama"])
@pytest.mark.parametrize("case", list(CASES))
def test_greedy_matches_transformers(tiny_models, references, family, case):
    model, path = tiny_models[family]
    tokens, engine = run_engine(path, model.config.vocab_size, **CASES[case])
    assert tokens == references[family]
    streamed = sum(stat.h2d_bytes for stat in engine.stats)
    pooled = max(stat.pool_blocks_used for stat in engine.stats)
    preempted = sum(stat.num_preempted for stat in engine.stats)
    if case.startswith("pool_half"):
        assert pooled >= 10 and streamed > 0  # about half the KV lived in the pool at the peak
        assert max(stat.device_blocks_used for stat in engine.stats) <= engine.num_device_blocks
    if case.startswith("preemption"):
        assert preempted > 0


@pytest.mark.parametrize("worker", ["team", "thread"])
def test_rebuild_fraction_half_matches_transformers(tiny_models, references, worker):
    model, path = tiny_models["opt"]
    tokens, engine = run_engine(path, model.config.vocab_size, num_device_blocks=38, num_pool_blocks=24,
                                prefetch_depth=2, rebuild_fraction=0.5, copy_worker=worker)
    assert tokens == references["opt"]
    assert sum(stat.rebuilt_tokens for stat in engine.stats) > 0
    assert engine.block_manager.layout.num_pool_rebuild_blocks == 12


def run_chunked(path, vocab, **settings) -> tuple[list[list[int]], LLMEngine, dict[str, int]]:
    """`run_engine` with a 7-token budget, counting as the engine schedules the prefill chunks after a
    sequence's first, those whose prefix is partly pooled, and those whose pooled prefix has rebuilt blocks."""
    counts = {"later_chunks": 0, "over_pooled_prefix": 0, "over_rebuilt_prefix": 0}

    def record(engine: LLMEngine) -> None:
        schedule = engine.scheduler.schedule
        first_rebuild = engine.block_manager.layout.num_pool_kv_blocks

        def recording():
            out = schedule()
            for seq in out.prefill:
                if seq.num_computed_tokens:
                    pooled = seq.pooled_blocks()
                    counts["later_chunks"] += 1
                    counts["over_pooled_prefix"] += bool(pooled)
                    counts["over_rebuilt_prefix"] += any(seq.block_table[j].index >= first_rebuild for j in pooled)
            return out

        engine.scheduler.schedule = recording

    tokens, engine = run_engine(path, vocab, prepare=record, max_num_batched_tokens=7, **settings)
    return tokens, engine, counts


CHUNKED = {
    # A token budget of 7 splits every prompt longer than that into chunks (and shares it with decodes).
    "no_pool": dict(num_device_blocks=64, num_pool_blocks=0),
    # Earlier chunks' full blocks are pooled while later chunks attend over them through staging.
    "pool_depth1": dict(num_device_blocks=18, num_pool_blocks=24, prefetch_depth=1),
    "pool_depth3_thread": dict(num_device_blocks=30, num_pool_blocks=24, prefetch_depth=3, copy_worker="thread"),
    "preemption": dict(num_device_blocks=16, num_pool_blocks=0),
}


@pytest.mark.parametrize("family", ["opt", "llama"])
@pytest.mark.parametrize("case", list(CHUNKED))
def test_chunked_prefill_matches_transformers(tiny_models, references, family, case):
    model, path = tiny_models[family]
    tokens, engine, counts = run_chunked(path, model.config.vocab_size, **CHUNKED[case])
    assert tokens == references[family]
    assert counts["later_chunks"] >= 6
    assert all(stat.num_prefill_tokens + stat.num_decode_tokens <= 7 for stat in engine.stats)
    if case.startswith("pool"):
        assert counts["over_pooled_prefix"] > 0
    if case == "preemption":
        assert sum(stat.num_preempted for stat in engine.stats) > 0


def test_chunked_prefill_over_rebuilt_prefix_matches_transformers(tiny_models, references):
    """Half the pool keeps activations: a later chunk's pooled prefix is partly rebuilt from them."""
    model, path = tiny_models["opt"]
    tokens, _, counts = run_chunked(path, model.config.vocab_size, num_device_blocks=18, num_pool_blocks=24,
                                    prefetch_depth=1, rebuild_fraction=0.5)
    assert tokens == references["opt"]
    assert counts["over_rebuilt_prefix"] > 0


def test_shrinking_pool_limit_keeps_outputs(tiny_models, references):
    model, path = tiny_models["opt"]
    config = EngineConfig(model=str(path), dtype="float32", block_size=4, max_num_seqs=6,
                          num_device_blocks=38, num_pool_blocks=24, prefetch_depth=2, rebuild_fraction=0.5)
    engine = LLMEngine(config)
    params = SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True)
    for index, prompt in enumerate(prompts_for(model.config.vocab_size)):
        engine.add_request(str(index), prompt, params)
    outputs, step = {}, 0
    while engine.has_unfinished_requests():
        if step == 6:
            assert engine.block_manager.pool_used > 2
            engine.set_pool_limit(2)
        for output in engine.step():
            outputs[output.request_id] = output
        engine.check_invariants()
        if step >= 6:
            assert engine.block_manager.pool_used <= 2
        step += 1
    assert [outputs[str(i)].output_token_ids for i in range(6)] == references["opt"]


def _prefetch_roundtrip(device: str, depth: int, worker: str) -> None:
    """Every layer's staged slot holds exactly that layer's pool rows when `wait` returns."""
    from pie_core.shapes import REGISTRY
    from runners.engine.block_manager import CacheLayout
    from runners.engine.kv_cache import KVCache
    from runners.engine.prefetcher import Prefetcher

    shape = REGISTRY["opt-125m"]
    config = EngineConfig(model="opt-125m", block_size=4, num_device_blocks=40, num_pool_blocks=24,
                          prefetch_depth=depth, rebuild_fraction=0.25)
    layout = CacheLayout.from_config(config, shape.num_layers)
    cache = KVCache(layout, shape, torch.float32, torch.device(device))
    torch.manual_seed(0)
    cache.pool.copy_(torch.randn_like(cache.pool))
    cache.pool_activations.copy_(torch.randn_like(cache.pool_activations))
    prefetcher = Prefetcher(cache, worker)
    kv_indices = [5, 0, 17, 3]
    rebuild_indices = [layout.num_pool_kv_blocks + 4, layout.num_pool_kv_blocks + 1]
    for _ in range(2):  # two iterations reuse the worker and the slots
        began = time.perf_counter()
        streamed = prefetcher.start(kv_indices, rebuild_indices)
        for layer in range(shape.num_layers):
            prefetcher.wait(layer)
            if device == "cuda":
                torch.cuda.synchronize()
            staged = cache.staging_rows(layer % depth, len(kv_indices)).cpu()
            expected = cache.pool_layers()[layer, kv_indices]
            assert torch.equal(staged, expected), f"layer {layer}"
            rows = [index - layout.num_pool_kv_blocks for index in rebuild_indices]
            assert torch.equal(prefetcher.activations(layer).cpu(), cache.pool_activations[layer, rows])
            prefetcher.release(layer)
        stall_s = prefetcher.finish()
        assert 0.0 <= stall_s <= time.perf_counter() - began  # this iteration's waits only, within its wall time
        assert prefetcher.finish() == 0.0  # a finished iteration reports no more stall
    assert streamed == shape.num_layers * (4 * cache.block_layer_bytes + 2 * cache.activation_block_layer_bytes)


@pytest.mark.parametrize("worker", ["team", "thread"])
@pytest.mark.parametrize("depth", [1, 3])
def test_prefetcher_stages_every_layer_cpu(depth, worker):
    _prefetch_roundtrip("cpu", depth, worker)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("depth", [1, 3])
def test_prefetcher_stages_every_layer_cuda(depth):
    _prefetch_roundtrip("cuda", depth, "stream")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("family, settings", [
    ("llama", CASES["pool_half_depth3"]),
    ("opt", dict(num_device_blocks=38, num_pool_blocks=24, prefetch_depth=2, rebuild_fraction=0.5)),
])
def test_cuda_pool_matches_transformers(tiny_models, references, family, settings):
    model, path = tiny_models[family]
    tokens, engine = run_engine(path, model.config.vocab_size, device="cuda", **settings)
    assert engine.cache.pool.is_pinned() and engine.cache.kv.is_cuda
    assert tokens == references[family]
    assert sum(stat.h2d_bytes for stat in engine.stats) > 0
    assert all(0.0 <= stat.stall_s <= stat.wall_s for stat in engine.stats)


def test_stop_token_ends_a_request_early(tiny_models, references):
    model, path = tiny_models["llama"]
    engine = LLMEngine(EngineConfig(model=str(path), dtype="float32", block_size=4, num_device_blocks=64))
    prompt, expected = prompts_for(model.config.vocab_size)[0], references["llama"][0]
    stop = expected[3]
    (output,) = engine.generate([prompt], SamplingParams(max_tokens=MAX_TOKENS, stop_token_ids=(stop,)))
    assert output.finish_reason == "stop"
    assert output.output_token_ids == expected[:expected.index(stop) + 1]


# Capability records of the project's machines, injected: each takes its own kernels for real
# where this CPU can run them, and otherwise the fallback the engine names; the tokens never change.
INJECTED = {name: cap for name, cap in CPU_RECORDS.items() if name != "xeon-amx"}  # AMX adds nothing for fp32
_X86_RANK = ("portable", "avx2", "avx512", "avx512bf16")


def host_runs(variant: str) -> bool:
    """Whether this CPU's hardware can build and run the C kernel `variant` (ISA limits set by env do not bind C code)."""
    host = detect_capability("cpu").with_changes(torch_cpu_capability=None)
    if variant in _X86_RANK:
        return host.is_x86 and _X86_RANK.index(variant) <= _X86_RANK.index(c_variant(host))
    return host.is_arm and (variant == "neon" or c_variant(host) == "neon-bf16")


@pytest.mark.parametrize("record", list(INJECTED))
def test_injected_capability_takes_its_path_or_names_the_fallback(tiny_models, references, record):
    model, path = tiny_models["llama"]
    cap = INJECTED[record]
    tokens, engine = run_engine(path, model.config.vocab_size, capability=cap, **CASES["pool_half_depth1"])
    assert tokens == references["llama"]
    variant = c_variant(cap)
    paths = engine.kernels
    assert paths.linear == "torch-linear"  # fp32: nothing to prepack
    if host_runs(variant):
        assert paths.decode_attention == f"c-{variant}" and not paths.fallbacks
    else:  # built for a CPU this is not: the build or its smoke test fails, and the engine says so
        assert paths.decode_attention == "torch"
        assert len(paths.fallbacks) == 1 and f"C kernels ({variant}) unavailable" in paths.fallbacks[0]
