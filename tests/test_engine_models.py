"""Engine models, kernels, loader and sampler against transformers and naive references (CPU, fp32)."""
from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from pie_core.errors import BadInput
from pie_core.shapes import REGISTRY, load_shape_from_dir
from runners.engine import loader
from runners.engine.attention import decode_buckets, kernel_name, paged_decode_attention, prefill_attention, write_kv
from runners.engine.models import build_model
from runners.engine.sampler import make_generator, sample, top_p_filter
from runners.engine.sampling_params import SamplingParams

from tiny_hf_model import save_model, tiny_model

pytest.importorskip("transformers")

BLOCK_SIZE = 4


def tiny_opt(tmp_path, **overrides):
    model = tiny_model("opt", seed=0, max_position_embeddings=64, **overrides)
    return model, save_model(model, tmp_path / "opt")


def tiny_llama(tmp_path, family="llama", **overrides):
    model = tiny_model(family, seed=1, **overrides)
    return model, save_model(model, tmp_path / family)


class PagedRunner:
    """A minimal paged forward for tests: prefill a prompt, then decode token by token."""

    def __init__(self, model, num_blocks=64):
        shape = model.shape
        self.model = model
        self.cache = torch.zeros(model.num_layers * num_blocks, 2, BLOCK_SIZE, shape.num_kv_heads, shape.head_dim)
        self.num_blocks = num_blocks
        # Scatter each sequence's blocks (reversed order) so the kernels see non-contiguous tables.
        self.table = list(range(num_blocks - 1, -1, -1))

    def _slots(self, positions, layer):
        return torch.tensor([(layer * self.num_blocks + self.table[p // BLOCK_SIZE]) * BLOCK_SIZE + p % BLOCK_SIZE
                             for p in positions.tolist()])

    def forward(self, token_ids, start):
        """Logits [T, V] for tokens at positions start..; prefill when start == 0, else decode (T == 1)."""
        positions = torch.arange(start, start + len(token_ids))
        hidden = self.model.embed(torch.tensor(token_ids), positions)
        context = start + len(token_ids)

        def attention(layer, q, k, v):
            write_kv(self.cache, self._slots(positions, layer), k, v)
            if start == 0:
                cu = torch.tensor([0, len(token_ids)])
                return prefill_attention(q, k, v, cu, self.model.attention_scale)
            width = -(-context // BLOCK_SIZE)
            table = torch.tensor([[layer * self.num_blocks + b for b in self.table[:width]]])
            return paged_decode_attention(q, self.cache, table, torch.tensor([context]), self.model.attention_scale)

        for layer in range(self.model.num_layers):
            hidden = self.model.layer_forward(layer, hidden, positions, attention)
        return self.model.logits(hidden)


def _compare_with_hf(hf_model, path, prompt, decode_tokens):
    shape = load_shape_from_dir(path)
    model = build_model(shape, "float32", "cpu", weights_dir=path)
    assert model.random_weights is False
    runner = PagedRunner(model)
    tokens = list(prompt)
    with torch.inference_mode():
        ours = [runner.forward(tokens, 0)]
        for token in decode_tokens:
            ours.append(runner.forward([token], len(tokens)))
            tokens.append(token)
        reference = hf_model(torch.tensor([tokens])).logits[0]
    ours = torch.cat(ours)
    torch.testing.assert_close(ours, reference, atol=2e-4, rtol=2e-4)


PROMPT = [5, 17, 3, 42, 8, 11, 60, 2, 9]
DECODE = [7, 31, 4, 19, 23, 1]


def test_opt_matches_transformers(tmp_path):
    hf_model, path = tiny_opt(tmp_path)
    _compare_with_hf(hf_model, path, PROMPT, DECODE)


def test_opt_post_norm_and_projection_matches_transformers(tmp_path):
    # opt-350m's structure: post-norm layers, no final layer norm, project_in/out of a narrower embedding.
    hf_model, path = tiny_opt(tmp_path, **{"word_embed_proj_dim": 16, "do_layer_norm_before": False})
    assert load_shape_from_dir(path).word_embed_proj_dim == 16
    _compare_with_hf(hf_model, path, PROMPT, DECODE)


def test_llama_gqa_matches_transformers(tmp_path):
    hf_model, path = tiny_llama(tmp_path)
    _compare_with_hf(hf_model, path, PROMPT, DECODE)


def test_qwen2_bias_and_tied_embeddings_match_transformers(tmp_path):
    hf_model, path = tiny_llama(tmp_path, "qwen2", tie_word_embeddings=True)
    shape = load_shape_from_dir(path)
    assert shape.qkv_bias and shape.tie_word_embeddings
    _compare_with_hf(hf_model, path, PROMPT, DECODE)


@pytest.mark.parametrize("maker", [tiny_opt, tiny_llama])
def test_layer_kv_from_input_reproduces_cached_kv(tmp_path, maker):
    _, path = maker(tmp_path)
    model = build_model(load_shape_from_dir(path), "float32", "cpu", weights_dir=path)
    positions = torch.arange(len(PROMPT))
    captured = {}

    def attention(layer, q, k, v):
        captured["kv"] = (k.clone(), v.clone())
        return prefill_attention(q, k, v, torch.tensor([0, len(PROMPT)]), model.attention_scale)

    with torch.inference_mode():
        hidden = model.embed(torch.tensor(PROMPT), positions)
        for layer in range(model.num_layers):
            layer_input = hidden
            hidden = model.layer_forward(layer, hidden, positions, attention)
            k, v = model.layer_kv_from_input(layer, layer_input, positions)
            torch.testing.assert_close(k, captured["kv"][0])
            torch.testing.assert_close(v, captured["kv"][1])


def naive_attention(q, k, v, scale, causal):
    """q[t, Hq, dh], k/v[s, Hkv, dh] in fp64, one sequence."""
    group = q.shape[1] // k.shape[1]
    k = k.double().repeat_interleave(group, dim=1)
    v = v.double().repeat_interleave(group, dim=1)
    scores = torch.einsum("thd,shd->hts", q.double(), k) * scale
    if causal:
        scores = scores.masked_fill(torch.ones(q.shape[0], k.shape[0], dtype=torch.bool).triu(1), -math.inf)
    return torch.einsum("hts,shd->thd", scores.softmax(-1), v)


@pytest.mark.parametrize("kernel", ["c", "torch"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("block_size", [4, 16, 20])  # partial, one full and one-and-a-bit 16-lane softmax chunks
@pytest.mark.parametrize("head_dim, few", [(24, False), (16, False), (64, False), (80, False), (64, True)])
# 16, 64, 80: the AVX512-BF16 build's head-by-head path (a multiple of 16; 16 and 80 end in a half step), 24 the
# token-by-token one; few sequences: KV heads split over work items
def test_paged_decode_matches_naive(dtype, tol, kernel, block_size, head_dim, few, monkeypatch):
    from runners.engine import c_kernels

    if kernel == "c" and c_kernels.load() is None:
        pytest.skip(f"no C compiler here: {c_kernels.load_error()}")
    monkeypatch.setenv("PIE_DECODE_KERNEL", kernel)
    torch.manual_seed(0)
    heads, kv_heads = 8, 2
    lens = [17, 100] if few else [1, 3, 4, 5, 17, 40, 41, 9, 100]  # several length buckets, partly filled blocks
    num_blocks = 80 * 4 // block_size + 20
    cache = torch.randn(num_blocks, 2, block_size, kv_heads, head_dim).to(dtype)
    free = torch.randperm(num_blocks).tolist()
    width = max(-(-n // block_size) for n in lens)
    table = torch.full((len(lens), width), -1, dtype=torch.long)  # -1 padding must be harmless
    for row, n in enumerate(lens):
        for col in range(-(-n // block_size)):
            table[row, col] = free.pop()
    q = torch.randn(len(lens), heads, head_dim).to(dtype)
    if block_size == 16:  # q as the engine passes it: a view of the fused qkv rows, read in place at their stride
        q = torch.cat([q.reshape(len(lens), -1), torch.randn(len(lens), 2 * heads * head_dim).to(dtype)], 1)[
            :, : heads * head_dim].view(len(lens), heads, head_dim)
        assert not q.is_contiguous()
    assert kernel_name(q, cache) == kernel
    out = paged_decode_attention(q, cache, table, torch.tensor(lens), 0.25)
    for row, n in enumerate(lens):
        blocks = cache[table[row, : -(-n // block_size)]]
        k = blocks[:, 0].reshape(-1, kv_heads, head_dim)[:n]
        v = blocks[:, 1].reshape(-1, kv_heads, head_dim)[:n]
        expected = naive_attention(q[row: row + 1], k, v, 0.25, causal=False)[0]
        torch.testing.assert_close(out[row].double(), expected, atol=tol, rtol=tol)


def test_decode_kernel_choice_is_explicit(monkeypatch):
    cache, q = torch.zeros(2, 2, 4, 1, 8, dtype=torch.float16), torch.zeros(1, 1, 8, dtype=torch.float16)
    monkeypatch.setenv("PIE_DECODE_KERNEL", "auto")
    assert kernel_name(q, cache) == "torch"  # no C kernel for fp16 caches
    monkeypatch.setenv("PIE_DECODE_KERNEL", "c")
    with pytest.raises(RuntimeError, match="cannot run here"):
        kernel_name(q, cache)
    monkeypatch.setenv("PIE_DECODE_KERNEL", "fast")
    with pytest.raises(ValueError, match="expected one of"):
        kernel_name(q, cache)


def test_decode_buckets_cover_every_sequence_with_bounded_padding():
    lens = [1, 700, 16, 17, 300, 301, 450, 33, 64, 5]
    groups = decode_buckets(lens, 16)
    seen = sorted(i for indices, _ in groups for i in indices)
    assert seen == list(range(len(lens)))
    for indices, width in groups:
        assert width * 16 >= max(lens[i] for i in indices)
        assert max(lens[i] for i in indices) <= 1.5 * max(16, min(lens[i] for i in indices))


@pytest.mark.parametrize("lens", [[5, 1, 12], [64, 65, 200, 3]])  # within one query chunk; across chunk edges
def test_prefill_attention_is_causal_per_sequence(lens):
    torch.manual_seed(0)
    q = torch.randn(sum(lens), 6, 8)
    k, v = torch.randn(sum(lens), 3, 8), torch.randn(sum(lens), 3, 8)
    cu = torch.tensor([0, *itertools.accumulate(lens)])
    out = prefill_attention(q, k, v, cu, 0.3)
    for start, end in zip(cu.tolist()[:-1], cu.tolist()[1:]):
        expected = naive_attention(q[start:end], k[start:end], v[start:end], 0.3, causal=True)
        torch.testing.assert_close(out[start:end].double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_prefill_takes_flash_attention_and_keeps_prefixed_sequences_exact(dtype, monkeypatch):
    """bf16/fp16 sequences without a prefix go through scaled_dot_product_attention (GQA included); a
    sequence with a prefix in the same batch keeps the explicit path; both match fp64 within half precision."""
    import torch.nn.functional as F

    from runners.engine import attention

    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(a[0].shape) or real(*a, **kw))
    torch.manual_seed(0)
    lens = [1, 37, 130, 64]
    q = torch.randn(sum(lens), 8, 32).to(dtype)
    k, v = torch.randn(sum(lens), 2, 32).to(dtype), torch.randn(sum(lens), 2, 32).to(dtype)
    prefix = (torch.randn(20, 2, 32).to(dtype), torch.randn(20, 2, 32).to(dtype))
    cu = [0, *itertools.accumulate(lens)]
    out = prefill_attention(q, k, v, cu, 0.2, prefixes=[None, None, None, prefix])
    assert calls == [(1, 8, 1, 32), (1, 8, 37, 32), (1, 8, 130, 32)]  # the prefixed fourth took the explicit path
    for row, (start, end) in enumerate(zip(cu[:-1], cu[1:])):
        key, value = k[start:end], v[start:end]
        if row == 3:
            key, value = torch.cat([prefix[0], key]), torch.cat([prefix[1], value])
            scores_q = torch.cat([torch.zeros(20, 8, 32, dtype=dtype), q[start:end]])  # prefix rows' outputs are not asked for
            expected = naive_attention(scores_q, key, value, 0.2, causal=True)[20:]
        else:
            expected = naive_attention(q[start:end], key, value, 0.2, causal=True)
        torch.testing.assert_close(out[start:end].double(), expected, atol=2e-2, rtol=2e-2)


def test_write_kv_puts_tokens_in_their_slots():
    cache = torch.zeros(6, 2, 4, 2, 3)
    k, v = torch.randn(3, 2, 3), torch.randn(3, 2, 3)
    write_kv(cache, torch.tensor([0, 9, 23]), k, v)
    for row, slot in enumerate([0, 9, 23]):
        assert torch.equal(cache[slot // 4, 0, slot % 4], k[row])
        assert torch.equal(cache[slot // 4, 1, slot % 4], v[row])
    rest = cache.clone()
    for slot in (0, 9, 23):
        rest[slot // 4, :, slot % 4] = 0
    assert not rest.any()  # nothing else written
    strided = torch.zeros(6, 2, 4, 3, 2).transpose(3, 4)  # not contiguous: the indexing path
    write_kv(strided, torch.tensor([0, 9, 23]), k, v)
    assert torch.equal(strided, cache)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kv_heads", [4, 3])  # rows of whole 64-byte lines (streamed stores) and not (plain copies)
def test_write_kv_in_c_matches_the_torch_path(dtype, kv_heads):
    """The C library's row copies (strided k/v views, as the q/k/v split hands them) write what the PyTorch path
    writes and nothing else; a slot outside the cache raises before anything is written; where the C copy does
    not apply (a strided cache, another dtype for k) the PyTorch path runs."""
    from runners.engine import c_kernels

    variant = c_kernels.default_variant()
    if c_kernels.load(variant) is None:
        pytest.skip(f"no C compiler here: {c_kernels.load_error(variant)}")
    torch.manual_seed(0)
    width = kv_heads * 8
    qkv = torch.randn(96, 3 * width).to(dtype)
    k, v = qkv[:, width:2 * width].view(96, kv_heads, 8), qkv[:, 2 * width:].view(96, kv_heads, 8)  # row stride 3x the row
    slots = torch.randperm(40 * 16)[:96]
    expected, got = torch.zeros(40, 2, 16, kv_heads, 8, dtype=dtype), torch.zeros(40, 2, 16, kv_heads, 8, dtype=dtype)
    write_kv(expected, slots, k, v)
    write_kv(got, slots, k, v, variant)
    assert torch.equal(got, expected)
    before = got.clone()
    with pytest.raises(IndexError, match="KV slot 640 is outside the cache's 640 slots"):
        write_kv(got, torch.tensor([5, 640]), k[:2], v[:2], variant)
    assert torch.equal(got, before)
    other = torch.zeros(40, 2, 16, kv_heads, 8, dtype=torch.float64)
    write_kv(other, slots, k, v, variant)  # k's dtype is not the cache's: converted by the PyTorch path
    assert torch.equal(other, expected.double())


def test_loader_names_missing_tensors(tmp_path):
    from safetensors.torch import load_file, save_file

    _, path = tiny_opt(tmp_path)
    [file] = list(path.glob("*.safetensors"))
    tensors = load_file(file)
    dropped = [name for name in tensors if "layers.1.fc2.weight" in name or "embed_positions" in name]
    assert len(dropped) == 2
    save_file({n: t for n, t in tensors.items() if n not in dropped}, file)
    with pytest.raises(BadInput, match=r"lacks 2 tensor\(s\).*embed_positions.weight.*layers.1.fc2.weight"):
        build_model(load_shape_from_dir(path), "float32", "cpu", weights_dir=path)


def test_loader_rejects_wrong_shapes_and_empty_dirs(tmp_path):
    _, path = tiny_opt(tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["ffn_dim"] = 128
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(BadInput, match=r"fc1\.(weight|bias) has shape"):
        build_model(load_shape_from_dir(path), "float32", "cpu", weights_dir=path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadInput, match="no \\*.safetensors"):
        build_model(REGISTRY["opt-125m"], "float32", "cpu", weights_dir=empty, num_layers=1)
    with pytest.raises(BadInput, match="does not exist"):
        build_model(REGISTRY["opt-125m"], "float32", "cpu", weights_dir=tmp_path / "nope")


def test_random_weights_are_seeded_and_single_layer_builds():
    shape = REGISTRY["llama-2-7b"]
    first = loader.random_weights(REGISTRY["opt-125m"], "bfloat16", "cpu", seed=3, num_layers=1)
    again = loader.random_weights(REGISTRY["opt-125m"], "bfloat16", "cpu", seed=3, num_layers=1)
    other = loader.random_weights(REGISTRY["opt-125m"], "bfloat16", "cpu", seed=4, num_layers=1)
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not torch.equal(first["layers.0.fc1.weight"], other["layers.0.fc1.weight"])
    assert "layers.1.fc1.weight" not in first
    with pytest.raises(BadInput, match="num_layers must be in 1..32"):
        loader.expected_tensors(shape, num_layers=33)
    model = build_model(REGISTRY["opt-125m"], "bfloat16", "cpu", seed=3, num_layers=1)
    assert model.random_weights and model.num_layers == 1
    hidden = model.embed(torch.tensor([1, 2, 3]), torch.arange(3))
    out = model.layer_forward(0, hidden, torch.arange(3),
                              lambda i, q, k, v: prefill_attention(q, k, v, torch.tensor([0, 3]), model.attention_scale))
    assert out.shape == (3, 768) and out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_sampler_greedy_temperature_and_top_p():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    greedy = SamplingParams(max_tokens=1)
    assert sample(logits, [greedy] * 4, [None] * 4) == logits.argmax(-1).tolist()
    # Seeded requests give the same tokens whatever their row and neighbours.
    hot = SamplingParams(max_tokens=1, temperature=1.0, seed=11)
    first = [sample(logits[2:3], [hot], [make_generator(hot, 0)])[0] for _ in range(3)]
    generator = make_generator(hot, 0)
    mixed = sample(logits[[0, 2]], [greedy, hot], [None, generator])
    assert mixed[1] == first[0] and len(set(first)) == 1
    # Top-p keeps the smallest set reaching the mass: only the two most likely of these tokens.
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert torch.allclose(top_p_filter(probs, 0.7), torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    narrow = SamplingParams(max_tokens=1, temperature=1.0, top_p=0.7, seed=5)
    generator = make_generator(narrow, 0)
    drawn = {sample(probs.log(), [narrow], [generator])[0] for _ in range(200)}
    assert drawn == {0, 1}
    # Temperature sharpens: at 0.05 the argmax wins nearly always, at 1.0 it does not.
    cold = SamplingParams(max_tokens=1, temperature=0.05, seed=2)
    warm = SamplingParams(max_tokens=1, temperature=1.0, seed=2)
    row = torch.tensor([[1.0, 0.8, 0.6, 0.0]])
    cold_draws = [sample(row, [cold], [g])[0] for g in [make_generator(cold, 0)] for _ in range(100)]
    warm_draws = [sample(row, [warm], [g])[0] for g in [make_generator(warm, 0)] for _ in range(100)]
    assert cold_draws.count(0) >= 95 and warm_draws.count(0) < 60
    with pytest.raises(ValueError, match="no generator"):
        sample(logits[:1], [hot], [None])


@pytest.mark.parametrize("variant", ["avx512bf16", "avx512", "avx2", "portable"])
def test_c_greedy_argmax_takes_the_first_maximum_like_torch(variant):
    from pie_core.capability import C_VARIANT_FLAGS
    from pie_core.device_probe import detect_capability
    from runners.engine import c_kernels
    from runners.engine.sampler import greedy_tokens

    host = detect_capability("cpu").with_changes(torch_cpu_capability=None)
    if not host.is_x86 or list(C_VARIANT_FLAGS).index(variant) < list(C_VARIANT_FLAGS).index(c_kernels.default_variant()):
        pytest.skip(f"the {variant} build does not run on this CPU")
    if c_kernels.load(variant) is None:
        pytest.skip(f"no C compiler here: {c_kernels.load_error(variant)}")
    torch.manual_seed(0)
    for cols in (1, 15, 16, 17, 50272):  # no 16-lane step, exactly one, one and a tail, OPT's vocabulary
        logits = torch.randn(7, cols).to(torch.bfloat16)
        logits[1] = 0.5  # every value tied: the first wins
        logits[2] = -math.inf  # no finite value: index 0, as torch
        if cols > 3:
            logits[3, [cols // 3, cols - 1]] = 9.0  # the maximum twice, in different lanes
            logits[4, cols // 2] = math.nan  # NaN never wins (torch would return it)
        expected = logits.float().nan_to_num(nan=-math.inf).argmax(-1).tolist()
        assert greedy_tokens(logits, variant) == expected, cols
        assert greedy_tokens(logits[:, :cols], None) == logits.max(dim=-1).indices.tolist()
    # a non-contiguous view goes through a copy, fp32 rows through PyTorch
    wide = torch.randn(3, 40).to(torch.bfloat16)
    assert greedy_tokens(wide[:, ::2], variant) == wide[:, ::2].float().argmax(-1).tolist()
    assert greedy_tokens(wide.float(), variant) == wide.float().argmax(-1).tolist()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_kernels_match_cpu():
    torch.manual_seed(0)
    cache = torch.randn(40, 2, 4, 2, 16)
    table = torch.randperm(40)[:30].view(3, 10)
    lens = torch.tensor([5, 40, 17])
    q = torch.randn(3, 8, 16)
    expected = paged_decode_attention(q, cache, table, lens, 0.25)
    got = paged_decode_attention(q.cuda(), cache.cuda(), table.cuda(), lens.cuda(), 0.25)
    torch.testing.assert_close(got.cpu(), expected, atol=1e-4, rtol=1e-4)
    model = build_model(REGISTRY["opt-125m"], "float32", "cuda", num_layers=1)
    assert model.device.type == "cuda"


def test_benchmark_kernel_loop_generates_what_transformers_generates(tmp_path):
    # The throughput benchmark's own loop (packed prefill chunks, scattered blocks, batched decode).
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.engine_loop import run_kernel_loop

    hf_model, path = tiny_opt(tmp_path)
    requests = [([5, 17, 3, 42, 8], 6), ([9, 30, 60], 3), ([11, 22, 33, 44, 55, 66, 77, 88, 12], 5)]
    result = run_kernel_loop(path, requests, block_size=4, max_batched_tokens=10, dtype="float32")
    assert result["output_tokens"] == 14 and result["details"]["decode_steps"] == 5
    for (prompt, output_len), tokens in zip(requests, result["outputs"]):
        expected = hf_model.generate(torch.tensor([prompt]), max_new_tokens=output_len, min_new_tokens=output_len,
                                     do_sample=False)[0, len(prompt):].tolist()
        assert tokens == expected


@pytest.mark.parametrize("maker, overrides", [(tiny_opt, {}), (tiny_opt, {"do_layer_norm_before": False}),
                                              (tiny_llama, {})])
def test_layer_forward_keeps_only_the_rows_asked_for(tmp_path, maker, overrides):
    """`rows` (the step's last layer: only the rows it samples from go on): the kept rows equal the same rows of the
    full output, in the order asked for, and every row's K and V still reach the attention (the cache)."""
    _, path = maker(tmp_path, **overrides)
    model = build_model(load_shape_from_dir(path), "float32", "cpu", weights_dir=path)
    positions = torch.arange(len(PROMPT))
    seen = []

    def attention(layer, q, k, v):
        seen.append((k.clone(), v.clone()))
        return prefill_attention(q, k, v, torch.tensor([0, len(PROMPT)]), model.attention_scale)

    rows = torch.tensor([len(PROMPT) - 1, 2, 0])
    with torch.inference_mode():
        hidden = model.embed(torch.tensor(PROMPT), positions)
        full = model.layer_forward(0, hidden, positions, attention)
        kept = model.layer_forward(0, hidden, positions, attention, rows)
    assert kept.shape == (3, model.shape.hidden_size)
    torch.testing.assert_close(kept, full[rows])
    assert all(torch.equal(a, b) for a, b in zip(seen[0], seen[1])) and len(seen[1][0]) == len(PROMPT)
