"""The engine's AVX512-BF16 GEMM (runners/engine/bf16_gemm.c), selected where a CPU has AVX512-BF16 but no AMX.

The kernel tests run where this CPU has AVX512-BF16 (the AMX Xeons and AMD Zen 4 this project meets) and skip
elsewhere; the selection and fallback tests run everywhere, on injected capability records.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from capability_records import RECORDS
from pie_core.capability import select_kernels
from runners.engine.config import EngineConfig
from runners.engine.llm_engine import LLMEngine
from runners.engine.models.linear import Linear
from runners.engine.sampling_params import SamplingParams


def _gemm_or_skip():
    """Skip where this CPU lacks AVX512-BF16; where it has it, a library without the GEMM is a failure, not a skip."""
    from pie_core.capability import c_variant
    from pie_core.device_probe import detect_capability
    from runners.engine import c_kernels

    if c_variant(detect_capability("cpu")) != "avx512bf16":
        pytest.skip("this CPU has no AVX512-BF16 for the engine's vector-unit GEMM")
    assert c_kernels.has_gemm(c_kernels.load("avx512bf16")), c_kernels.load_error("avx512bf16")


def _weights(out_features: int, in_features: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(out_features, in_features, generator=generator).to(torch.bfloat16),
            torch.randn(out_features, generator=generator).to(torch.bfloat16))


# 80 columns: one block of three 16-column panels and a narrower last block of two
@pytest.mark.parametrize("tokens", [1, 2, 7, 8, 9, 15, 16, 17, 33, 96, 127, 128, 129, 300])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("with_bias", [True, False])
def test_gemm_matches_fp32_reference(tokens: int, relu: bool, with_bias: bool) -> None:
    """Every row count (register blocks of 8 with a tail, row blocks of 128 with a tail) and the narrow last panel
    block give the fp32 product rounded once to bf16, give or take the last bit of another summation order."""
    _gemm_or_skip()
    weight, bias = _weights(80, 96)
    bias = bias if with_bias else None
    linear = Linear(weight, bias, prepack="avx512bf16")
    assert linear.avx512 is not None and linear.amx is None and linear.amx_refused is None and not linear.packed
    x = torch.randn(tokens, 96, generator=torch.Generator().manual_seed(tokens)).to(torch.bfloat16)
    expected = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    expected = F.relu(expected) if relu else expected
    got = linear(x, relu=relu)
    assert got.dtype == torch.bfloat16 and got.shape == (tokens, 80)
    torch.testing.assert_close(got.float(), expected.to(torch.bfloat16).float(), atol=0.05, rtol=0.01)
    assert (got != expected.to(torch.bfloat16)).float().mean() < 0.02  # bit-equal almost everywhere


@pytest.mark.parametrize("tokens", [1, 5, 8, 9, 130])
def test_gemm_writes_no_row_or_column_past_its_output(tokens: int) -> None:
    """Rows past m and columns past n keep their sentinel: the call writes its own rows and columns only."""
    _gemm_or_skip()
    weight, bias = _weights(48, 64)
    linear = Linear(weight, bias, prepack="avx512bf16")
    x = torch.randn(tokens, 64).to(torch.bfloat16)
    buffer = torch.full((tokens + 9, 48), 7.0, dtype=torch.bfloat16)
    linear.avx512.bf16_linear(x.data_ptr(), tokens, 64, linear.weight.data_ptr(), 48, bias.data_ptr(), 0,
                              buffer.data_ptr())
    assert torch.equal(buffer[:tokens], linear(x)) and bool((buffer[tokens:] == 7.0).all())


def test_gemm_packs_losslessly_and_takes_any_input_layout() -> None:
    _gemm_or_skip()
    weight, _ = _weights(64, 96)
    linear = Linear(weight, None, prepack="avx512bf16")
    assert linear.weight is not weight and torch.equal(linear.plain_weight(), weight)
    wide = torch.randn(2, 5, 192).to(torch.bfloat16)
    x = wide[..., :96]  # a strided 3-D view
    torch.testing.assert_close(linear(x).float(), F.linear(x.float(), weight.float()), atol=0.25, rtol=0.02)
    assert linear(x).shape == (2, 5, 64)
    transposed = weight.t().contiguous().t()  # a strided weight packs the same
    assert not transposed.is_contiguous()
    assert torch.equal(Linear(transposed, None, prepack="avx512bf16").plain_weight(), weight)
    fp32 = torch.randn(3, 96)  # another dtype goes through F.linear on the unpacked weight
    torch.testing.assert_close(linear(fp32), F.linear(fp32, weight.float()), atol=0.05, rtol=0.02)
    assert linear.greedy_tokens(torch.ones(2, 96, dtype=torch.bfloat16)) is None  # no fused argmax on this path


def test_gemm_weights_are_carved_from_huge_page_chunks() -> None:
    _gemm_or_skip()
    from runners.engine import host_memory

    if not host_memory.huge_pages_enabled():
        pytest.skip("huge pages off here")
    first, second = (Linear(torch.randn(64, 96).to(torch.bfloat16), None, prepack="avx512bf16") for _ in range(2))
    assert first.weight._base is not None and first.weight._base is second.weight._base


@pytest.mark.parametrize("shape", [(96, 40), (40, 64)])
def test_gemm_refuses_shapes_off_its_layout(shape) -> None:
    """A weight that is not a multiple of 16 x 32 keeps oneDNN's path, with the reason (any CPU)."""
    weight, bias = _weights(*shape)
    linear = Linear(weight, bias, prepack="avx512bf16")
    assert linear.avx512 is None and f"multiple of 16 x 32, not {shape[0]} x {shape[1]}" in linear.amx_refused
    x = torch.randn(3, shape[1]).to(torch.bfloat16)
    torch.testing.assert_close(linear(x).float(), F.linear(x.float(), weight.float(), bias.float()), atol=0.25, rtol=0.02)


