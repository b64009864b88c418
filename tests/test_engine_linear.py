"""Linear: prepacked oneDNN bf16 weights on the CPU give what F.linear gives; other dtypes take F.linear."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from capability_records import RECORDS
from own_gemms import OWN_GEMMS, amx_or_skip
from runners.engine.config import EngineConfig
from runners.engine.kernels import resolve_kernels
from runners.engine.llm_engine import LLMEngine
from runners.engine.models.linear import Linear, prepack_available
from runners.engine.sampling_params import SamplingParams


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
    """Where this CPU's oneDNN has the bf16 path, the weight is replaced by its packed copy; else it stays, with the reason."""
    weight, bias = _weights(torch.bfloat16)
    linear = Linear(weight, bias, prepack=True)
    assert prepack_available(weight)  # a CPU bf16 weight in a torch with oneDNN
    if resolve_kernels("cpu", "bfloat16").prepack:
        assert linear.packed and linear.fallback is None
        assert linear.weight is not weight and linear.weight.is_mkldnn
    else:
        assert not linear.packed and linear.weight is weight and "prepack failed" in linear.fallback


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


@pytest.mark.parametrize("record, expect_prepack", [(RECORDS["zen3-avx2"], False), (RECORDS["zen4-avx512-bf16"], True),
                                                    (RECORDS["arm-bf16"], False)])
def test_engine_reports_the_gemm_path_its_record_selects(record, expect_prepack):
    """bf16 engine: prepacked only where the record allows it; where oneDNN still refuses, plain GEMMs and the reason.
    A Zen 4 record (AVX512-BF16, no AMX) selects the engine's own AVX512-BF16 GEMM; where this CPU cannot run that
    build, oneDNN's GEMMs and the reason."""
    engine = LLMEngine(EngineConfig(model="opt-125m", dtype="bfloat16", num_device_blocks=8, random_weights=True),
                       capability=record)
    layer = engine.model.layers[0]
    own_gemm_refused = any("avx512bf16" in why and "oneDNN GEMMs" in why for why in engine.kernels.fallbacks)
    if not expect_prepack:
        assert engine.kernels.linear == "torch-linear" and not layer.fc1.packed
        assert not any("prepack" in why for why in engine.kernels.fallbacks)
    elif engine.kernels.linear == "avx512bf16":  # the record's choice, built and smoke-tested on this CPU
        assert layer.fc1.avx512 is not None and engine.model.lm_head.avx512 is not None and not layer.fc1.packed
        assert not engine.kernels.fallbacks
    elif engine.kernels.linear == "onednn-prepacked":  # this CPU cannot run that build; oneDNN's bf16 path instead
        assert own_gemm_refused and layer.fc1.packed and engine.model.lm_head.packed
    else:
        assert not layer.fc1.packed and any("oneDNN bf16 prepack failed" in why for why in engine.kernels.fallbacks)
    out = engine.generate([[5, 6, 7, 8]], SamplingParams(max_tokens=2, ignore_eos=True))
    assert len(out[0].output_token_ids) == 2


_amx_or_skip = amx_or_skip


@pytest.mark.parametrize("tokens", [1, 7, 15, 16, 17, 31, 32, 33, 48, 96, 256, 257, 272, 600])
@pytest.mark.parametrize("relu", [False, True])
def test_amx_gemm_matches_fp32_reference(tokens: int, relu: bool) -> None:
    """Every row count (one tile of fewer than 16 rows, a last tile padded from a copy, odd and even numbers of
    row tiles, row blocks of 256 with a tail) gives the fp32 product rounded once to bf16, give or take the last
    bit of a different summation order."""
    _amx_or_skip()
    weight, bias = _weights(torch.bfloat16, out_features=96, in_features=64)
    linear = Linear(weight, bias, prepack="amx")
    assert linear.amx is not None and linear.amx_refused is None and linear.fallback is None and not linear.packed
    x = torch.randn(tokens, 64, generator=torch.Generator().manual_seed(tokens)).to(torch.bfloat16)
    expected = F.linear(x.float(), weight.float(), bias.float())
    expected = F.relu(expected) if relu else expected
    got = linear(x, relu=relu)
    assert got.dtype == torch.bfloat16 and got.shape == (tokens, 96)
    torch.testing.assert_close(got.float(), expected.to(torch.bfloat16).float(), atol=0.02, rtol=0.01)
    assert (got != expected.to(torch.bfloat16)).float().mean() < 0.02  # bit-equal almost everywhere


