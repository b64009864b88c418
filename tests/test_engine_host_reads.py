"""A step reads back from the device a bounded number of times, whatever the number of layers.

On a GPU every `.item()`, `.tolist()`, `int(tensor)` (and `float`, `bool`, `__index__`, `.numpy()`) of a
device tensor makes the host wait for the GPU. The model runner's prepare builds what the kernels need
on the host (lengths, maxima, prefill bounds, prefix lengths, per-layer tables, RoPE tables) once per
step, so the layer loop reads nothing back. Here, on the CPU, every such call on any tensor is counted
through a patched `torch.Tensor` while the runner executes a step: chunked prefill over a partly pooled
prefix, decode over pooled blocks (the staging remap), GQA and RoPE, the C and the PyTorch decode paths,
and the KVPR rebuild path for OPT. The count must not grow with the layers, and stays at the one read
that sampling needs (the step's token ids).
"""
from __future__ import annotations

import collections
import contextlib

import pytest
import torch
from tiny_hf_model import tiny_model_dir

from runners.engine.config import EngineConfig
from runners.engine.llm_engine import LLMEngine
from runners.engine.sampling_params import SamplingParams

pytest.importorskip("transformers")

READS = ("item", "tolist", "__int__", "__float__", "__bool__", "__index__", "numpy")
PROMPTS = [[(7 * i + j) % 90 + 3 for j in range(n)] for i, n in enumerate([19, 5, 33, 26])]


@contextlib.contextmanager
def counted_reads(counter: collections.Counter):
    """Count every read-back method called on any tensor while inside."""
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def counting(name, method):
        def read(self, *args, **kwargs):
            counter[name] += 1
            return method(self, *args, **kwargs)
        return read

    for name, method in originals.items():
        setattr(torch.Tensor, name, counting(name, method))
    try:
        yield counter
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


def _reads_per_step(model_dir, decode_kernel: str, **extra) -> list[int]:
    config = EngineConfig(model=str(model_dir), dtype="float32", block_size=4, num_device_blocks=24,
                          num_pool_blocks=12, prefetch_depth=2, max_num_batched_tokens=16, max_num_seqs=4,
                          decode_kernel=decode_kernel, **extra)
    engine = LLMEngine(config)
    assert (engine.kernels.decode_attention == "torch") == (decode_kernel == "torch")
    execute, per_step = engine.runner.execute, []

    def counting_execute(scheduled):
        counter = collections.Counter()
        with counted_reads(counter):
            result = execute(scheduled)
        per_step.append(sum(counter.values()))
        return result

    engine.runner.execute = counting_execute
    outputs = engine.generate(PROMPTS, SamplingParams(max_tokens=8, ignore_eos=True))
    assert all(output.finish_reason == "length" for output in outputs)
    assert sum(stat.h2d_bytes for stat in engine.stats) > 0, "the pool was not used: staged tables went untested"
    assert any(stat.num_prefill_tokens and stat.num_decode_tokens for stat in engine.stats)
    return per_step


@pytest.mark.parametrize("decode_kernel", ["auto", "torch"])
@pytest.mark.parametrize("family,extra", [("llama", {}), ("opt", {"rebuild_fraction": 0.5})])
def test_a_step_reads_back_once_whatever_the_layers(tmp_path, decode_kernel, family, extra):
    counts = {}
    for layers in (2, 6):
        directory = tiny_model_dir(tmp_path / f"{family}{layers}", family, num_hidden_layers=layers)
        counts[layers] = _reads_per_step(directory, decode_kernel, **extra)
    for layers, per_step in counts.items():  # at most one read: it does not grow with the layers
        assert max(per_step) <= 1, f"{layers} layers read back {per_step} times per step; only sampling's token ids should be"


def test_the_counter_sees_a_read_back():
    counter = collections.Counter()
    with counted_reads(counter):
        tensor = torch.arange(3)
        int(tensor[0]), tensor.tolist(), tensor.max().item(), float(tensor[1]), bool(tensor[2])
    assert counter == {"__int__": 1, "tolist": 1, "item": 1, "__float__": 1, "__bool__": 1}
