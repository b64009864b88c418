"""Per-layer timing of the engine's own layer: grid planning, glue to the engine kernels, and the fit on real timings."""
import resource

import pytest

from pie_core.capability import choose_dtype
from pie_core.device_probe import detect_capability
from pie_core.shapes import ModelShape, resolve_model
from pie_core.sizes import GIB
from profiler.fit import fit_decode
from profiler.layer import (BLOCK_SIZE, GridPoint, GridSpec, LayerBench, Roofline, kv_cache_bytes, measure_layer, memory_chunks,
                            plan_grid)

torch = pytest.importorskip("torch")
TINY = ModelShape(name="tiny-opt", family="opt", hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=4,
                  intermediate_size=256, vocab_size=128, max_positions=512, word_embed_proj_dim=64,
                  tie_word_embeddings=True)
FAST = Roofline(memory_bandwidth_gbps=20.0, matmul_tflops=1.0)
SLOW = Roofline(memory_bandwidth_gbps=4.0, matmul_tflops=0.3)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_small_layer_gets_the_whole_quick_grid():
    points = plan_grid(resolve_model("opt-125m"), "bfloat16", GridSpec.for_run(True), FAST, 16 * GIB)
    decode = [p for p in points if p.phase == "decode"]
    assert len(decode) == 12 and len(points) == 18
    assert points[0].phase == "decode" and points[-1].phase == "prefill"


def test_big_layer_keeps_a_minimum_grid_within_ten_budgets():
    spec = GridSpec.for_run(True)
    points = plan_grid(resolve_model("opt-30b"), "bfloat16", spec, SLOW, 16 * GIB)
    decode = [p for p in points if p.phase == "decode"]
    assert len(decode) >= spec.min_decode_points
    assert len({p.batch_size for p in decode}) >= 3 and len({p.context_len for p in decode}) >= 3
    assert all(p.estimate_s <= 10 * spec.point_budget_s for p in points)


def test_grid_respects_free_memory_and_max_positions():
    shape = resolve_model("opt-125m")
    roomy = plan_grid(shape, "bfloat16", GridSpec.for_run(False), FAST, 16 * GIB)
    tight = plan_grid(shape, "bfloat16", GridSpec.for_run(False), FAST, 400 * 2**20)
    assert len(tight) < len(roomy)
    assert all(kv_cache_bytes(shape, "bfloat16", p.batch_size, p.context_len) <= 100 * 2**20 for p in tight)
    assert all(p.context_len < shape.max_positions for p in roomy)  # 2048 + 1 cached tokens would not fit


def test_memory_chunks_bound_each_group():
    points = tuple(GridPoint("decode", b, 1024, 0.01) for b in (1, 8, 64, 64))
    size = lambda p: kv_cache_bytes(TINY, "float32", p.batch_size, p.context_len)  # noqa: E731
    budget = size(points[0]) + size(points[1]) + size(points[2])
    chunks = memory_chunks(points, TINY, "float32", budget)
    assert [len(c) for c in chunks] == [3, 1]
    assert sum(len(c) for c in chunks) == len(points)


def test_slots_follow_the_block_table():
    bench = LayerBench(TINY, "float32", "cpu", seed=0)
    tables = torch.tensor([[5, 2], [0, 7]])
    positions = torch.tensor([[0, 17], [15, 16]])
    slots = bench._slots(tables, positions)
    assert slots.tolist() == [5 * BLOCK_SIZE, 2 * BLOCK_SIZE + 1, 15, 7 * BLOCK_SIZE]


def test_engine_layer_steps_run_and_return_hidden_states():
    bench = LayerBench(TINY, "float32", "cpu", seed=0)
    assert bench.model.num_layers == 1  # one layer built, not four
    decode = bench.decode_call(batch_size=3, context_len=40)()
    prefill = bench.prefill_call(batch_size=2, prompt_len=24)()
    assert decode.shape == (3, 64) and prefill.shape == (48, 64)
    assert torch.isfinite(decode).all() and torch.isfinite(prefill).all()
    assert bench.decode_kernel() == "torch" or bench.decode_kernel().startswith("c-")


