"""Per-layer compute: time ONE decoder layer of a model, prefill and decode, over a grid of batch sizes x context lengths.

The layer is the engine's own: `runners.engine.models.build_model(shape, ..., num_layers=1)`
with seeded random weights, run through `layer_forward` with the engine's kernels
(`write_kv`, `paged_decode_attention`, `paged_prefill_attention`, with the decode variant the engine
resolves: on CUDA the Triton kernels for decode and prefill, tried at this layer's geometry first)
over a paged `kv_cache` allocated for each grid point. Lengths are handed over as the engine's
prepare builds them (on the host), so a timed call reads nothing back from the device. The profiler imports engine model code (lazily, so the rest of the
profiler stays importable without it) because there must be one implementation of a layer:
the cost model is fitted to exactly what the engine will run. Building one layer lets
`--model opt-30b` be profiled on a machine that cannot hold the whole model (the token
embedding is built too, since the engine's model owns it; the other 47 layers are not).

Grid points are chosen from a roofline estimate made with the measured memory bandwidth and
FLOP/s: points whose KV cache would not fit in a quarter of free memory are dropped, and so
are points estimated above the per-point time budget unless that would leave fewer than a
minimum grid (then the cheapest, up to ten budgets, are kept), so big layers get a smaller grid.
Points are timed round-robin (`time_interleaved`) so interference from other processes lands
on the whole grid rather than bending the fit. Block tables are a seeded permutation of the
cache's blocks (a fragmented cache, as in a running engine).

Left out: the embedding and lm_head (the planner accounts for them separately), the pool and
prefetch (the engine's runner measures stalls), and sampling.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from pie_core.device_probe import free_device_bytes
from pie_core.dtypes import dtype_bytes
from pie_core.errors import BadInput
from pie_core.shapes import ModelShape
from profiler.hardware_profile import LayerTiming
from profiler.timing import time_interleaved

BLOCK_SIZE = 16
PHASES = ("decode", "prefill")
ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class GridPoint:
    phase: str  # decode | prefill
    batch_size: int
    context_len: int  # decode: cached tokens per sequence; prefill: prompt tokens per sequence
    estimate_s: float  # roofline estimate used to choose the point and its repeats

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise BadInput(f"unknown layer phase '{self.phase}'", f"one of {', '.join(PHASES)}")
        if self.batch_size < 1 or self.context_len < 1:
            raise BadInput(f"grid point needs batch_size and context_len >= 1, got {self.batch_size}, {self.context_len}")


@dataclass(frozen=True)
class GridSpec:
    """Candidate batch sizes and context lengths per phase, and the time budget per point."""

    decode_batch_sizes: tuple[int, ...]
    decode_context_lens: tuple[int, ...]
    prefill_batch_sizes: tuple[int, ...]
    prefill_context_lens: tuple[int, ...]
    point_budget_s: float  # drop points estimated slower than this
    sample_budget_s: float  # total timed seconds aimed for per point (sets repeats)
    min_repeats: int = 3
    max_repeats: int = 9
    min_decode_points: int = 9  # a 3 x 3 grid: 6 to fit 3 coefficients, 3 held out
    min_prefill_points: int = 6

    def __post_init__(self) -> None:
        for name in ("decode_batch_sizes", "decode_context_lens", "prefill_batch_sizes", "prefill_context_lens"):
            values = getattr(self, name)
            if not values or min(values) < 1:
                raise BadInput(f"grid {name} must be non-empty positive integers, got {values}")
        if self.point_budget_s <= 0 or self.sample_budget_s <= 0:
            raise BadInput(f"grid time budgets must be positive, got {self.point_budget_s}, {self.sample_budget_s}")
        if not 1 <= self.min_repeats <= self.max_repeats:
            raise BadInput(f"need 1 <= min_repeats <= max_repeats, got {self.min_repeats}, {self.max_repeats}")

    @classmethod
    def for_run(cls, quick: bool) -> "GridSpec":
        if quick:
            return cls((1, 4, 16, 64), (64, 256, 1024), (1, 4), (16, 64, 256), point_budget_s=0.3,
                       sample_budget_s=0.3, min_repeats=3, max_repeats=15)
        return cls((1, 2, 4, 8, 16, 32, 64, 128), (32, 128, 512, 1024, 2048), (1, 2, 4, 8), (16, 64, 256, 1024),
                   point_budget_s=2.0, sample_budget_s=1.0, min_repeats=5, max_repeats=15)


@dataclass(frozen=True)
class Roofline:
    """Measured machine rates used only to choose grid points (not to report times)."""

    memory_bandwidth_gbps: float
    matmul_tflops: float

    def decode_s(self, shape: ModelShape, dtype: str, batch_size: int, context_len: int) -> float:
        weights = shape.layer_weight_bytes(dtype)
        kv_bytes = 2 * batch_size * context_len * shape.kv_bytes_per_token_per_layer(dtype)  # gathered: read + write
        flops = batch_size * shape.layer_flops_per_token()
        return (weights + kv_bytes) / (self.memory_bandwidth_gbps * 1e9) + flops / (self.matmul_tflops * 1e12)

    def prefill_s(self, shape: ModelShape, dtype: str, batch_size: int, context_len: int) -> float:
        tokens = batch_size * context_len
        attention_flops = 4 * batch_size * context_len**2 * shape.hidden_size
        flops = tokens * shape.layer_flops_per_token() + attention_flops
        return shape.layer_weight_bytes(dtype) / (self.memory_bandwidth_gbps * 1e9) + flops / (self.matmul_tflops * 1e12)


def kv_cache_bytes(shape: ModelShape, dtype: str, batch_size: int, context_len: int) -> int:
    blocks = batch_size * math.ceil((context_len + 1) / BLOCK_SIZE)
    return blocks * BLOCK_SIZE * shape.kv_bytes_per_token_per_layer(dtype)


def plan_grid(shape: ModelShape, dtype: str, spec: GridSpec, roofline: Roofline, free_bytes: int) -> tuple[GridPoint, ...]:
    """Grid points within the time budget and a quarter of free memory, decode first.

    When a big layer leaves fewer than `min_points` of a phase inside the budget, the cheapest
    remaining points (up to 10x the budget) are added so the fit still has a grid to work with.
    """
    memory_budget = free_bytes // 4
    points: list[GridPoint] = []
    for phase, batches, contexts, estimate, min_points in (
            ("decode", spec.decode_batch_sizes, spec.decode_context_lens, roofline.decode_s, spec.min_decode_points),
            ("prefill", spec.prefill_batch_sizes, spec.prefill_context_lens, roofline.prefill_s, spec.min_prefill_points)):
        candidates = []
        for context_len in contexts:
            if context_len + 1 > shape.max_positions:
                continue
            for batch_size in batches:
                tokens = batch_size * (context_len if phase == "prefill" else 1)
                activation_bytes = 16 * tokens * shape.intermediate_size * dtype_bytes(dtype)
                if kv_cache_bytes(shape, dtype, batch_size, context_len) + activation_bytes > memory_budget:
                    continue
                candidates.append(GridPoint(phase, batch_size, context_len, estimate(shape, dtype, batch_size, context_len)))
        chosen = [p for p in candidates if p.estimate_s <= spec.point_budget_s]
        spare = sorted((p for p in candidates if spec.point_budget_s < p.estimate_s <= 10 * spec.point_budget_s),
                       key=lambda p: p.estimate_s)
        chosen += spare[:max(0, min_points - len(chosen))]
        points += [p for p in candidates if p in chosen]
    return tuple(points)


def repeats_for(point: GridPoint, spec: GridSpec) -> int:
    return max(spec.min_repeats, min(spec.max_repeats, int(spec.sample_budget_s / max(point.estimate_s, 1e-6))))


class LayerBench:
    """One engine layer with seeded random weights, ready to time grid points."""

    def __init__(self, shape: ModelShape, dtype: str, device: str, seed: int = 0):
        import torch

        from runners.engine import host_memory
        from runners.engine.kernels import resolve_kernels
        from runners.engine.models import build_model  # lazy: the engine's layer is the one timed
        from runners.engine.triton_smoke import AttentionGeometry

        self.shape, self.dtype, self.device, self.seed = shape, dtype, device, seed
        self.host_memory = host_memory
        if torch.device(device).type == "cpu":
            host_memory.keep_freed_memory()  # as the engine does: steps reuse warm heap pages
        # The engine's own choice, fallbacks included, tried at this layer's geometry.
        self.kernels = resolve_kernels(device, dtype, geometry=AttentionGeometry.of(shape, dtype, BLOCK_SIZE))
        self.model = build_model(shape, dtype, device, seed=seed, num_layers=1, prepack=self.kernels.prepack)
        self.torch = torch

    def decode_kernel(self) -> str:
        """The decode-attention path the engine takes for this layer's dtype and device ('c-avx2', 'torch', ...)."""
        return self.kernels.decode_attention

    def _cache(self, batch_size: int, tokens_per_sequence: int):
        """A filled KV cache and a fragmented block table for `batch_size` sequences."""
        torch = self.torch
        blocks_per_sequence = math.ceil(tokens_per_sequence / BLOCK_SIZE)
        num_blocks = batch_size * blocks_per_sequence
        shape = (num_blocks, 2, BLOCK_SIZE, self.shape.num_kv_heads, self.shape.head_dim)
        if torch.device(self.device).type == "cpu":  # on 2 MiB pages, as the engine's cache (host_memory.py)
            kv_cache = self.host_memory.zeros(shape, self.model.dtype).fill_(0.01)
        else:
            kv_cache = torch.empty(shape, dtype=self.model.dtype, device=self.device).fill_(0.01)
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(num_blocks, generator=generator).to(self.device)
        return kv_cache, order.view(batch_size, blocks_per_sequence)

    def _slots(self, block_tables, positions):
        """slot = block * BLOCK_SIZE + offset for each (sequence row, token position)."""
        rows = self.torch.arange(block_tables.shape[0], device=self.device)[:, None].expand_as(positions)
        blocks = block_tables[rows, positions // BLOCK_SIZE]
        return (blocks * BLOCK_SIZE + positions % BLOCK_SIZE).reshape(-1)

    def decode_call(self, batch_size: int, context_len: int) -> Callable[[], object]:
        """One decode step of the layer: each sequence has `context_len` cached tokens and adds one."""
        from runners.engine.attention import Lengths, paged_decode_attention, write_kv

        torch = self.torch
        kv_cache, block_tables = self._cache(batch_size, context_len + 1)
        positions = torch.full((batch_size, 1), context_len, dtype=torch.long, device=self.device)
        slot_mapping = self._slots(block_tables, positions)
        context_lens = Lengths.build([context_len + 1] * batch_size, self.device)
        generator = torch.Generator().manual_seed(self.seed + 1)
        hidden = torch.randn(batch_size, self.shape.hidden_size, generator=generator).to(self.device, self.model.dtype)
        scale = self.model.attention_scale

        def attention(index, q, k, v):
            write_kv(kv_cache, slot_mapping, k, v)
            return paged_decode_attention(q, kv_cache, block_tables, context_lens, scale, self.kernels.decode_variant)

        return self._layer_step(hidden, positions, attention)

    def prefill_call(self, batch_size: int, prompt_len: int) -> Callable[[], object]:
        """One prefill of the layer: `batch_size` prompts of `prompt_len` tokens packed together."""
        from runners.engine.attention import PrefillLayout, paged_prefill_attention, write_kv

        torch = self.torch
        kv_cache, block_tables = self._cache(batch_size, prompt_len)
        positions = torch.arange(prompt_len, device=self.device)[None, :].expand(batch_size, prompt_len)
        slot_mapping = self._slots(block_tables, positions)
        layout = PrefillLayout.build(range(0, (batch_size + 1) * prompt_len, prompt_len), [0] * batch_size, self.device)
        generator = torch.Generator().manual_seed(self.seed + 2)
        hidden = torch.randn(batch_size * prompt_len, self.shape.hidden_size, generator=generator).to(self.device, self.model.dtype)
        scale = self.model.attention_scale

        def attention(index, q, k, v):
            write_kv(kv_cache, slot_mapping, k, v)
            return paged_prefill_attention(q, k, v, layout, scale, kv_cache, None, self.kernels.decode_variant,
                                           self.kernels.prefill_variant)

        return self._layer_step(hidden, positions, attention)

    def _layer_step(self, hidden, positions, attention) -> Callable[[], object]:
        """The timed call: one forward of the layer through the given attention (RoPE tables made once
        outside it, as the engine makes them once per step for all layers)."""
        torch, flat_positions = self.torch, self.model.prepare_positions(positions.reshape(-1))

        def step():
            with torch.inference_mode():
                return self.model.layer_forward(0, hidden, flat_positions, attention)
        return step

    def step_for(self, point: GridPoint) -> Callable[[], object]:
        make = self.decode_call if point.phase == "decode" else self.prefill_call
        return make(point.batch_size, point.context_len)


def memory_chunks(points: tuple[GridPoint, ...], shape: ModelShape, dtype: str, budget_bytes: int) -> list[list[GridPoint]]:
    """Consecutive groups of points whose KV caches fit in `budget_bytes` together (each group is interleaved)."""
    chunks: list[list[GridPoint]] = [[]]
    used = 0
    for point in points:
        size = kv_cache_bytes(shape, dtype, point.batch_size, point.context_len)
        if chunks[-1] and used + size > budget_bytes:
            chunks.append([])
            used = 0
        chunks[-1].append(point)
        used += size
    return [c for c in chunks if c]


def measure_layer(shape: ModelShape, dtype: str, device: str, spec: GridSpec, roofline: Roofline,
                  seed: int = 0, progress: ProgressFn | None = None,
                  on_built: Callable[[int], None] | None = None) -> tuple[tuple[LayerTiming, ...], dict]:
    """Build one layer and time every planned grid point; returns the timings and the kernels it ran
    (`KernelPaths.to_dict()`: GEMM path, decode-attention path, fallbacks).

    `on_built(num_points)` fires once the layer is built.

    Points are timed in memory-bounded groups, round-robin within a group (`time_interleaved`),
    so interference from other processes spreads over the grid instead of bending the fit.
    """
    free_bytes = free_device_bytes(device)
    points = plan_grid(shape, dtype, spec, roofline, free_bytes)
    bench = LayerBench(shape, dtype, device, seed)
    if on_built:
        on_built(len(points))
    timings = []
    for chunk in memory_chunks(points, shape, dtype, free_bytes // 4):
        steps = [bench.step_for(point) for point in chunk]
        results = time_interleaved(steps, device=device, repeats=[repeats_for(p, spec) for p in chunk], warmup=1)
        del steps
        for point, timing in zip(chunk, results):
            timings.append(LayerTiming(phase=point.phase, batch_size=point.batch_size, context_len=point.context_len,
                                       median_s=timing.median_s, p10_s=timing.p10_s, p90_s=timing.p90_s,
                                       samples_s=timing.samples_s))
            if progress:
                progress(f"layer {point.phase} batch {point.batch_size} ctx {point.context_len}: {timing.median_s * 1e3:.2f} ms")
    return tuple(timings), bench.kernels.to_dict()
