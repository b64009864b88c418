"""The engine's AVX512-BF16 GEMM (runners/engine/bf16_gemm.c), selected where a CPU has AVX512-BF16 but no AMX.

Its lossless packing, its weights on huge-page chunks, its greedy tokens against oneDNN's, and an ISA limit that
moves the engine off it are checked beside the AMX GEMM's (tests/test_engine_linear.py). The kernel tests run where
this CPU has AVX512-BF16 (the AMX Xeons and AMD Zen 4 this project meets) and skip elsewhere; the selection and
fallback tests run everywhere, on injected capability records.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from capability_records import RECORDS
from own_gemms import avx512_gemm_or_skip
from pie_core.capability import select_kernels
from runners.engine.config import EngineConfig
from runners.engine.llm_engine import LLMEngine
from runners.engine.models.linear import Linear
from runners.engine.sampling_params import SamplingParams


_gemm_or_skip = avx512_gemm_or_skip


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


def test_gemm_has_no_fused_argmax() -> None:
    """Greedy sampling takes the logits on this path (the lossless packing and the huge-page chunks are checked
    with the AMX GEMM's, tests/test_engine_linear.py)."""
    _gemm_or_skip()
    weight, bias = _weights(64, 96)
    assert Linear(weight, bias, prepack="avx512bf16").greedy_tokens(torch.ones(2, 96, dtype=torch.bfloat16)) is None


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
