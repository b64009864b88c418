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


ENGINE_SCRIPT = textwrap.dedent("""
    import os, sys, json
    from pathlib import Path
    import transformers
    from runners.engine import kernels
    from runners.engine.config import EngineConfig
    from runners.engine.llm_engine import LLMEngine
    from runners.engine.sampling_params import SamplingParams

    from runners.engine.triton_smoke import AttentionGeometry
    geometry = AttentionGeometry("float32", num_heads=4, num_kv_heads=2, head_dim=8, block_size=8)  # the model below
    assert kernels._try_triton("cpu", geometry) is None, kernels._try_triton("cpu", geometry)
    directory = Path(sys.argv[1])
    transformers.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, intermediate_size=48,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=96).save_pretrained(directory)
    prompts = [[(7 * i + j) % 60 + 3 for j in range(n)] for i, n in enumerate([19, 5, 33])]
    runs = {}
    for kernel in ("torch", "triton"):
        os.environ["PIE_DECODE_KERNEL"] = kernel
        # pool on, chunked prefill: later chunks read their (partly pooled) prefix through the table
        config = EngineConfig(model=str(directory), dtype="float32", block_size=8, num_device_blocks=12,
                              num_pool_blocks=6, prefetch_depth=2, max_num_batched_tokens=16, max_num_seqs=3)
        engine = LLMEngine(config)
        outputs = engine.generate(prompts, SamplingParams(max_tokens=6, ignore_eos=True))
        assert all(output.finish_reason == "length" for output in outputs), [o.finish_reason for o in outputs]
        runs[kernel] = [output.output_token_ids for output in outputs]
        runs[kernel + "_streamed"] = sum(stat.h2d_bytes for stat in engine.stats)
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
