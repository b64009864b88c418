"""KV storage of one engine: the flat device tensor, the host pool, and the activation stores.

- `kv`: `[L * n_dev + d * S, 2, block_size, Hkv, dh]` on the device, allocated once. Layer `i`'s
  resident blocks are rows `i * n_dev ... (i + 1) * n_dev - 1`; staging slot `j` is rows
  `L * n_dev + j * S ...` (docs/engine-interfaces.md), so kernels read resident and staged
  blocks through one remapped block table.
- `pool`: `[L * n_kv, 2, block_size, Hkv, dh]` in host memory (pinned on CUDA, exactly its size; on 2 MiB pages when
  the engine runs on the CPU, like `kv`: host_memory.py), the same block
  geometry; layer `i`'s pool block `p` is row `i * n_kv + p`.
- Rebuild path (KVPR, only when the layout has activation blocks): `captured[L, n_dev, block_size, h]`
  holds each resident device block's layer inputs (written by the layer loop), and
  `pool_activations[L, n_rebuild, block_size, h]` holds them for pooled blocks of the rebuild kind.
  Both live in host memory; an eviction of that kind is a host-to-host copy, the link carries
  the activations when they are captured.
- On CUDA the device tensor is checked against the free device memory before it is allocated
  (`pie_core.device_probe.free_device_bytes`), so a budget that does not fit is a `BadInput`.

Left out: quantised KV, per-layer different block counts, freeing memory before the engine goes.
"""
from __future__ import annotations

import math

import torch

from pie_core.device_probe import free_device_bytes
from pie_core.errors import BadInput
from pie_core.shapes import ModelShape
from pie_core.sizes import format_bytes
from runners.engine import host_memory
from runners.engine.block_manager import BlockMove, CacheLayout


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, pin: bool = False) -> torch.Tensor:
    """Pinned host memory of exactly this size on CUDA machines; CPU tensors on 2 MiB pages (host_memory.py)."""
    if pin:
        return host_memory.pinned_zeros(shape, dtype)
    if device.type == "cpu":
        return host_memory.zeros(shape, dtype)
    return torch.zeros(shape, dtype=dtype, device=device)


def _check_device_room(nbytes: int, device: torch.device) -> None:
    """A device KV cache larger than what is free (after the weights) fails here, in one line, not as a CUDA OOM."""
    free = free_device_bytes(str(device))
    if nbytes > free:
        raise BadInput(f"the device KV cache (resident blocks and staging) needs {format_bytes(nbytes)} but only "
                       f"{format_bytes(free)} of {device} is free after the model's weights",
                       "give fewer num_device_blocks (or a smaller --gpu-memory to pie tune)")


