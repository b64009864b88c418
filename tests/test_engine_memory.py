"""The engine's per-token loop stays off the file system, and finished requests leave nothing behind.

A tiny OPT saved with save_pretrained is the model directory. Every open of its config.json
(`builtins.open` and `io.open`, which `Path.read_text` goes through) is counted: building the
config reads it once (the shape), building the engine once more (the EOS ids), the steps never.
Requests run to completion hold no `Sequence` or `RequestOutput` in the engine afterwards, and
the greedy tokens of a step-by-step loop equal `generate()`'s (the equality tests against
transformers are tests/test_engine_correctness.py). Left out: RSS figures
(benchmarks/bench_engine_memory.py measures them).
"""
from __future__ import annotations

import builtins
import dataclasses
import io
import os
import random

import pytest
from tiny_hf_model import tiny_model_dir

from runners.engine.config import EngineConfig
from runners.engine.llm_engine import LLMEngine
from runners.engine.sampling_params import SamplingParams

pytest.importorskip("transformers")

VOCAB = 97
MAX_TOKENS = (3, 5, 8, 11)  # cycled over the requests, so they finish at different steps
# The first setting preempts (13 device blocks of 4 tokens for six requests of up to 41 tokens).
SETTINGS = {"preemption": {"num_device_blocks": 13, "max_num_batched_tokens": 7},
            "pool": {"num_device_blocks": 24, "num_pool_blocks": 16, "prefetch_depth": 1}}


@pytest.fixture(scope="module")
def opt_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("memory") / "opt", perturb=0, vocab_size=VOCAB,
                          max_position_embeddings=64, eos_token_id=2)


class OpenCounter:
    """Counts opens of one file through `builtins.open` and `io.open` (`Path.open` uses the latter)."""

    def __init__(self, path, monkeypatch):
        self.path, self.count = os.path.abspath(path), 0
        original = builtins.open

        def counting_open(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and os.path.abspath(os.fspath(file)) == self.path:
                self.count += 1
            return original(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", counting_open)
        monkeypatch.setattr(io, "open", counting_open)


def make_config(opt_dir, **settings) -> EngineConfig:
    base = {"model": str(opt_dir), "dtype": "float32", "block_size": 4, "max_num_seqs": 6, "num_device_blocks": 64}
    return EngineConfig(**{**base, **settings})


def requests(count: int = 6, seed: int = 0) -> list[tuple[list[int], SamplingParams]]:
    rng = random.Random(seed)
    return [([rng.randrange(3, VOCAB) for _ in range(rng.randint(5, 30))],
             SamplingParams(max_tokens=MAX_TOKENS[index % len(MAX_TOKENS)], ignore_eos=True)) for index in range(count)]


def step_loop(engine: LLMEngine, work: list[tuple[list[int], SamplingParams]]) -> dict[str, list[int]]:
    """Add every request, step to the end; after each step the engine holds exactly the unfinished ones."""
    for index, (prompt, params) in enumerate(work):
        engine.add_request(f"r{index}", prompt, params)
    unfinished, tokens = {f"r{index}" for index in range(len(work))}, {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                unfinished.discard(output.request_id)
                tokens[output.request_id] = output.output_token_ids
        engine.check_invariants()
        assert set(engine._sequences) == set(engine._outputs) == unfinished
    return tokens


def test_steps_never_read_config_json(opt_dir, monkeypatch):
    counter = OpenCounter(opt_dir / "config.json", monkeypatch)
    config = make_config(opt_dir)
    assert counter.count == 1  # the shape, resolved once
    engine = LLMEngine(config)
    assert counter.count == 2  # the EOS ids
    assert engine.eos_token_ids == {2}
    tokens = step_loop(engine, requests(count=8))
    assert sorted(len(tokens[f"r{i}"]) for i in range(8)) == sorted(MAX_TOKENS[i % 4] for i in range(8))
    for _ in range(10):
        assert config.shape.vocab_size == VOCAB and config.model_len == 64
    assert counter.count == 2, f"{counter.count - 2} reads of config.json after construction"


def test_shape_is_resolved_once_and_again_on_replace(opt_dir, monkeypatch):
    counter = OpenCounter(opt_dir / "config.json", monkeypatch)
    config = make_config(opt_dir)
    shorter = config.replace(max_model_len=32)
    assert counter.count == 2 and shorter.shape == config.shape and shorter.model_len == 32
    registry = config.replace(model="opt-125m")
    assert counter.count == 2 and registry.shape.name == "opt-125m" and registry.shape.vocab_size != VOCAB
    # The cached shape is no field: described configs, equality and hashing see the settings only.
    assert "shape" not in dataclasses.asdict(config) and "_shape" not in dataclasses.asdict(config)
    assert config == make_config(opt_dir) and hash(config) == hash(make_config(opt_dir))
    assert "shape" not in repr(config)


@pytest.mark.parametrize("case", list(SETTINGS))
def test_finished_requests_leave_no_bookkeeping(opt_dir, case):
    work = requests()
    engine = LLMEngine(make_config(opt_dir, **SETTINGS[case]))
    stepped = step_loop(engine, work)
    assert engine._sequences == {} and engine._outputs == {}
    assert not engine.scheduler.running and not engine.scheduler.waiting and engine.block_manager.device_used == 0
    if case == "preemption":
        assert sum(stat.num_preempted for stat in engine.stats) > 0, "the preemption setting did not preempt"
    else:
        assert max(stat.pool_blocks_used for stat in engine.stats) > 0, "the pool setting did not pool"
    # generate() on a fresh engine, twice: the same greedy tokens each time, nothing left behind.
    fresh = LLMEngine(make_config(opt_dir, **SETTINGS[case]))
    for _ in range(2):
        outputs = fresh.generate([prompt for prompt, _ in work], [params for _, params in work])
        assert [output.output_token_ids for output in outputs] == [stepped[f"r{i}"] for i in range(len(work))]
        assert all(output.finished and output.finish_reason == "length" for output in outputs)
        assert fresh._sequences == {} and fresh._outputs == {}
    # A finished request's id may be used again, with the same result.
    assert step_loop(engine, work[:2]) == {"r0": stepped["r0"], "r1": stepped["r1"]}


def test_abort_drops_the_sequence_and_returns_the_output(opt_dir):
    engine = LLMEngine(make_config(opt_dir))
    work = requests(count=3)
    for index, (prompt, params) in enumerate(work):
        engine.add_request(f"r{index}", prompt, params)
    engine.step()
    aborted = engine.abort_request("r1")
    assert aborted is not None and aborted.finished and aborted.finish_reason == "abort"
    assert "r1" not in engine._sequences and engine.abort_request("r1") is None
    engine.check_invariants()
    while engine.has_unfinished_requests():
        returned = engine.step()
        assert "r1" not in {output.request_id for output in returned}
        engine.check_invariants()
    assert engine._sequences == {} and set(engine._outputs) == {"r1"}  # only the aborted output is kept
    engine.add_request("r1", *work[1])  # the id is free again
    while engine.has_unfinished_requests():
        engine.step()
    assert engine._sequences == {} and engine._outputs == {}
