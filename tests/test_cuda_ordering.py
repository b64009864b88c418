"""The CUDA prefetch discipline, checked on a CPU: a fake `torch.cuda` records every stream and event call.

`runners.engine.prefetcher` issues its CUDA calls through its module-level `cuda`; here that is a
recorder whose streams run nothing (the copies themselves are CPU tensor copies, done at once),
so the test sees the order in which the prefetcher *asks* for things, which is what a GPU obeys:

- the compute stream waits on a layer's ready event only after the copy stream recorded it (a
  wait on an unrecorded event is a no-op on CUDA, and attention would read a stale slot);
- a slot is refilled only after the copy stream waited on the event the compute stream recorded
  when the slot's previous layer released it, and a bounce-buffer slot only after the host saw
  its previous copy's event complete;
- the stall's first timing event is recorded before the host blocks on a late copy (else the GPU
  idle time behind that block is missed);
- `finish` synchronises the copy stream and the compute stream, also after a failure in the copy
  thread or a layer loop that stopped early, and the next iteration is staged correctly.

Also here: `pinned_zeros` page-locks exactly the bytes asked for (fake `cudart`); when the driver
refuses, CUDA's last error is cleared (through the runtime, or a stand-in libcudart built here and
called through ctypes, as the real one is), the memory stays pageable, and the prefetcher says what
that costs and still streams; and a device KV cache that cannot fit in free device memory is refused in one line.
Left out: anything a GPU must measure (overlap, bandwidth); scripts/gpu_check.py does that.
"""
from __future__ import annotations

import ctypes
import functools
import gc
import itertools
import subprocess
import threading
import time

import pytest
import torch

from pie_core.errors import BadInput
from pie_core.shapes import REGISTRY
from runners.engine import host_memory, prefetcher
from runners.engine.block_manager import CacheLayout
from runners.engine.config import EngineConfig
from runners.engine.kv_cache import KVCache

_ids = itertools.count()


class FakeEvent:
    def __init__(self, log: FakeCuda, enable_timing: bool = False):
        self.log, self.timing, self.recorded, self.id = log, enable_timing, False, next(_ids)

    def record(self, stream=None):
        stream = stream or self.log.current_stream()
        self.log.add("record", stream.name, self)
        self.recorded = True

    def synchronize(self):
        self.log.add("host_sync", threading.current_thread().name, self)

    def elapsed_time(self, other) -> float:
        return 0.5  # ms


class FakeStream:
    def __init__(self, log: FakeCuda, name: str):
        self.log, self.name = log, name

    def wait_event(self, event: FakeEvent):
        self.log.add("wait", self.name, event, event.recorded)
        if self.log.fail_on is event:
            raise RuntimeError("injected copy failure")

    def synchronize(self):
        self.log.add("stream_sync", self.name)


class FakeCuda:
    """Stands in for torch.cuda inside the prefetcher: Stream, Event, stream(), current_stream()."""

    def __init__(self):
        self.entries: list[tuple] = []
        self.lock = threading.Lock()
        self.local = threading.local()
        self.compute = FakeStream(self, "compute")
        self.copy_enters = 0
        self.slow_layer: int | None = None
        self.fail_on: FakeEvent | None = None

    def add(self, *entry):
        with self.lock:
            self.entries.append(entry)

    def Event(self, enable_timing: bool = False) -> FakeEvent:
        return FakeEvent(self, enable_timing)

    def Stream(self, device=None) -> FakeStream:
        return FakeStream(self, "copy")

    def current_stream(self) -> FakeStream:
        return getattr(self.local, "stream", self.compute)

    def stream(self, stream: FakeStream):
        fake = self

        class _Context:
            def __enter__(self):
                layer = fake.copy_enters
                fake.copy_enters += 1
                fake.add("enter", stream.name, layer)
                if layer == fake.slow_layer:
                    time.sleep(0.2)  # a late copy: the layer loop reaches wait() first
                fake.local.stream = stream

            def __exit__(self, *exc):
                fake.local.stream = fake.compute
                return False
        return _Context()

    def index(self, *entry) -> int:
        return next(i for i, e in enumerate(self.entries) if e[:len(entry)] == entry)


DEPTH = 2


@pytest.fixture
def staged(monkeypatch):
    """A CPU KV cache with a filled pool, and a `stream` prefetcher over the fake CUDA."""
    fake = FakeCuda()
    monkeypatch.setattr(prefetcher, "cuda", fake)
    monkeypatch.setattr(host_memory, "pinned_zeros", lambda shape, dtype: torch.zeros(shape, dtype=dtype))
    shape = REGISTRY["opt-125m"]
    config = EngineConfig(model="opt-125m", block_size=4, num_device_blocks=40, num_pool_blocks=24,
                          prefetch_depth=DEPTH, rebuild_fraction=0.25)
    layout = CacheLayout.from_config(config, shape.num_layers)
    cache = KVCache(layout, shape, torch.float32, torch.device("cpu"))
    torch.manual_seed(0)
    cache.pool.copy_(torch.randn_like(cache.pool))
    cache.pool_activations.copy_(torch.randn_like(cache.pool_activations))
    worker = prefetcher.Prefetcher(cache, "stream")
    assert worker.cuda  # the stream discipline, on CPU tensors
    return fake, cache, worker, layout


