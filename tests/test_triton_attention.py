"""The Triton attention kernels against the PyTorch paths, on the CPU through Triton's interpreter.

Triton reads `TRITON_INTERPRET` when it is imported, so every interpreter check runs in a child
process (nothing leaks into the other tests, and this process never imports Triton):
`scripts/triton_check.py` (decode and paged-prefix prefill, fp32/fp16/bf16, ragged lengths,
padding entries, staged blocks, GQA, block sizes 8 and 16; it prints the max abs error per dtype),
the engine's own smoke test, and a whole engine run through the kernels. Skipped, saying so,
only where Triton is not installed. The `gpu` test runs the same check compiled on a GPU.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from capability_records import RECORDS

from runners.engine import attention, kernels

ROOT = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed here (pip install 'pie[triton]')")


def _python(args: list[str], interpret: bool, timeout: int = 240, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", **env}
    environment.pop("TRITON_INTERPRET", None)
    if interpret:
        environment["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, *args], check=False, cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=timeout)


def _check(device: str, interpret: bool) -> dict:
    result = _python([str(ROOT / "scripts" / "triton_check.py"), "--device", device], interpret)
    lines = result.stdout.strip().splitlines()
    assert lines, f"triton_check printed nothing (exit {result.returncode}): {result.stderr[-2000:]}"
    summary = json.loads(lines[-1])
    print("\n".join(lines[:-1]))
    print(f"triton vs torch max abs error ({device}, interpreter={interpret}): {summary['max_abs_error']}")
    assert summary["passed"] and result.returncode == 0, (
        f"max abs error per dtype {summary['max_abs_error']} above {summary['tolerance']}:\n" + "\n".join(lines[:-1]))
    return summary


@needs_triton
def test_kernels_match_torch_under_interpreter():
    summary = _check("cpu", interpret=True)
    assert set(summary["max_abs_error"]) == {"float32", "float16", "bfloat16"}


# Records the compile key of every Triton launch: the constexprs, and for every other argument what Triton
# specialises it on (its type, and unless the kernel says otherwise, value 1 and divisibility by 16).
# Two launches with equal keys run one compiled kernel on a GPU.
LAUNCH_RECORDER = textwrap.dedent("""
    import inspect
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend
    from runners.engine import triton_attention

    KERNELS = (triton_attention._decode_kernel, triton_attention._merge_kernel, triton_attention._prefill_kernel)

    def launch_key(kernel, args, kwargs):
        signature = inspect.signature(kernel.fn)
        bound = signature.bind(*args, **kwargs).arguments
        plain = set(kernel.kwargs.get("do_not_specialize") or ())
        unaligned = set(kernel.kwargs.get("do_not_specialize_on_alignment") or ())
        key = []
        for name, param in signature.parameters.items():
            value = bound[name]
            if "constexpr" in str(param.annotation):
                key.append((name, value))
            else:
                key.append((name, native_specialize_impl(BaseBackend, value, False, name not in plain, name not in unaligned)))
        return (kernel.fn.__name__, tuple(key))

    def record_launches(keys, splits, execute=True):
        for kernel in KERNELS:
            def run(*args, grid, warmup, _kernel=kernel, _run=kernel.run, **kwargs):
                keys.add(launch_key(_kernel, args, kwargs))
                if _kernel is triton_attention._decode_kernel:
                    splits.add(grid[2])
                return _run(*args, grid=grid, warmup=warmup, **kwargs) if execute else None
            kernel.run = run