class KVCache:
    def __init__(self, layout: CacheLayout, shape: ModelShape, dtype: torch.dtype, device: torch.device):
        self.layout = layout
        self.device = device
        self.num_layers = layout.num_layers
        self.num_device_blocks = layout.num_device_blocks
        self.num_pool_kv_blocks = layout.num_pool_kv_blocks
        self.num_pool_rebuild_blocks = layout.num_pool_rebuild_blocks
        self.staging_base = layout.num_layers * layout.num_device_blocks
        self.block_size = layout.block_size
        self.hidden_size = shape.hidden_size
        self.geometry = (2, layout.block_size, shape.num_kv_heads, shape.head_dim)
        pin = device.type == "cuda"
        total = self.staging_base + layout.prefetch_depth * layout.staged_blocks_per_slot
        cpu = torch.device("cpu")
        if device.type == "cuda":
            _check_device_room(total * math.prod(self.geometry) * dtype.itemsize, device)
        self.kv = _zeros((total, *self.geometry), dtype, device)
        self.pool = _zeros((layout.num_layers * self.num_pool_kv_blocks, *self.geometry), dtype, cpu, pin)
        self.rebuild = self.num_pool_rebuild_blocks > 0
        captured_blocks = self.num_device_blocks if self.rebuild else 0
        self.captured = _zeros((layout.num_layers, captured_blocks, layout.block_size, shape.hidden_size), dtype, cpu,
                               pin and self.rebuild)
        self.pool_activations = _zeros((layout.num_layers, self.num_pool_rebuild_blocks, layout.block_size,
                                        shape.hidden_size), dtype, cpu, pin and self.rebuild)
        # Where cudaHostRegister refused (host_memory.pinned_zeros), what stays pageable and what that costs.
        self.pageable = tuple(
            f"{why}: the {name} is pageable memory; it is only read and written by host copies (streamed blocks cross "
            f"the link from the pinned bounce buffers, evictions and restores copy through pageable memory anyway), "
            f"so this costs no link bandwidth"
            for name, tensor in (("KV pool", self.pool), ("activation capture store", self.captured),
                                 ("pooled activation store", self.pool_activations))
            if (why := host_memory.pageable_reason(tensor)))
        element = self.kv.element_size()
        self.block_layer_bytes = self.kv[0].numel() * element  # one block of one layer, K and V
        self.activation_block_layer_bytes = layout.block_size * shape.hidden_size * element

    # --- views -----------------------------------------------------------------------------
    def resident(self) -> torch.Tensor:
        """[L, n_dev, 2, block_size, Hkv, dh] view of the resident device blocks."""
        return self.kv[:self.staging_base].view(self.num_layers, self.num_device_blocks, *self.geometry)

    def pool_layers(self) -> torch.Tensor:
        """[L, n_kv, 2, block_size, Hkv, dh] view of the host pool."""
        return self.pool.view(self.num_layers, self.num_pool_kv_blocks, *self.geometry)

    def staging_rows(self, slot: int, count: int) -> torch.Tensor:
        start = self.staging_base + slot * self.layout.staged_blocks_per_slot
        return self.kv[start:start + count]

    def staging_row_base(self, slot: int) -> int:
        return self.staging_base + slot * self.layout.staged_blocks_per_slot

    # --- moves between tiers ---------------------------------------------------------------
    @staticmethod
    def _last_per_pool_index(moves: list[BlockMove]) -> list[BlockMove]:
        """A pool block freed and reused in one iteration: only its last (live) move matters."""
        return list({move.pool_index: move for move in moves}.values())

    def evict(self, moves: list[BlockMove]) -> int:
        """Copy device -> pool for these moves; returns bytes that crossed the link."""
        moves = self._last_per_pool_index(moves)
        kv_moves = [move for move in moves if not move.rebuild]
        rebuild_moves = [move for move in moves if move.rebuild]
        if kv_moves:
            devices = torch.tensor([move.device_index for move in kv_moves], device=self.device)
            pools = torch.tensor([move.pool_index for move in kv_moves])
            self.pool_layers()[:, pools] = self.resident()[:, devices].to("cpu")
        if rebuild_moves:
            devices = torch.tensor([move.device_index for move in rebuild_moves])
            pools = torch.tensor([move.pool_index - self.num_pool_kv_blocks for move in rebuild_moves])
            self.pool_activations[:, pools] = self.captured[:, devices]
        return len(kv_moves) * self.num_layers * self.block_layer_bytes

    def restore_kv(self, moves: list[BlockMove]) -> int:
        """Copy pool -> device for K/V-kind moves; returns bytes that crossed the link."""
        if not moves:
            return 0
        devices = torch.tensor([move.device_index for move in moves], device=self.device)
        pools = torch.tensor([move.pool_index for move in moves])
        self.resident()[:, devices] = self.pool_layers()[:, pools].to(self.device)
        return len(moves) * self.num_layers * self.block_layer_bytes

    def restore_activations(self, moves: list[BlockMove]) -> torch.Tensor:
        """Activations [L, k, block_size, h] of rebuild-kind moves, also kept as the blocks' captures."""
        devices = torch.tensor([move.device_index for move in moves])
        pools = torch.tensor([move.pool_index - self.num_pool_kv_blocks for move in moves])
        activations = self.pool_activations[:, pools]
        self.captured[:, devices] = activations
        return activations

    def capture(self, layer: int, slots_cpu: torch.Tensor, hidden: torch.Tensor) -> int:
        """Keep layer inputs of the tokens just computed (rebuild path); returns bytes to the host."""
        self.captured[layer].view(-1, self.hidden_size).index_copy_(0, slots_cpu, hidden.to("cpu", self.captured.dtype))
        return hidden.shape[0] * self.hidden_size * self.captured.element_size()