@pytest.mark.parametrize("tokens", [1, 15, 16, 17, 33, 48])
def test_amx_gemm_writes_no_row_past_its_output(tokens: int) -> None:
    """Rows the tiles compute beyond m (a short tile, a padded copy) are never stored: the rows after the output
    keep their sentinel."""
    _amx_or_skip()
    weight, bias = _weights(torch.bfloat16, out_features=64, in_features=64)
    linear = Linear(weight, bias, prepack="amx")
    x = torch.randn(tokens, 64).to(torch.bfloat16)
    buffer = torch.full((tokens + 16, 64), 7.0, dtype=torch.bfloat16)
    linear.amx.amx_linear(x.data_ptr(), tokens, 64, linear.weight.data_ptr(), 64, bias.data_ptr(), 0, buffer.data_ptr())
    assert torch.equal(buffer[:tokens], linear(x)) and bool((buffer[tokens:] == 7.0).all())


@pytest.mark.parametrize("prepack", sorted(OWN_GEMMS))
def test_own_gemm_packs_losslessly_and_takes_any_input_layout(prepack: str) -> None:
    """The AMX GEMM and the AVX512-BF16 GEMM alike: the packed weight unpacks to the weight, any input layout works,
    another dtype goes through F.linear, and a strided weight packs the same."""
    OWN_GEMMS[prepack]()
    weight, _ = _weights(torch.bfloat16, out_features=64, in_features=96)
    linear = Linear(weight, None, prepack=prepack)
    assert linear.weight is not weight and torch.equal(linear.plain_weight(), weight)
    wide = torch.randn(2, 5, 192).to(torch.bfloat16)
    x = wide[..., :96]  # a strided 3-D view
    torch.testing.assert_close(linear(x).float(), F.linear(x.float(), weight.float()), atol=0.25, rtol=0.02)
    assert linear(x).shape == (2, 5, 64)
    transposed = weight.t().contiguous().t()  # a strided weight is packed from a contiguous copy
    assert not transposed.is_contiguous() and torch.equal(Linear(transposed, None, prepack=prepack).plain_weight(), weight)
    fp32 = torch.randn(3, 96)  # another dtype goes through F.linear on the unpacked weight
    torch.testing.assert_close(linear(fp32), F.linear(fp32, weight.float()), atol=0.05, rtol=0.02)


@pytest.mark.parametrize("prepack", sorted(OWN_GEMMS))
def test_own_gemm_weights_are_packed_into_huge_page_chunks(prepack: str) -> None:
    """The packed weight is carved from host_memory's weight chunks (2 MiB pages), not a plain allocation."""
    OWN_GEMMS[prepack]()
    from runners.engine import host_memory

    if not host_memory.huge_pages_enabled():
        pytest.skip("huge pages off here")
    first, second = (Linear(torch.randn(64, 96).to(torch.bfloat16), None, prepack=prepack) for _ in range(2))
    assert first.weight._base is not None and first.weight._base is second.weight._base
    assert first.weight.data_ptr() % 64 == 0 and second.weight.data_ptr() % 64 == 0


