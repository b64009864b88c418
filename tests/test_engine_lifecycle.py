"""An engine that is closed lets go of everything it allocated; a closed engine refuses work.

With the thread copier (`copy_worker="thread"`) the prefetcher's copy thread used to run for
the life of the process, holding the prefetcher and so the device KV and the host pool. Weak
references to those tensors must die once `close()` returns, while the engine object itself is
still referenced. Left out: RSS over a sweep (benchmarks/bench_engine_close.py measures it).
"""
from __future__ import annotations

import gc
import threading
import weakref

import pytest
from tiny_hf_model import tiny_model_dir

from runners.engine.config import EngineConfig
from runners.engine.llm_engine import LLMEngine
from runners.engine.sampling_params import SamplingParams

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def opt_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("lifecycle") / "opt", perturb=0, vocab_size=97,
                          max_position_embeddings=64, eos_token_id=2)


def pooled_engine(opt_dir) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(opt_dir), dtype="float32", block_size=4, max_num_seqs=4,
                                  num_device_blocks=24, num_pool_blocks=16, prefetch_depth=1, copy_worker="thread"))


def copy_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "pie-prefetch"]


def test_close_frees_the_cache_and_stops_the_copy_thread(opt_dir):
    before = len(copy_threads())
    engine = pooled_engine(opt_dir)
    assert len(copy_threads()) == before + 1
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    for index in range(4):  # enough context for the pool to be used, so the copy thread really ran
        engine.add_request(f"r{index}", list(range(3, 20)), params)
    while engine.has_unfinished_requests():
        engine.step()
    assert max(stat.pool_blocks_used for stat in engine.stats) > 0
    refs = {"device KV": weakref.ref(engine.cache.kv), "host pool": weakref.ref(engine.cache.pool),
            "prefetcher": weakref.ref(engine.runner.prefetcher), "model": weakref.ref(engine.model)}
    engine.close()
    gc.collect()
    alive = [name for name, ref in refs.items() if ref() is not None]
    assert not alive, f"still referenced after close(): {alive}"
    assert len(copy_threads()) == before
    engine.close()  # idempotent


def test_closed_engine_refuses_work_and_aborts_what_it_held(opt_dir):
    with pooled_engine(opt_dir) as engine:
        engine.add_request("held", list(range(3, 10)), SamplingParams(max_tokens=4, ignore_eos=True))
        engine.step()
    assert engine.closed and not engine.has_unfinished_requests()
    with pytest.raises(RuntimeError, match="closed"):
        engine.step()
    with pytest.raises(RuntimeError, match="closed"):
        engine.add_request("late", [3, 4], SamplingParams(max_tokens=2))


def test_a_failed_run_still_closes(opt_dir):
    before = len(copy_threads())
    with pytest.raises(ValueError):
        with pooled_engine(opt_dir):
            raise ValueError("the run failed")
    assert len(copy_threads()) == before


def test_frozen_heap_keeps_startup_objects_out_of_collections_and_gives_them_back():
    import gc

    from runners.gc_freeze import frozen_heap

    assert gc.get_freeze_count() == 0
    with frozen_heap():
        assert gc.get_freeze_count() > 1000  # the interpreter's, torch's and the tests' objects
        cycle: list = []
        cycle.append(cycle)  # a new cycle made during the run is still collected
        del cycle
        assert gc.collect() >= 1
    assert gc.get_freeze_count() == 0
