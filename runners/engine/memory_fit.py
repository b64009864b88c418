"""Whether an engine's weights and KV cache fit the memory free now, said before anything is allocated.

`engine_bytes(config)` counts what `LLMEngine` will allocate: the model's weights, the device KV
tensor (resident blocks of every layer plus the staging slots) and the host side (the pool, and
the activation stores of the rebuild path), as kv_cache.py lays them out. `check_engine_fits`
compares that with this machine's free memory (on a CPU both tiers are RAM) and refuses a config
that cannot fit, saying how many device blocks would, so a plan made for an 80 GB GPU fails in one
line here instead of as an allocator error halfway into a run. Torch-free apart from asking a GPU
what is free.

Left out: activations and allocator slack (a config that fits now can still run out later on a
machine shared with other processes).
"""
from __future__ import annotations

from dataclasses import dataclass

from pie_core.device_probe import free_device_bytes
from pie_core.dtypes import dtype_bytes
from pie_core.errors import BadInput
from pie_core.sizes import format_bytes, free_host_bytes
from runners.engine.block_manager import CacheLayout
from runners.engine.config import EngineConfig


@dataclass(frozen=True)
class EngineBytes:
    weights: int
    device_kv: int  # resident blocks and staging, every layer
    host: int  # pool blocks, and the rebuild path's activation stores
    device_per_block: int  # device bytes of one resident all-layer block
    host_per_block: int  # host bytes one resident block adds (its captured activations, rebuild path only)
    resident_blocks: int  # the config's device blocks less the staging charge
    staging_charge_blocks: int


def engine_bytes(config: EngineConfig) -> EngineBytes:
    shape, element = config.shape, dtype_bytes(config.dtype)
    layout = CacheLayout.from_config(config, shape.num_layers)
    layers = shape.num_layers
    row = config.block_size * shape.kv_bytes_per_token_per_layer(config.dtype)  # one block of one layer, K and V
    activation_row = config.block_size * shape.hidden_size * element if layout.num_pool_rebuild_blocks else 0
    staging = layout.prefetch_depth * layout.staged_blocks_per_slot * row
    pool = layers * (layout.num_pool_kv_blocks * row + layout.num_pool_rebuild_blocks * activation_row)
    return EngineBytes(weights=shape.weight_bytes(config.dtype),
                       device_kv=layers * layout.num_device_blocks * row + staging,
                       host=pool + layers * layout.num_device_blocks * activation_row,
                       device_per_block=layers * row, host_per_block=layers * activation_row,
                       resident_blocks=layout.num_device_blocks, staging_charge_blocks=layout.staging_charge_blocks)


def check_engine_fits(config: EngineConfig) -> EngineBytes:
    """`engine_bytes(config)` if it fits the memory free now; else BadInput saying how many device blocks would."""
    need = engine_bytes(config)
    on_cpu = not config.device.startswith("cuda")
    free_host = free_host_bytes()
    if on_cpu:  # one memory: weights, device KV and the host side together
        total, free, per_block = need.weights + need.device_kv + need.host, free_host, need.device_per_block + need.host_per_block
        where = "memory (on a CPU both KV tiers are RAM)"
    else:
        if need.host > free_host:
            raise BadInput(f"the host side of the KV cache ({config.num_pool_blocks} pool blocks) needs {format_bytes(need.host)} "
                           f"but {format_bytes(free_host)} of memory is free", "give fewer pool blocks (--pool-blocks)")
        total, free, per_block = need.weights + need.device_kv, free_device_bytes(config.device), need.device_per_block
        where = f"memory of {config.device}"
    if total <= free:
        return need
    fits = (free - (total - per_block * need.resident_blocks)) // per_block + need.staging_charge_blocks
    hint = (f"at most {fits} device blocks fit now: give --device-blocks {fits}, or make a plan for this machine "
            f"(`pie tune --model {config.model}` without --hardware)" if fits > need.staging_charge_blocks else
            "lower --pool-blocks, or use a smaller model or dtype")
    raise BadInput(f"{config.shape.name} needs {format_bytes(total)} ({format_bytes(need.weights)} of weights, "
                   f"{format_bytes(need.device_kv)} for {config.num_device_blocks} device KV blocks"
                   + (f", {format_bytes(need.host)} for {config.num_pool_blocks} pool blocks" if on_cpu and need.host else "")
                   + f") but {format_bytes(free)} of {where} is free", hint)