@pytest.mark.parametrize("record, amx, own", [("zen4-avx512-bf16", False, True), ("xeon-amx", True, False),
                                               ("zen3-avx2", False, False), ("arm-bf16", False, False)])
def test_the_record_selects_the_gemm(record: str, amx: bool, own: bool) -> None:
    """AVX512-BF16 without AMX selects the vector-unit GEMM; AMX takes the tiles; AVX2 and ARM neither; never for
    float32 weights."""
    choice = select_kernels(RECORDS[record], "bfloat16")
    assert (choice.amx, choice.avx512_gemm) == (amx, own)
    assert any("AVX512-BF16 GEMM" in why for why in choice.reasons) == own
    assert not select_kernels(RECORDS[record], "float32").avx512_gemm


@pytest.mark.parametrize("prepack, expect", [("auto", "avx512bf16"), ("onednn", "onednn-prepacked"), ("off", "torch-linear")])
def test_engine_on_a_zen4_record_runs_the_gemm_unless_told_not_to(prepack: str, expect: str) -> None:
    """zen4 record: `prepack=auto` puts every weight on the vector-unit GEMM where this CPU runs it (else the fallback
    is named and oneDNN takes over); `onednn` and `off` choose as before."""
    from runners.engine import c_kernels
    from runners.engine.kernels import _try_prepack

    engine = LLMEngine(EngineConfig(model="opt-125m", dtype="bfloat16", num_device_blocks=8, random_weights=True,
                                    prepack=prepack), capability=RECORDS["zen4-avx512-bf16"])
    layer = engine.model.layers[0]
    onednn_here = _try_prepack() is None
    if expect == "avx512bf16" and not c_kernels.has_gemm(c_kernels.load("avx512bf16")):
        assert engine.kernels.linear == ("onednn-prepacked" if onednn_here else "torch-linear")
        assert any("oneDNN GEMMs" in why for why in engine.kernels.fallbacks)
    elif expect == "onednn-prepacked" and not onednn_here:
        assert engine.kernels.linear == "torch-linear"
    else:
        assert engine.kernels.linear == expect
        assert (layer.fc1.avx512 is not None and engine.model.lm_head.avx512 is not None) == (expect == "avx512bf16")
    out = engine.generate([[5, 6, 7, 8]] * 3, SamplingParams(max_tokens=3, ignore_eos=True))
    assert [len(o.output_token_ids) for o in out] == [3, 3, 3]
    engine.close()


def test_a_build_without_the_gemm_leaves_the_engine_on_onednn(monkeypatch) -> None:
    """The selected build loads but lacks bf16_linear (a build without AVX512-BF16): the reason is named, oneDNN runs."""
    from runners.engine import c_kernels, kernels

    monkeypatch.setattr(c_kernels, "has_gemm", lambda library: False)
    monkeypatch.setattr(kernels, "_resolved", {})
    with LLMEngine(EngineConfig(model="opt-125m", dtype="bfloat16", num_device_blocks=8, random_weights=True),
                   capability=RECORDS["zen4-avx512-bf16"]) as engine:
        assert engine.kernels.linear != "avx512bf16" and engine.model.layers[0].fc1.avx512 is None
        assert any("oneDNN GEMMs" in why for why in engine.kernels.fallbacks), engine.kernels.fallbacks


def test_gemm_and_onednn_engines_generate_the_same_greedy_tokens() -> None:
    """The whole model on the vector-unit GEMM and on oneDNN's: the same greedy continuations of a tiny seeded model."""
    _gemm_or_skip()
    outputs = {}
    for prepack in ("auto", "onednn"):
        with LLMEngine(EngineConfig(model="opt-125m", dtype="bfloat16", num_device_blocks=64, random_weights=True,
                                    prepack=prepack), capability=RECORDS["zen4-avx512-bf16"]) as engine:
            assert engine.kernels.linear == ("avx512bf16" if prepack == "auto" else "onednn-prepacked")
            prompts = [[(7 * i + j) % 50000 + 3 for j in range(12 + i)] for i in range(5)]
            outputs[prepack] = [o.output_token_ids for o in engine.generate(prompts, SamplingParams(max_tokens=6,
                                                                                                    ignore_eos=True))]
    agree = sum(a == b for x, y in zip(outputs["auto"], outputs["onednn"]) for a, b in zip(x, y))
    assert agree >= 0.9 * 30, outputs  # bf16 sums in another order may flip a near-tie, not the model


def test_limiting_torch_to_avx2_really_moves_the_engine_off_the_gemm() -> None:
    """On a CPU with AVX512-BF16, a child run with ATEN_CPU_CAPABILITY=avx2 (as an AVX2-only CPU) detects the limit:
    no AVX512-BF16 GEMM, and bf16 weights stay plain (oneDNN's bf16 prepack needs AVX-512 too)."""
    import os
    import subprocess
    import sys

    _gemm_or_skip()
    code = ("from runners.engine.llm_engine import LLMEngine; from runners.engine.config import EngineConfig; "
            "e = LLMEngine(EngineConfig(model='opt-125m', dtype='bfloat16', num_device_blocks=8, random_weights=True)); "
            "print(e.kernels.linear, e.model.layers[0].fc1.avx512 is None)")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["torch-linear", "True"]
