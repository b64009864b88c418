"""Linear: prepacked oneDNN bf16 weights on the CPU give what F.linear gives; other dtypes take F.linear."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from runners.engine.models.linear import Linear, prepack_available


def _weights(dtype: torch.dtype, out_features: int = 96, in_features: int = 64):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(out_features, in_features, generator=generator).to(dtype)
    bias = torch.randn(out_features, generator=generator).to(dtype)
    return weight, bias


@pytest.mark.parametrize("tokens", [1, 7, 64, 300])
@pytest.mark.parametrize("relu", [False, True])
def test_bf16_matches_f_linear(tokens: int, relu: bool) -> None:
    weight, bias = _weights(torch.bfloat16)
    x = torch.randn(tokens, 64, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    expected = F.linear(x.float(), weight.float(), bias.float())
    expected = F.relu(expected) if relu else expected
    got = Linear(weight, bias)(x, relu=relu)
    assert got.dtype == torch.bfloat16 and got.shape == (tokens, 96)
    torch.testing.assert_close(got.float(), expected, atol=0.25, rtol=0.02)  # bf16 output rounding


def test_bf16_cpu_weights_are_prepacked_and_plain_copy_dropped() -> None:
    weight, bias = _weights(torch.bfloat16)
    linear = Linear(weight, bias)
    assert linear.packed == prepack_available(weight)
    if linear.packed:
        assert linear.weight is not weight and linear.weight.is_mkldnn


def test_fp32_takes_f_linear_exactly() -> None:
    weight, bias = _weights(torch.float32)
    x = torch.randn(5, 64)
    linear = Linear(weight, bias)
    assert not linear.packed
    assert torch.equal(linear(x), F.linear(x, weight, bias))
    assert torch.equal(linear(x, relu=True), F.relu(F.linear(x, weight, bias)))


def test_prepack_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIE_PREPACK", "0")
    weight, _ = _weights(torch.bfloat16)
    linear = Linear(weight)
    assert not linear.packed and linear.weight is weight


def test_non_contiguous_and_no_bias() -> None:
    weight, _ = _weights(torch.bfloat16)
    wide = torch.randn(8, 128).to(torch.bfloat16)
    x = wide[:, :64]  # a strided view, as split() hands the MLP
    torch.testing.assert_close(Linear(weight)(x).float(), F.linear(x.float(), weight.float()), atol=0.25, rtol=0.02)
