"""The engine's AVX512-BF16 prefill attention (runners/engine/prefill_attention.c), selected for bf16 where a CPU has
AVX512-BF16 but no AMX in effect.

The kernel tests run where this CPU has AVX512-BF16 and skip elsewhere; the selection and fallback tests run
everywhere, on injected capability records.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from capability_records import RECORDS
from own_gemms import avx512_prefill_or_skip
from pie_core.capability import select_kernels
from runners.engine import attention, c_kernels, cpu_attention
from runners.engine.config import EngineConfig
from runners.engine.llm_engine import LLMEngine
from runners.engine.sampling_params import SamplingParams

VARIANT = "avx512bf16"


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past: int, scale: float) -> torch.Tensor:
    """fp32 causal attention of q (positions past ..) over k, v: [t, H, dh] each."""
    group = q.shape[1] // k.shape[1]
    qf = q.float().transpose(0, 1)
    kf, vf = (x.float().transpose(0, 1).repeat_interleave(group, 0) for x in (k, v))
    scores = qf @ kf.transpose(1, 2) * scale
    hidden = torch.arange(k.shape[0])[None, :] > past + torch.arange(q.shape[0])[:, None]
    return (torch.softmax(scores.masked_fill(hidden, float("-inf")), -1) @ vf).transpose(0, 1)


def _packed(tokens: int, hq: int, hkv: int, dh: int, seed: int, tail: int = 0):
    """q, k, v as views of one fused projection output [tokens + tail, (hq + 2 hkv) dh], as the model makes them;
    the `tail` rows after them hold NaN, which no read may reach."""
    generator = torch.Generator().manual_seed(seed)
    fused = torch.randn(tokens + tail, (hq + 2 * hkv) * dh, generator=generator).to(torch.bfloat16)
    fused[tokens:] = float("nan")
    q = fused[:tokens, :hq * dh].view(tokens, hq, dh)
    k = fused[:tokens, hq * dh:(hq + hkv) * dh].view(tokens, hkv, dh)
    v = fused[:tokens, (hq + hkv) * dh:].view(tokens, hkv, dh)
    return q, k, v


# rows: one, a register block's tail, exactly 8, 16, a key panel's tail, several blocks; heads: MHA and GQA
@pytest.mark.parametrize("t_q, past, hq, hkv, dh", [
    (1, 0, 2, 2, 64), (7, 0, 3, 1, 32), (8, 0, 2, 2, 16), (16, 0, 4, 4, 64), (17, 15, 2, 2, 16), (33, 100, 2, 2, 128),
    (129, 5, 4, 2, 64), (300, 0, 1, 1, 48), (1, 40, 2, 1, 64)])
def test_kernel_matches_fp32_reference(t_q: int, past: int, hq: int, hkv: int, dh: int) -> None:
    """Every row and key tail, chunks after a prefix, grouped heads and head sizes 16-128: the fp32 result rounded to
    bf16, within the rounding of the probabilities to bf16; rows past the sequence (NaN) are never read."""
    avx512_prefill_or_skip()
    q, k, v = _packed(past + t_q, hq, hkv, dh, seed=t_q + past, tail=9)
    q = q[past:]
    assert cpu_attention.supports_prefill(q, k, v, VARIANT)
    out = torch.full((t_q + 3, hq, dh), 7.0, dtype=torch.bfloat16)
    cpu_attention.prefill(q, k, v, out[:t_q], dh ** -0.5, VARIANT)
    expected = _reference(q, k, v, past, dh ** -0.5)
    torch.testing.assert_close(out[:t_q].float(), expected, atol=0.02, rtol=0.02)
    assert (out[t_q:] == 7.0).all()  # no row written past the output


def test_prefill_attention_routes_sequences_and_prefixes_through_the_kernel() -> None:
    """A packed batch of three sequences, one a chunk after a 20-token prefix: the C build's result against
    PyTorch's path for the same call, and each sequence against the fp32 reference."""
    avx512_prefill_or_skip()
    lengths, hq, dh = [13, 40, 5], 4, 64
    q, k, v = _packed(sum(lengths), hq, hq, dh, seed=3)
    pk, pv = (torch.randn(20, hq, dh, generator=torch.Generator().manual_seed(9)).to(torch.bfloat16) for _ in "kv")
    prefixes = [None, (pk, pv), None]
    bounds = [0, 13, 53, 58]
    got = attention.prefill_attention(q, k, v, bounds, 0.125, prefixes, c_variant=VARIANT)
    torch_path = attention.prefill_attention(q, k, v, bounds, 0.125, prefixes)
    torch.testing.assert_close(got.float(), torch_path.float(), atol=0.03, rtol=0.02)
    for (start, end), prefix in zip(zip(bounds[:-1], bounds[1:]), prefixes):
        keys, values = k[start:end], v[start:end]
        if prefix:
            keys, values = torch.cat([prefix[0], keys]), torch.cat([prefix[1], values])
        expected = _reference(q[start:end], keys, values, len(keys) - (end - start), 0.125)
        torch.testing.assert_close(got[start:end].float(), expected, atol=0.02, rtol=0.02)