def test_measure_layer_times_every_planned_point(one_thread):
    spec = GridSpec((1, 4), (16, 64), (1, 2), (8, 32), point_budget_s=1.0, sample_budget_s=0.01, min_repeats=2, max_repeats=3)
    built = []
    timings, kernel = measure_layer(TINY, "float32", "cpu", spec, FAST, on_built=built.append)
    assert built == [8] and len(timings) == 8
    assert kernel["decode_attention"] == "torch" or kernel["decode_attention"].startswith("c-")
    for timing in timings:
        assert 2 <= len(timing.samples_s) <= 3
        assert timing.p10_s <= timing.median_s <= timing.p90_s


@pytest.mark.slow
def test_decode_fit_runs_on_engine_timings(one_thread):
    """The engine's opt-125m decode layer, timed over the quick grid, fits with held-out points.

    The accuracy target (median held-out error <= 10%) is a wall-clock figure, so it is checked by
    benchmarks/bench_profile_fit.py on a quiet machine, not here; the fit's accuracy under known
    noise is unit-tested in tests/test_profiler_fit.py.
    """
    shape = resolve_model("opt-125m")
    dtype = choose_dtype(detect_capability("cpu")).dtype  # as `pie profile` does: emulated bf16 would crawl
    timings, _ = measure_layer(shape, dtype, "cpu", GridSpec.for_run(True), FAST)
    fit, result = fit_decode(timings, shape.layer_weight_bytes(dtype), shape.layer_flops_per_token(),
                             shape.kv_bytes_per_token_per_layer(dtype))
    assert result.num_holdout_points >= 3 and len(result.holdout_errors) == result.num_holdout_points
    assert min(fit.fixed_s, fit.per_token_s, fit.per_kv_token_s) >= 0 and fit.fixed_s > 0
    assert 0 <= fit.median_rel_error <= fit.max_rel_error < float("inf")
    assert all(fit.predict_s(t.batch_size, t.context_len) > 0 for t in timings if t.phase == "decode")


@pytest.mark.slow
def test_opt_30b_builds_one_layer_not_the_model():
    bench = LayerBench(resolve_model("opt-30b"), "bfloat16", "cpu", seed=0)
    assert bench.model.num_layers == 1 and len(bench.model.layers) == 1
    peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert peak_bytes < 8 * GIB  # the whole model is about 60 GB in bf16
    out = bench.decode_call(batch_size=1, context_len=16)()
    assert out.shape == (1, 7168)


@pytest.mark.parametrize("changes", [{"decode_batch_sizes": ()}, {"prefill_context_lens": (0, 16)},
                                     {"point_budget_s": 0.0}, {"min_repeats": 5, "max_repeats": 3}])
def test_grid_spec_validates(changes):
    import dataclasses

    from pie_core.errors import BadInput

    with pytest.raises(BadInput):
        dataclasses.replace(GridSpec.for_run(True), **changes)


def test_prefill_is_timed_through_the_engines_prefill_kernel(monkeypatch):
    """On CUDA the engine runs Triton prefill; the profiler must time (and fit) that kernel, not the PyTorch one."""
    import dataclasses

    from runners.engine import attention

    bench = LayerBench(TINY, "float32", "cpu")
    bench.kernels = dataclasses.replace(bench.kernels, decode_attention="triton", prefill_attention="triton",
                                        c_variant=None)  # as resolved on CUDA
    calls, original = [], attention.paged_prefill_attention

    def recording(q, k, v, layout, scale, kv_cache=None, prefix_tables=None, variant=None, c_prefill=None):
        calls.append((variant, c_prefill, layout.bounds, layout.longest, prefix_tables))
        return original(q, k, v, layout, scale, kv_cache, prefix_tables, "torch")

    monkeypatch.setattr(attention, "paged_prefill_attention", recording)
    bench.prefill_call(2, 16)()
    assert calls == [("triton", None, (0, 16, 32), 16, None)]
    # on a CPU whose record selects the C prefill kernel, the profiler times that build's kernel
    bench.kernels = dataclasses.replace(bench.kernels, decode_attention="c-avx512bf16", prefill_attention="c-avx512bf16",
                                        c_variant="avx512bf16")
    calls.clear()
    bench.prefill_call(2, 16)()
    assert calls == [("avx512bf16", "avx512bf16", (0, 16, 32), 16, None)]