""")

ENGINE_SCRIPT = LAUNCH_RECORDER + textwrap.dedent("""
    import os, sys, json
    from pathlib import Path
    import transformers
    from runners.engine import kernels
    from runners.engine.config import EngineConfig
    from runners.engine.llm_engine import LLMEngine
    from runners.engine.sampling_params import SamplingParams

    from runners.engine.triton_smoke import AttentionGeometry
    geometry = AttentionGeometry("float32", num_heads=4, num_kv_heads=2, head_dim=8, block_size=8)  # the model below
    warm, engine_keys, splits = set(), set(), set()
    record_launches(warm, splits)
    assert kernels._try_triton("cpu", geometry) is None, kernels._try_triton("cpu", geometry)
    record_launches(engine_keys, splits)
    directory = Path(sys.argv[1])
    transformers.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, intermediate_size=48,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=96).save_pretrained(directory)
    prompts = [[(7 * i + j) % 60 + 3 for j in range(n)] for i, n in enumerate([19, 5, 33])]
    runs = {}
    for kernel in ("torch", "triton"):
        # pool on, chunked prefill: later chunks read their (partly pooled) prefix through the table
        config = EngineConfig(model=str(directory), dtype="float32", block_size=8, num_device_blocks=12,
                              num_pool_blocks=6, prefetch_depth=2, max_num_batched_tokens=16, max_num_seqs=3,
                              decode_kernel=kernel)
        engine = LLMEngine(config)
        outputs = engine.generate(prompts, SamplingParams(max_tokens=6, ignore_eos=True))
        assert all(output.finish_reason == "length" for output in outputs), [o.finish_reason for o in outputs]
        assert engine.kernels.decode_attention == kernel, engine.kernels
        runs[kernel] = [output.output_token_ids for output in outputs]
        runs[kernel + "_streamed"] = sum(stat.h2d_bytes for stat in engine.stats)
    runs["warm_up_variants"] = len(warm)
    runs["engine_variants"] = len(engine_keys)
    runs["engine_variants_not_warmed"] = len(engine_keys - warm)
    print(json.dumps(runs))