@pytest.mark.parametrize("change", ["float32", "head_dim_8", "no_library"])
def test_shapes_and_dtypes_off_the_kernel_take_pytorch(change: str, monkeypatch) -> None:
    """fp32, a head size not a multiple of 16, or a build without the symbol: `supports_prefill` says no and
    `prefill_attention` still answers (PyTorch's path) without calling the C kernel."""
    q, k, v = _packed(12, 2, 2, 8 if change == "head_dim_8" else 16, seed=1)
    if change == "float32":
        q, k, v = q.float(), k.float(), v.float()
    if change == "no_library":
        monkeypatch.setattr(cpu_attention, "has_prefill", lambda library: False)
    assert not cpu_attention.supports_prefill(q, k, v, VARIANT)
    monkeypatch.setattr(cpu_attention, "prefill", lambda *args: pytest.fail("the C kernel was called"))
    out = attention.prefill_attention(q, k, v, [0, 12], 0.25, c_variant=VARIANT)
    torch.testing.assert_close(out.float(), _reference(q, k, v, 0, 0.25), atol=0.02, rtol=0.02)


@pytest.mark.parametrize("record, dtype, expect", [
    ("zen4-avx512-bf16", "bfloat16", True), ("xeon-amx", "bfloat16", False), ("zen4-avx512-bf16", "float32", False),
    ("zen3-avx2", "bfloat16", False), ("skylake-avx512", "bfloat16", False), ("arm-bf16", "bfloat16", False)])
def test_the_record_selects_the_kernel(record: str, dtype: str, expect: bool) -> None:
    """bf16 on AVX512-BF16 without AMX selects it (AMX: PyTorch's flash attention runs its products on the tiles);
    fp32, AVX2, AVX-512 without BF16 and ARM do not. Each choice names its reason."""
    choice = select_kernels(RECORDS[record], dtype)
    assert choice.c_prefill == expect
    assert any(("C prefill attention" if expect else "PyTorch prefill attention") in why for why in choice.reasons)


def test_an_amx_cpu_with_onednn_limited_below_amx_selects_the_kernel() -> None:
    """oneDNN limited to AVX512-BF16 on an AMX Xeon leaves PyTorch's attention without the tiles: the C kernel."""
    record = dataclasses.replace(RECORDS["xeon-amx"], onednn_max_isa="AVX512_CORE_BF16")
    assert select_kernels(record, "bfloat16").c_prefill


def _engine(monkeypatch=None, **settings) -> LLMEngine:
    from runners.engine import kernels

    if monkeypatch is not None:
        monkeypatch.setattr(kernels, "_resolved", {})
    return LLMEngine(EngineConfig(model="opt-125m", dtype="bfloat16", num_device_blocks=64, random_weights=True,
                                  **settings), capability=RECORDS["zen4-avx512-bf16"])