def test_amx_gemm_refuses_shapes_off_its_tiles() -> None:
    """A dimension that is not a multiple of 32 keeps the weight on oneDNN's path, with the reason (no AMX needed)."""
    weight, bias = _weights(torch.bfloat16, out_features=96, in_features=40)
    linear = Linear(weight, bias, prepack="amx")
    assert linear.amx is None and "multiple of 32, not 96 x 40" in linear.amx_refused
    x = torch.randn(3, 40).to(torch.bfloat16)
    torch.testing.assert_close(linear(x).float(), F.linear(x.float(), weight.float(), bias.float()), atol=0.25, rtol=0.02)


@pytest.mark.parametrize("prepack, expect", [("auto", "amx"), ("onednn", "onednn-prepacked"), ("off", "torch-linear")])
def test_engine_on_an_amx_record_runs_the_amx_gemm_unless_told_not_to(prepack: str, expect: str) -> None:
    """xeon-amx record: `prepack=auto` packs every weight for the AMX GEMM where it runs here (else the fallback is
    named and oneDNN takes over); `onednn` and `off` choose as a CPU without AMX would."""
    from runners.engine import c_kernels
    from runners.engine.kernels import _try_prepack

    engine = LLMEngine(EngineConfig(model="opt-125m", dtype="bfloat16", num_device_blocks=8, random_weights=True,
                                    prepack=prepack), capability=RECORDS["xeon-amx"])
    layer = engine.model.layers[0]
    onednn_here = _try_prepack() is None  # false where oneDNN's ISA is limited below its bf16 path
    if expect == "amx" and c_kernels.load(c_kernels.AMX) is None:
        assert engine.kernels.linear == ("onednn-prepacked" if onednn_here else "torch-linear")
        assert any("oneDNN GEMMs" in why for why in engine.kernels.fallbacks)
    elif expect == "onednn-prepacked" and not onednn_here:
        assert engine.kernels.linear == "torch-linear" and any("prepack" in why for why in engine.kernels.fallbacks)
    else:
        assert engine.kernels.linear == expect
        assert (layer.fc1.amx is not None and engine.model.lm_head.amx is not None) == (expect == "amx")
    out = engine.generate([[5, 6, 7, 8]] * 3, SamplingParams(max_tokens=3, ignore_eos=True))
    assert [len(o.output_token_ids) for o in out] == [3, 3, 3]
    engine.close()


@pytest.mark.parametrize("tokens", [1, 5, 16, 17, 33, 96, 300])
@pytest.mark.parametrize("bias", [True, False])
def test_amx_greedy_tokens_are_the_c_argmax_of_its_logits(tokens: int, bias: bool) -> None:
    """The argmax the AMX epilogue keeps (lanes per thread, merged) is the token the C argmax takes from the logits
    the same GEMM writes: every row count and row block, ties across lanes and across the threads' column ranges
    (the lowest column wins), a row of NaN (0, NaN never wins), and no bias."""
    from runners.engine import c_kernels
    from runners.engine.sampler import greedy_tokens

    _amx_or_skip()
    generator = torch.Generator().manual_seed(tokens)
    weight = torch.randn(1024, 64, generator=generator)
    direction = torch.randn(64, generator=generator)
    direction /= direction.norm()
    for column in (5, 21, 530, 1000):  # the same row four times, along x's common direction: exact ties at the top
        weight[column] = 30 * direction
    weight = weight.to(torch.bfloat16)
    linear = Linear(weight, torch.randn(1024, generator=generator).to(torch.bfloat16) if bias else None, prepack="amx")
    x = (torch.randn(tokens, 64, generator=generator) + 2 * direction).to(torch.bfloat16)
    if tokens > 1:
        x[1] = float("nan")
    expected = greedy_tokens(linear(x), c_kernels.default_variant())
    assert linear.greedy_tokens(x) == expected
    if tokens > 1:
        assert expected[1] == 0
    ties = (linear(x).float() == linear(x).float().max(dim=-1, keepdim=True).values).sum(dim=-1)
    assert bias or tokens < 5 or int((ties > 1).sum()) > 0  # without a bias the planted rows tie at the top


