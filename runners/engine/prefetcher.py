"""Layer-wise prefetch of pooled blocks into a ring of `d` device staging slots.

Per iteration the model runner calls `start(kv_indices, rebuild_indices)` with the pool blocks
the batch reads; then, for layer i = 0, 1, ..., those blocks' layer-i K/V (and, for
rebuild-kind blocks, layer-i input activations) are copied into staging slot `i % d`. The layer
loop calls `wait(i)` right before layer i's attention (the stall is the time spent there) and
`release(i)` after it. Who copies (`EngineConfig.copy_worker`):

- `stream` (CUDA): a worker thread gathers into a pinned bounce buffer and issues the
  host-to-device copy on a separate copy stream, recording one CUDA event per layer; the compute
  stream waits on that event (not the host), and the stall is the GPU time between two timing
  events recorded around that wait; the first is recorded before the host waits for the worker
  to issue the copy, so GPU idle time while the host is blocked there counts as stall too. Slot
  reuse is ordered by an event the compute stream records after the layer's attention, so
  copies for layers i+1..i+d overlap layer i's compute; a bounce-buffer slot is rewritten only
  after its previous copy's event completed, and `finish` waits for the copy stream as well, so
  no copy of an iteration (even one that failed halfway) is in flight when the next starts.
  The CUDA calls go through the module's `cuda` (torch.cuda), which tests/test_cuda_ordering.py
  replaces with a recording fake to check this order on a CPU.
- `thread` (CPU): the same discipline with a copy thread, an `index_select` into the staging
  rows, and `threading.Event`s; before it reuses a slot it waits until layer `i - d` released it.
- `team` (CPU, the default there): `wait(i)` itself gathers layer i's blocks with the layer
  loop's own OpenMP threads, right before the attention that reads them. On a CPU the "link" is
  a memcpy on the cores and memory bus the compute uses, so a copy thread cannot hide behind
  compute: it takes a core from a two-thread team that then waits on it at every barrier
  (the team copy, whose whole copy time is counted as stall, measured faster with half the KV
  pooled: docs/engine-cpu-performance.md, "The pool on a CPU").

Left out: copying only the blocks that changed since the previous iteration (every pooled
block is streamed every iteration, as in Pie), more than one iteration in flight.
"""
from __future__ import annotations

import queue
import threading
import time

import torch

from runners.engine import host_memory
from runners.engine.kv_cache import KVCache

cuda = torch.cuda  # streams and events; a test injects a fake that records their order