def test_a_zen4_engine_runs_it_and_says_so() -> None:
    """The zen4 record's engine reports the kernel (where this CPU builds it; else decode and prefill both fall back
    to PyTorch, named) and its runner passes the build to every prefill."""
    with _engine() as engine:
        loads = c_kernels.has_prefill(c_kernels.load(VARIANT))
        assert engine.kernels.prefill_attention == (f"c-{VARIANT}" if loads else "torch")
        assert engine.kernels.prefill_variant == (VARIANT if loads else None)
        assert engine.runner.prefill_variant == engine.kernels.prefill_variant
        assert f"prefill attention {engine.kernels.prefill_attention}" in engine.kernels.describe()
        assert engine.kernels.to_dict()["prefill_attention"] == engine.kernels.prefill_attention


def test_a_build_without_the_kernel_leaves_pytorch_and_names_why(monkeypatch) -> None:
    """The decode build loads but lacks prefill_attention_bf16: the fallback is named, prefill runs on PyTorch."""
    avx512_prefill_or_skip()
    monkeypatch.setattr(c_kernels, "has_prefill", lambda library: False)
    with _engine(monkeypatch) as engine:
        assert engine.kernels.prefill_attention == "torch" and engine.runner.prefill_variant is None
        assert any("no prefill_attention_bf16" in why for why in engine.kernels.fallbacks), engine.kernels.fallbacks


def test_decode_kernel_torch_takes_pytorch_prefill_too(monkeypatch) -> None:
    """`decode_kernel=torch` leaves the C library altogether, prefill included."""
    with _engine(monkeypatch, decode_kernel="torch") as engine:
        assert engine.kernels.prefill_attention == "torch" and engine.kernels.prefill_variant is None


def test_c_and_pytorch_prefill_engines_generate_the_same_greedy_tokens(monkeypatch) -> None:
    """The whole model with the C prefill attention and with PyTorch's: the same greedy continuations of a tiny
    seeded model (prompts of 12-140 tokens, so several register and key blocks)."""
    avx512_prefill_or_skip()
    prompts = [[(7 * i + j) % 50000 + 3 for j in range(12 + 32 * i)] for i in range(5)]
    outputs = {}
    for kernel in (True, False):
        if not kernel:
            monkeypatch.setattr(c_kernels, "has_prefill", lambda library: False)
        with _engine(monkeypatch) as engine:
            assert (engine.kernels.prefill_attention == f"c-{VARIANT}") == kernel
            outputs[kernel] = [o.output_token_ids for o in engine.generate(prompts, SamplingParams(
                max_tokens=6, ignore_eos=True))]
    agree = sum(a == b for x, y in zip(outputs[True], outputs[False]) for a, b in zip(x, y))
    assert agree >= 0.9 * 30, outputs  # bf16 sums in another order may flip a near-tie, not the model


def test_limiting_torch_to_avx2_really_moves_prefill_off_the_kernel() -> None:
    """A child run with torch limited to AVX2 on this AVX512-BF16 CPU detects it: the avx2 build, which has no
    prefill kernel, and PyTorch's prefill attention; without the limit the same child takes the kernel."""
    import os
    import subprocess
    import sys

    avx512_prefill_or_skip()
    code = ("from runners.engine.llm_engine import LLMEngine; from runners.engine.config import EngineConfig; "
            "e = LLMEngine(EngineConfig(model='opt-125m', dtype='bfloat16', num_device_blocks=8, random_weights=True)); "
            "print(e.kernels.decode_attention, e.kernels.prefill_attention)")
    seen = []
    for limit in ({"ATEN_CPU_CAPABILITY": "avx2"}, {}):
        env = {key: value for key, value in os.environ.items() if key != "ATEN_CPU_CAPABILITY"}
        done = subprocess.run([sys.executable, "-c", code], env={**env, **limit}, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        seen.append(done.stdout.split()[-2:])
    assert seen == [["c-avx2", "torch"], [f"c-{VARIANT}", f"c-{VARIANT}"]]