def test_greedy_tokens_is_none_off_the_tiles_and_empty_for_no_rows() -> None:
    weight, bias = _weights(torch.bfloat16)
    assert Linear(weight, bias, prepack="onednn").greedy_tokens(torch.ones(2, 64, dtype=torch.bfloat16)) is None
    assert Linear(weight.float(), bias.float()).greedy_tokens(torch.ones(2, 64)) is None
    _amx_or_skip()
    amx = Linear(weight, bias, prepack="amx")
    assert amx.greedy_tokens(torch.ones(0, 64, dtype=torch.bfloat16)) == []
    assert amx.greedy_tokens(torch.ones(2, 64)) is None  # fp32 rows: not the engine's own calls


def test_an_amx_engine_takes_greedy_steps_from_the_epilogue_and_sampled_steps_from_logits(monkeypatch) -> None:
    _amx_or_skip()
    calls = {"fused": 0, "logits": 0}
    fused, logits = Linear.greedy_tokens, Linear.__call__

    def count_fused(self, x):
        calls["fused"] += 1
        return fused(self, x)

    monkeypatch.setattr(Linear, "greedy_tokens", count_fused)
    with LLMEngine(EngineConfig(model="opt-125m", dtype="bfloat16", num_device_blocks=64, random_weights=True),
                   capability=RECORDS["xeon-amx"]) as engine:
        lm_head = engine.model.lm_head
        monkeypatch.setattr(Linear, "__call__", lambda self, x, relu=False: (
            calls.__setitem__("logits", calls["logits"] + (self is lm_head)), logits(self, x, relu))[1])
        prompts = [[(7 * i + j) % 50000 + 3 for j in range(12)] for i in range(3)]
        engine.generate(prompts, SamplingParams(max_tokens=4, ignore_eos=True))
        assert calls == {"fused": 4, "logits": 0}, calls
        engine.generate(prompts[:1], SamplingParams(max_tokens=3, ignore_eos=True, temperature=0.8, seed=1))
        assert calls == {"fused": 4, "logits": 3}, calls


@pytest.mark.parametrize("own, record", [("amx", "xeon-amx"), ("avx512bf16", "zen4-avx512-bf16")])
def test_own_gemm_and_onednn_engines_generate_the_same_greedy_tokens(own: str, record: str) -> None:
    """The whole model on the engine's own GEMMs (AMX, or AVX512-BF16 as on a Zen 4) and on oneDNN's: the same
    greedy continuations of a tiny seeded model."""
    OWN_GEMMS[own]()
    outputs = {}
    for prepack in ("auto", "onednn"):
        with LLMEngine(EngineConfig(model="opt-125m", dtype="bfloat16", num_device_blocks=64, random_weights=True,
                                    prepack=prepack), capability=RECORDS[record]) as engine:
            assert engine.kernels.linear == (own if prepack == "auto" else "onednn-prepacked")
            prompts = [[(7 * i + j) % 50000 + 3 for j in range(12 + i)] for i in range(5)]
            outputs[prepack] = [o.output_token_ids for o in engine.generate(prompts, SamplingParams(max_tokens=6,
                                                                                                    ignore_eos=True))]
    agree = sum(a == b for x, y in zip(outputs["auto"], outputs["onednn"]) for a, b in zip(x, y))
    assert agree >= 0.9 * 30, outputs  # bf16 sums in another order may flip a near-tie, not the model