class Prefetcher:
    def __init__(self, cache: KVCache, worker: str):
        self.cache = cache
        self.team = worker == "team"
        self.layout = cache.layout
        self.depth = max(1, self.layout.prefetch_depth)
        self.num_layers = cache.num_layers
        self.cuda = worker == "stream"  # the CUDA discipline (EngineConfig allows "stream" only on CUDA)
        slot_rows = self.layout.staged_blocks_per_slot
        hidden = cache.hidden_size
        self.staged_activations = torch.zeros(self.depth, cache.num_pool_rebuild_blocks, cache.block_size, hidden,
                                              dtype=cache.kv.dtype, device=cache.device)
        if self.cuda:
            self.copy_stream = cuda.Stream(device=cache.device)
            self.bounce = host_memory.pinned_zeros((self.depth, slot_rows, *cache.geometry), cache.kv.dtype)
            self.bounce_activations = host_memory.pinned_zeros(
                (self.depth, cache.num_pool_rebuild_blocks, cache.block_size, hidden), cache.kv.dtype)
        # Bounce buffers the driver would not lock: what streams through them crosses at pageable speed.
        self.pageable = tuple(
            f"{why}: the staging bounce buffer is pageable, so every streamed block crosses the link at pageable "
            f"bandwidth (pie profile's pageable against pinned H2D) and the copy thread waits for each copy, "
            f"so a pooled share hides behind less compute"
            for why in (host_memory.pageable_reason(buffer) for buffer in (self.bounce, self.bounce_activations))
            if why) if self.cuda else ()
        self._jobs: queue.Queue = queue.Queue()
        if not self.team:
            self._worker = threading.Thread(target=self._run, name="pie-prefetch", daemon=True)
            self._worker.start()
        self._active = False
        self._closed = False

    def close(self) -> None:
        """Stop the copy thread (it holds this prefetcher, and so the cache, alive) and drop the staging buffers.
        Idempotent; after it the prefetcher cannot start an iteration."""
        if self._closed:
            return
        self._closed = True
        if self._active:
            self.finish()
        worker = getattr(self, "_worker", None)
        if worker is not None:
            self._jobs.put(None)  # the thread's signal to return
            worker.join()
            self._worker = None
        self.cache = self.staged_activations = None
        self.bounce = self.bounce_activations = None

    # --- main thread -----------------------------------------------------------------------
    def start(self, kv_indices: list[int], rebuild_indices: list[int]) -> int:
        """Begin streaming this iteration's pooled blocks; returns the bytes that will cross the link."""
        layers = self.num_layers
        self.num_kv, self.num_rebuild = len(kv_indices), len(rebuild_indices)
        self.ready = [threading.Event() for _ in range(layers)]
        self.consumed = [threading.Event() for _ in range(layers)]
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.stall_s = 0.0
        if self.cuda:
            self.ready_events = [cuda.Event() for _ in range(layers)]
            self.consumed_events = [cuda.Event() for _ in range(layers)]
            self.stall_events: list[tuple] = []  # (before, after) timing events of each wait
        kv = torch.tensor(kv_indices, dtype=torch.int64)
        rebuild = torch.tensor([index - self.cache.num_pool_kv_blocks for index in rebuild_indices], dtype=torch.int64)
        self._active = True
        if self.team:
            self._team_job = (kv, rebuild)
            self.done.set()
        else:
            self._jobs.put((kv, rebuild))
        return layers * (self.num_kv * self.cache.block_layer_bytes
                         + self.num_rebuild * self.cache.activation_block_layer_bytes)

    def wait(self, layer: int) -> None:
        """Block until layer `layer`'s staged blocks are in slot `layer % d` (counted as stall)."""
        began = time.perf_counter()
        if self.cuda:  # before the host blocks: GPU idle while it waits for the worker is stall too
            before, after = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
            before.record()
        if self.team:  # the layer loop copies; layer - d released the slot before this call
            self._copy_layer(layer, *self._team_job)
        else:
            self.ready[layer].wait()
            if self.error is not None:
                raise RuntimeError(f"prefetch failed: {self.error}") from self.error
        if self.cuda:
            cuda.current_stream().wait_event(self.ready_events[layer])  # recorded: ready[layer] is set
            after.record()
            self.stall_events.append((before, after))
        else:
            self.stall_s += time.perf_counter() - began

    def activations(self, layer: int) -> torch.Tensor:
        """Staged activations [n_rebuild, block_size, h] for layer `layer` (valid after `wait`)."""
        return self.staged_activations[layer % self.depth, :self.num_rebuild]

    def release(self, layer: int) -> None:
        if self.cuda:
            self.consumed_events[layer].record()
        self.consumed[layer].set()

    def finish(self) -> float:
        """End the iteration (also after a failure); returns the stall in seconds."""
        if not self._active:
            return 0.0
        for event in self.consumed:  # unblock the worker if the layer loop stopped early
            event.set()
        self.done.wait()
        self._active = False
        if self.cuda:
            self.copy_stream.synchronize()  # copies issued after the layer loop stopped early, too
            cuda.current_stream().synchronize()
            return sum(before.elapsed_time(after) for before, after in self.stall_events) / 1000.0
        return self.stall_s

    # --- worker thread ---------------------------------------------------------------------
    def _run(self) -> None:
        if not self.cuda:
            # The copy is memory-bound; one OpenMP thread here (thread-local setting) keeps the copy
            # thread from oversubscribing the cores the layer loop computes on.
            torch.set_num_threads(1)
        while True:
            job = self._jobs.get()
            if job is None:  # close()
                return
            kv, rebuild = job
            try:
                with torch.inference_mode():
                    for layer in range(self.num_layers):
                        if self.error is None:
                            self._copy_layer(layer, kv, rebuild)
                        self.ready[layer].set()
            except BaseException as err:  # noqa: BLE001 - surfaced to the main thread in wait()
                self.error = err
                for event in self.ready:
                    event.set()
            finally:
                self.done.set()

    def _copy_layer(self, layer: int, kv: torch.Tensor, rebuild: torch.Tensor) -> None:
        slot = layer % self.depth
        if layer >= self.depth:
            self.consumed[layer - self.depth].wait()
        cache = self.cache
        if not self.cuda:
            if self.num_kv:
                torch.index_select(cache.pool, 0, kv + layer * cache.num_pool_kv_blocks,
                                   out=cache.staging_rows(slot, self.num_kv))
            if self.num_rebuild:
                torch.index_select(cache.pool_activations[layer], 0, rebuild,
                                   out=self.staged_activations[slot, :self.num_rebuild])
            return
        if layer >= self.depth:
            self.ready_events[layer - self.depth].synchronize()  # the bounce buffer's last copy is done
        with cuda.stream(self.copy_stream):
            if layer >= self.depth:
                self.copy_stream.wait_event(self.consumed_events[layer - self.depth])
            if self.num_kv:
                bounce = self.bounce[slot, :self.num_kv]
                torch.index_select(cache.pool, 0, kv + layer * cache.num_pool_kv_blocks, out=bounce)
                cache.staging_rows(slot, self.num_kv).copy_(bounce, non_blocking=True)
            if self.num_rebuild:
                bounce = self.bounce_activations[slot, :self.num_rebuild]
                torch.index_select(cache.pool_activations[layer], 0, rebuild, out=bounce)
                self.staged_activations[slot, :self.num_rebuild].copy_(bounce, non_blocking=True)
            self.ready_events[layer].record(self.copy_stream)