def _iteration(worker, cache, layout, kv=(5, 0, 17), stop_after: int | None = None) -> float:
    kv = list(kv)
    rebuild = [layout.num_pool_kv_blocks + 2]
    worker.start(kv, rebuild)
    for layer in range(cache.num_layers):
        worker.wait(layer)
        assert torch.equal(cache.staging_rows(layer % DEPTH, len(kv)), cache.pool_layers()[layer, kv]), layer
        if stop_after is not None and layer == stop_after:
            return worker.finish()  # the layer loop raised here: no release for this layer or later ones
        worker.release(layer)
    return worker.finish()


@pytest.mark.timeout(60)
def test_events_are_recorded_before_they_are_waited_on(staged):
    fake, cache, worker, layout = staged
    stall_s = _iteration(worker, cache, layout)
    layers = cache.num_layers
    assert stall_s == pytest.approx(layers * 0.5e-3)
    for layer in range(layers):
        ready = worker.ready_events[layer]
        waited = fake.index("wait", "compute", ready)
        assert fake.entries[waited][3], f"compute stream waited on layer {layer}'s ready event before it was recorded"
        assert fake.index("record", "copy", ready) < waited
        if layer >= DEPTH:
            consumed = worker.consumed_events[layer - DEPTH]
            slot_wait = fake.index("wait", "copy", consumed)
            assert fake.entries[slot_wait][3], f"slot refill for layer {layer} waited on an unrecorded release"
            assert fake.index("record", "compute", consumed) < slot_wait < fake.index("record", "copy", ready)
            bounce_free = fake.index("host_sync", "pie-prefetch", worker.ready_events[layer - DEPTH])
            assert bounce_free < fake.index("enter", "copy", layer), f"bounce slot of layer {layer} rewritten too early"
    ends = [i for i, e in enumerate(fake.entries) if e[0] == "stream_sync"]
    assert {fake.entries[i][1] for i in ends} == {"copy", "compute"}
    assert min(ends) > fake.index("record", "copy", worker.ready_events[layers - 1])


@pytest.mark.timeout(60)
def test_stall_timing_starts_before_the_host_waits_for_a_late_copy(staged):
    fake, cache, worker, layout = staged
    fake.slow_layer = 3
    _iteration(worker, cache, layout)
    before, after = worker.stall_events[3]
    ready = worker.ready_events[3]
    assert fake.index("record", "compute", before) < fake.index("record", "copy", ready) < fake.index("record", "compute", after)


@pytest.mark.timeout(60)
def test_a_failed_copy_surfaces_and_the_next_iteration_is_clean(staged):
    fake, cache, worker, layout = staged
    worker.start([5, 0, 17], [layout.num_pool_kv_blocks + 2])
    fake.fail_on = worker.consumed_events[1]  # the copy thread fails refilling slot 1 for layer 1 + DEPTH
    with pytest.raises(RuntimeError, match="prefetch failed: injected copy failure"):
        for layer in range(cache.num_layers):
            worker.wait(layer)
            worker.release(layer)
    worker.finish()
    synced = len(fake.entries)
    assert {e[1] for e in fake.entries if e[0] == "stream_sync"} == {"copy", "compute"}
    fake.fail_on = None
    _iteration(worker, cache, layout, kv=(1, 2, 3, 4))  # the worker thread survived; slots hold the new blocks
    assert fake.index("enter", "copy", fake.copy_enters - cache.num_layers) > synced - 1


@pytest.mark.timeout(60)
def test_a_loop_that_stops_early_leaves_no_copy_in_flight(staged):
    fake, cache, worker, layout = staged
    _iteration(worker, cache, layout, stop_after=4)
    last_copy = max(i for i, e in enumerate(fake.entries) if e[0] == "record" and e[1] == "copy")
    copy_sync = max(i for i, e in enumerate(fake.entries) if e[:2] == ("stream_sync", "copy"))
    assert copy_sync > last_copy  # finish waited for the copies issued after the loop stopped
    assert fake.copy_enters == cache.num_layers
    _iteration(worker, cache, layout)


class FakeCudart:
    def __init__(self, result: int = 0):
        self.calls: list[tuple] = []
        self.result = result

    def cudaHostRegister(self, pointer, nbytes, flags):
        self.calls.append(("register", pointer, nbytes, flags))
        return self.result

    def cudaHostUnregister(self, pointer):
        self.calls.append(("unregister", pointer))
        return 0

    def cudaGetErrorString(self, result):
        return "out of memory" if result == 2 else f"error {result}"

    def cudaGetLastError(self):
        self.calls.append(("get_last_error",))
        return 0


class CudartWithoutLastError(FakeCudart):
    """torch.cuda.cudart() as it is: no cudaGetLastError."""

    cudaGetLastError = None