@pytest.mark.parametrize("limit, expect", [
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, ["avx512bf16", "True", "False"]),  # an AMX CPU as a Zen 4
    ({"ATEN_CPU_CAPABILITY": "avx2"}, ["torch-linear", "True", "True"]),  # an AVX512-BF16 CPU as an AVX2-only one
])
def test_limiting_the_isa_really_moves_the_engine_off_its_own_gemm(limit: dict, expect: list) -> None:
    """A child run under the limit detects it: oneDNN limited below AMX on an AMX CPU leaves the AMX GEMM for the
    AVX512-BF16 one (as a CPU with AVX512-BF16 and no AMX does); torch limited to AVX2 on an AVX512-BF16 CPU leaves
    the AVX512-BF16 GEMM, and bf16 weights stay plain (oneDNN's bf16 prepack needs AVX-512 too). Printed: the GEMM
    path, whether fc1 is off the AMX GEMM, whether it is off the AVX512-BF16 one."""
    import os
    import subprocess
    import sys

    from pie_core.device_probe import detect_capability

    if "ONEDNN_MAX_CPU_ISA" in limit and not select_amx(detect_capability("cpu")):
        pytest.skip("this CPU has no AMX in effect: nothing to limit")
    if "ATEN_CPU_CAPABILITY" in limit:
        OWN_GEMMS["avx512bf16"]()
    code = ("from runners.engine.llm_engine import LLMEngine; from runners.engine.config import EngineConfig; "
            "e = LLMEngine(EngineConfig(model='opt-125m', dtype='bfloat16', num_device_blocks=8, random_weights=True)); "
            "f = e.model.layers[0].fc1; print(e.kernels.linear, f.amx is None, f.avx512 is None)")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, **limit}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-3:] == expect


def select_amx(cap) -> bool:
    from pie_core.capability import select_kernels

    return select_kernels(cap, "bfloat16").amx


def test_an_amx_library_that_cannot_be_built_leaves_the_engine_on_onednn(tmp_path, monkeypatch) -> None:
    """No compiler for the AMX library (any CPU): the xeon-amx record's engine names the failure and runs on oneDNN."""
    from runners.engine import c_kernels, kernels

    monkeypatch.setenv("PIE_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(c_kernels, "_libraries", {k: v for k, v in c_kernels._libraries.items() if k != c_kernels.AMX})
    monkeypatch.setattr(kernels, "_resolved", {})
    paths = resolve_kernels("cpu", "bfloat16", RECORDS["xeon-amx"])
    assert paths.linear in ("onednn-prepacked", "torch-linear")
    assert any(why.startswith("C kernels (amx) unavailable") and why.endswith("; oneDNN GEMMs") for why in paths.fallbacks)
    weight, bias = _weights(torch.bfloat16)
    linear = Linear(weight, bias, prepack="amx")
    assert linear.amx is None and "C kernels (amx) unavailable" in linear.amx_refused


def test_an_amx_engine_names_the_weights_its_tiles_do_not_take(tmp_path) -> None:
    """A model whose vocabulary is not a multiple of 32: its lm_head runs on oneDNN, the layers on AMX, and the
    engine's kernel report says so (GEMMs stay "amx")."""
    import json

    import transformers

    _amx_or_skip()
    config = transformers.OPTConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
                                    max_position_embeddings=128, word_embed_proj_dim=64)
    torch.manual_seed(0)
    transformers.OPTForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["vocab_size"] == 1000
    with LLMEngine(EngineConfig(model=str(tmp_path), dtype="bfloat16", num_device_blocks=16),
                   capability=RECORDS["xeon-amx"]) as engine:
        from runners.engine.kernels import _try_prepack

        assert engine.kernels.linear == "amx" and engine.model.layers[0].fc1.amx is not None
        onednn_here = _try_prepack() is None  # else the lm_head is plain, and the reason says so too
        assert engine.model.lm_head.amx is None and engine.model.lm_head.packed == onednn_here
        [why] = [why for why in engine.kernels.fallbacks if "not 1000 x 64" in why]
        assert why.endswith("oneDNN for it") == onednn_here and ("prepack failed" in why) != onednn_here
        out = engine.generate([[5, 6, 7]], SamplingParams(max_tokens=2, ignore_eos=True))
        assert len(out[0].output_token_ids) == 2