""")


@needs_triton
@pytest.mark.slow
def test_engine_through_triton_kernels_matches_torch_path(tmp_path):
    script = tmp_path / "engine_check.py"
    script.write_text(ENGINE_SCRIPT)
    result = _python([str(script), str(tmp_path / "model")], interpret=True)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout.strip().splitlines()[-1])
    assert runs["triton"] == runs["torch"]
    assert runs["triton_streamed"] > 0  # the pool was in use, so staged blocks went through the kernels
    # The start-up trial compiled every kernel the engine's steps launched (no compile inside a timed step).
    assert runs["warm_up_variants"] == 5 and runs["engine_variants"] >= 3, runs
    assert runs["engine_variants_not_warmed"] == 0, runs


LAUNCH_SCRIPT = LAUNCH_RECORDER + textwrap.dedent("""
    import json, torch
    from runners.engine import attention
    from runners.engine.triton_smoke import AttentionGeometry, trial

    heads, kv_heads, head_dim, block_size, layers = 4, 2, 16, 16, 2
    geometry = AttentionGeometry("float16", heads, kv_heads, head_dim, block_size)
    warm, seen, warm_splits, splits = set(), set(), set(), set()
    record_launches(warm, warm_splits)
    assert trial(geometry, "cpu") is None
    record_launches(seen, splits, execute=False)  # from here on only the launch arguments matter
    triton_attention.multiprocessors = lambda device: 132  # an H100's SMs, so decode splits as on a GPU
    cache = torch.zeros(layers * 700 + 40, 2, block_size, kv_heads, head_dim, dtype=torch.float16)
    qkv_width = (heads + 2 * kv_heads) * head_dim

    def projections(tokens):  # q, k, v as the models hand them over: views of one fused GEMM's output
        qkv = torch.zeros(tokens, qkv_width, dtype=torch.float16)
        q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
        return q.view(tokens, heads, head_dim), k.view(tokens, kv_heads, head_dim), v.view(tokens, kv_heads, head_dim)

    def layer_tables(rows, width):  # [L, N, M] as ModelRunner._layer_tables builds them; each layer a view
        base = torch.randint(0, 700, (rows, width))
        return torch.stack([base + layer * 700 for layer in range(layers)])

    calls = 0
    for batch in (1, 2, 3, 5, 8, 9, 16, 17, 33, 64, 65, 130, 256):
        for context in (1, 15, 16, 17, 100, 257, 1000, 4096, 8191):
            lens = attention.Lengths.build([max(1, context - i % 7) for i in range(batch)], "cpu")
            tables = layer_tables(batch, -(-context // block_size))
            for prefill in (0, 1, 37):  # decode alone, and after a prefill of 1 or 37 tokens
                q, k, v = projections(prefill + batch)
                for layer in range(layers):
                    attention.paged_decode_attention(q[prefill:], cache, tables[layer], lens, 0.25, "triton")
                    calls += 1
    for chunks in ([1], [5], [16, 17], [64, 1, 200], [2048]):
        for prefixes in ([0] * len(chunks), [16 * i + 3 for i in range(len(chunks))]):
            bounds = [0]
            for chunk in chunks:
                bounds.append(bounds[-1] + chunk)
            layout = attention.PrefillLayout.build(bounds, prefixes, "cpu")
            tables = layer_tables(len(chunks), max(1, -(-max(prefixes) // block_size))) if any(prefixes) else None
            q, k, v = projections(bounds[-1] + 3)  # three decode tokens after the prefill
            for layer in range(layers):
                attention.paged_prefill_attention(q[:bounds[-1]], k[:bounds[-1]], v[:bounds[-1]], layout, 0.25, cache,
                                                  None if tables is None else tables[layer], "triton")
                calls += 1
    print(json.dumps({"warm_up": len(warm), "seen": len(seen), "not_warmed": sorted(str(key[0]) for key in seen - warm),
                      "splits": sorted(splits), "split_counts": list(triton_attention.SPLIT_COUNTS),
                      "variants_per_geometry": triton_attention.VARIANTS_PER_GEOMETRY, "calls": calls}))
""")


@needs_triton
def test_launch_configurations_stay_within_the_warmed_up_set():
    """Over batches 1..256, contexts 1..8191, decode after prefills, chunked prefill with and without prefixes,
    every launch compiles to one of the kernels the start-up trial compiled, and decode splits from the fixed set."""
    result = _python(["-c", LAUNCH_SCRIPT], interpret=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(report)
    assert report["warm_up"] == report["variants_per_geometry"] == 5
    assert report["not_warmed"] == [] and report["seen"] == 5, report
    assert report["splits"] == report["split_counts"], report  # every count of the set is reached, and no other


class _FakeKernels:
    """Stands in for triton_attention: the PyTorch paths, with one call made to fail."""

    SPLIT_COUNTS = (1, 2, 4, 8, 16)

    def __init__(self, fail_splits: int | None = None, wrong_prefix: bool = False):
        self.fail_splits, self.wrong_prefix = fail_splits, wrong_prefix

    def paged_decode(self, q, kv_cache, block_tables, context_lens, scale, num_splits=None, max_len=None):
        if num_splits == self.fail_splits:
            raise RuntimeError("injected compile failure\nsecond line")
        return attention.paged_decode_attention_torch(q, kv_cache, block_tables, context_lens, scale)

    def prefill(self, q, k, v, cu_seqlens, scale, kv_cache=None, prefix_tables=None, prefix_lens=None, max_len=None):
        layout = attention.PrefillLayout.build(cu_seqlens.tolist(), [] if prefix_lens is None else prefix_lens.tolist(), "cpu")
        out = attention.paged_prefill_attention(q, k, v, layout, scale, kv_cache, prefix_tables, "torch")
        return out + 1 if self.wrong_prefix and prefix_lens is not None else out


def test_smoke_test_fails_on_an_injected_failure_and_says_which_call(monkeypatch):
    from runners.engine import triton_smoke

    geometry = triton_smoke.AttentionGeometry("float32", num_heads=4, num_kv_heads=2, head_dim=16, block_size=8)
    monkeypatch.setattr(attention, "_triton", [_FakeKernels(), None])
    assert triton_smoke.trial(geometry, "cpu") is None
    monkeypatch.setattr(attention, "_triton", [_FakeKernels(fail_splits=16), None])
    why = triton_smoke.trial(geometry, "cpu")
    assert "failed its smoke test (decode with 16 splits" in why and "injected compile failure" in why
    assert "(group 2), head_dim 16, block 8" in why and "second line" not in why
    monkeypatch.setattr(attention, "_triton", [_FakeKernels(wrong_prefix=True), None])
    why = triton_smoke.trial(geometry, "cpu")
    assert "differs from the PyTorch path by 1" in why and "prefill over a paged prefix" in why


def test_engine_falls_back_to_torch_when_the_trial_fails(monkeypatch):
    from runners.engine import triton_smoke

    seen = []
    monkeypatch.setattr(attention, "_triton", [_FakeKernels(), None])
    monkeypatch.setattr(triton_smoke, "trial", lambda geometry, device: seen.append(geometry) or "injected: merge failed")
    monkeypatch.setattr(kernels, "_resolved", {})
    monkeypatch.setenv("PIE_DECODE_KERNEL", "auto")
    geometry = triton_smoke.AttentionGeometry("bfloat16", num_heads=32, num_kv_heads=8, head_dim=128, block_size=16)
    paths = kernels.resolve_kernels("cuda", "bfloat16", capability=RECORDS["cuda-9.0"], geometry=geometry)
    assert seen == [geometry]  # tried at the engine's own geometry
    assert paths.decode_attention == "torch" and paths.decode_variant == "torch"
    assert "injected: merge failed; PyTorch attention" in paths.fallbacks


CPU_SCRIPT = textwrap.dedent("""
    import sys, torch
    from runners.engine import attention, kernels
    paths = kernels.resolve_kernels("cpu", "float32")
    cache = torch.randn(4, 2, 8, 1, 16)
    q = torch.randn(2, 2, 16)
    attention.paged_decode_attention(q, cache, torch.tensor([[0, 1], [2, -1]]), torch.tensor([12, 3]), 0.25,
                                     paths.decode_variant)
    layout = attention.PrefillLayout.build([0, 2], [5], "cpu")
    attention.paged_prefill_attention(q, cache[0, 0, :2], cache[0, 1, :2], layout, 0.25, cache,
                                      torch.tensor([[1]]), paths.decode_variant)
    print(paths.decode_attention, "triton" in sys.modules)
""")


def test_cpu_run_never_imports_triton():
    result = _python(["-c", CPU_SCRIPT], interpret=False, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    decode, imported = result.stdout.split()
    assert decode != "triton" and imported == "False"


def test_missing_triton_falls_back_to_torch_with_the_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now raises ImportError
    monkeypatch.delitem(sys.modules, "runners.engine.triton_attention", raising=False)
    monkeypatch.setattr(attention, "_triton", [])
    monkeypatch.setattr(kernels, "_resolved", {})
    monkeypatch.setenv("PIE_DECODE_KERNEL", "auto")
    paths = kernels.resolve_kernels("cuda", "float16", capability=RECORDS["cuda-8.0"])
    assert paths.decode_attention == "torch" and paths.decode_variant == "torch"
    assert any("Triton cannot be imported" in why and "PyTorch attention" in why for why in paths.fallbacks), paths.fallbacks
    q, cache = torch.zeros(1, 1, 16), torch.zeros(2, 2, 4, 1, 16)
    assert attention.kernel_name(q, cache, "torch") == "torch"
    monkeypatch.setenv("PIE_DECODE_KERNEL", "triton")
    with pytest.raises(RuntimeError, match="Triton kernel cannot run here"):
        attention.kernel_name(q, cache)


def test_kernel_paths_hand_triton_to_the_attention_calls():
    paths = kernels.KernelPaths(dtype="float16", linear="torch-linear", decode_attention="triton", c_variant=None,
                                capability="cuda 9.0")
    assert paths.decode_variant == "triton"
    assert "decode attention triton" in paths.describe()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@needs_triton
def test_kernels_match_torch_on_the_gpu():
    _check("cuda", interpret=False)
    paths = kernels.resolve_kernels("cuda", "float16")
    assert paths.decode_attention == "triton", paths.fallbacks