def test_a_refused_registration_clears_the_error_and_leaves_the_memory_pageable():
    runtime = FakeCudart(result=2)  # cudaErrorMemoryAllocation
    tensor = host_memory.pinned_zeros((80, 1024, 256), torch.float32, cudart=runtime)  # 80 MiB: the register path
    assert [call[0] for call in runtime.calls] == ["register", "get_last_error"]
    assert tensor.shape == (80, 1024, 256) and not tensor.any() and not hasattr(tensor, "_pie_pinned")
    assert host_memory.pageable_reason(tensor) == "cudaHostRegister refused to lock 0.08 GiB (out of memory)"
    tensor.fill_(1.0)  # plain host memory, usable as such
    locked = host_memory.pinned_zeros((80, 1024, 256), torch.float32, cudart=FakeCudart())
    assert host_memory.pageable_reason(locked) is None


def test_the_error_is_cleared_in_the_loaded_libcudart_when_torch_offers_no_call(tmp_path, monkeypatch):
    source = tmp_path / "stub.c"
    source.write_text("static int calls; int cudaGetLastError(void) { return ++calls; } int calls_made(void) { return calls; }")
    library = tmp_path / "libcudart.so.13"
    subprocess.run(["cc", "-shared", "-fPIC", str(source), "-o", str(library)], check=True, timeout=60)
    maps = f"7f00-7f10 r-xp 00000000 08:01 42 /usr/lib/libc.so.6\n7f20-7f30 r-xp 00000000 08:01 43 {library}\n"
    assert host_memory.loaded_library("libcudart.so", maps) == str(library)
    assert host_memory.loaded_library("libcudart.so", "7f00-7f10 r-xp 00000000 08:01 42 /usr/lib/libc.so.6\n") is None
    monkeypatch.setattr(host_memory, "loaded_library", lambda name, maps=None: str(library))
    tensor = host_memory.pinned_zeros((80, 1024, 256), torch.float32, cudart=CudartWithoutLastError(result=2))
    assert ctypes.CDLL(str(library)).calls_made() == 1  # the same loaded library: its state was reset once
    assert "could not be cleared" not in host_memory.pageable_reason(tensor)
    monkeypatch.setattr(host_memory, "loaded_library", lambda name, maps=None: None)
    tensor = host_memory.pinned_zeros((80, 1024, 256), torch.float32, cudart=CudartWithoutLastError(result=2))
    assert host_memory.pageable_reason(tensor).endswith("CUDA's last error could not be cleared")


@pytest.mark.timeout(60)
def test_pageable_bounce_buffers_are_named_with_their_cost_and_still_stream(monkeypatch):
    monkeypatch.setattr(prefetcher, "cuda", FakeCuda())
    monkeypatch.setattr(host_memory, "_PIN_EXACT_BYTES", 0)  # every buffer takes the cudaHostRegister path
    monkeypatch.setattr(host_memory, "pinned_zeros", functools.partial(host_memory.pinned_zeros, cudart=FakeCudart(2)))
    shape = REGISTRY["opt-125m"]
    config = EngineConfig(model="opt-125m", block_size=4, num_device_blocks=40, num_pool_blocks=24, prefetch_depth=DEPTH,
                          rebuild_fraction=0.25)
    layout = CacheLayout.from_config(config, shape.num_layers)
    cache = KVCache(layout, shape, torch.float32, torch.device("cpu"))
    cache.pool.copy_(torch.randn_like(cache.pool))
    cache.pool_activations.copy_(torch.randn_like(cache.pool_activations))
    worker = prefetcher.Prefetcher(cache, "stream")
    assert len(worker.pageable) == 2  # the K/V and the activation bounce buffers
    for why in worker.pageable:
        assert why.startswith("cudaHostRegister refused to lock") and "(out of memory)" in why
        assert "staging bounce buffer is pageable" in why and "pageable bandwidth" in why
    _iteration(worker, cache, layout)  # the copies still arrive, in order


def test_pinned_pool_locks_exactly_its_bytes():
    runtime = FakeCudart()
    shape = (85, 1024, 256)  # 85 MiB: torch's pinned allocator would lock 128 MiB
    tensor = host_memory.pinned_zeros(shape, torch.float32, cudart=runtime)
    nbytes = tensor.numel() * tensor.element_size()
    ((kind, pointer, registered, flags),) = runtime.calls
    assert (kind, registered, flags) == ("register", nbytes, 0) and pointer == tensor.data_ptr()
    assert pointer % host_memory.HUGE_PAGE == 0 and tensor.shape == shape and not tensor.any()
    view = tensor[1]  # a view outliving the tensor keeps the memory (then pageable), never a dangling lock
    del tensor
    gc.collect()
    assert runtime.calls[-1] == ("unregister", pointer)
    view.fill_(1.0)


def test_device_kv_cache_that_cannot_fit_is_refused(monkeypatch):
    from runners.engine import kv_cache

    monkeypatch.setattr(kv_cache, "free_device_bytes", lambda device: 1 << 20)
    with pytest.raises(BadInput, match="needs 36 MiB but only 1 MiB of cuda is free"):
        kv_cache._check_device_room(36 << 20, torch.device("cuda"))
    kv_cache._check_device_room(1 << 20, torch.device("cuda"))  # what fits passes
