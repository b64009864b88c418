"""Memory budgets and workload length statistics: the inputs the LP plans against.

`Budgets` holds the device and host byte budgets, checked against the machine's physical
memory, and the headroom kept for activations and fragmentation. `WorkloadStats` holds the
mean prompt and output lengths the cost model needs (built-in ShareGPT/Alpaca means from the
vLLM paper, or measured from a workload file, which also gives the decode-weighted context
`decode_weighted_context`: the mean context of a sequence in a decode batch). Left out: loading datasets (runners/workloads).
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from dataclasses import dataclass

from pie_core.errors import BadInput, suggest
from pie_core.inputs import check_block_size, check_number
from pie_core.shapes import ModelShape
from pie_core.sizes import GIB, format_bytes

FRAGMENTATION_FRACTION = 0.05  # of the device budget, kept free for allocator fragmentation


@dataclass(frozen=True)
class Budgets:
    device_memory_bytes: int  # everything on the device: weights, KV, staging, activations
    host_memory_bytes: int  # the CPU pool (KV copies and rebuild activations)
    block_size: int = 16
    max_num_batched_tokens: int = 2048
    fragmentation_fraction: float = FRAGMENTATION_FRACTION

    def __post_init__(self) -> None:
        if self.device_memory_bytes <= 0:
            raise BadInput(f"--gpu-memory must be positive, got {self.device_memory_bytes} bytes")
        if self.host_memory_bytes < 0:
            raise BadInput(f"--cpu-memory must be >= 0, got {self.host_memory_bytes} bytes")
        if not 0 <= self.fragmentation_fraction < 1:
            raise BadInput(f"fragmentation fraction must be in [0, 1), got {self.fragmentation_fraction}")
        check_block_size(self.block_size, "--block-size")  # the engine's rule: a plan pie bench refuses is never made
        check_number(self.max_num_batched_tokens, "--max-num-batched-tokens", minimum=1, integer=True,
                     hint="e.g. --max-num-batched-tokens 2048")

    def check_physical(self, device_memory_bytes: int, host_memory_bytes: int, machine: str) -> None:
        """Budgets beyond what the machine has are bad input."""
        if self.device_memory_bytes > device_memory_bytes:
            raise BadInput(f"--gpu-memory {format_bytes(self.device_memory_bytes)} exceeds the "
                           f"{format_bytes(device_memory_bytes)} of device memory on {machine}",
                           f"give at most {_gib_floor(device_memory_bytes)}")
        if self.host_memory_bytes > host_memory_bytes:
            raise BadInput(f"--cpu-memory {format_bytes(self.host_memory_bytes)} exceeds the "
                           f"{format_bytes(host_memory_bytes)} of host memory on {machine}",
                           f"give at most {_gib_floor(host_memory_bytes)}")

    def usable_device_bytes(self) -> float:
        return self.device_memory_bytes * (1.0 - self.fragmentation_fraction)


def _gib_floor(size: int) -> str:
    """A budget to suggest, rounded down to 0.1 GiB so it is never above `size`: '74.5GiB'."""
    return f"{math.floor(size / GIB * 10) / 10:.1f}GiB"


def activation_workspace_bytes(shape: ModelShape, dtype_bytes: int, batch_size: int, max_num_batched_tokens: int) -> float:
    """Device memory for one iteration's activations: hidden states, MLP intermediate, fp32 logits."""
    tokens = max(batch_size, min(max_num_batched_tokens, 8192))
    per_token = (4 * shape.hidden_size + shape.intermediate_size + 2 * shape.kv_dim) * dtype_bytes
    return tokens * per_token + batch_size * shape.vocab_size * 4


def check_weights_fit(shape: ModelShape, weight_bytes: int, budgets: Budgets) -> None:
    """A model whose weights exceed the device budget cannot be planned (say by how much)."""
    usable = budgets.usable_device_bytes()
    if weight_bytes > usable:
        raise BadInput(f"{shape.name} weights need {format_bytes(weight_bytes)} but the device budget leaves "
                       f"{format_bytes(usable)} after {budgets.fragmentation_fraction:.0%} headroom "
                       f"(short by {format_bytes(weight_bytes - usable)})",
                       "raise --gpu-memory, pick a larger device, or a smaller model")


@dataclass(frozen=True)
class WorkloadStats:
    name: str
    mean_input_tokens: float
    mean_output_tokens: float
    synthetic: bool  # True when the lengths are published means rather than measured from a file
    num_requests: int = 0
    decode_context_tokens: float | None = None  # measured: decode_weighted_context of the requests

    def __post_init__(self) -> None:
        if self.mean_input_tokens < 1 or self.mean_output_tokens < 1:
            raise BadInput(f"workload '{self.name}' needs mean input and output lengths >= 1, "
                           f"got {self.mean_input_tokens} / {self.mean_output_tokens}")
        if self.decode_context_tokens is not None and not self.decode_context_tokens >= 1:
            raise BadInput(f"workload '{self.name}' needs a decode context >= 1, got {self.decode_context_tokens}")

    @property
    def mean_context_tokens(self) -> float:
        """Mean cached tokens of a sequence in a decode batch: measured from the requests when their
        lengths are known (`decode_context_tokens`), else from the means (prompt plus half the
        output, which is exact only when every request has the same lengths)."""
        if self.decode_context_tokens is not None:
            return self.decode_context_tokens
        return self.mean_input_tokens + self.mean_output_tokens / 2


def decode_weighted_context(lengths: Iterable[tuple[int, int]]) -> float | None:
    """Mean context of a sequence in a decode batch, from (prompt, output) lengths; None without a decode step.

    The prefill makes the first output token; the other o - 1 are decode steps at cached contexts
    p + 1 ... p + o - 1 (mean p + o / 2), so each request weighs by o - 1. Long requests stay in the
    batch longer, so this exceeds mean prompt + mean output / 2 whenever the lengths vary.
    """
    steps = weighted = 0.0
    for prompt, output in lengths:
        steps += output - 1
        weighted += (output - 1) * (prompt + output / 2)
    return weighted / steps if steps > 0 else None


BUILTIN_WORKLOADS = {
    "sharegpt": WorkloadStats("sharegpt", 161.0, 338.0, synthetic=True),
    "alpaca": WorkloadStats("alpaca", 19.0, 58.0, synthetic=True),
}


def builtin_workload(name: str) -> WorkloadStats:
    key = name.strip().lower()
    if key not in BUILTIN_WORKLOADS:
        raise BadInput(f"unknown workload '{name}'", suggest(key, BUILTIN_WORKLOADS) + " or a workload file path")
    return BUILTIN_WORKLOADS[key]


def default_budgets(hardware: Any, free_device_bytes: int | None = None) -> tuple[int, int]:
    """(device, pool) bytes when `pie tune` is given neither: the device's memory (no more than
    `free_device_bytes`, what is free now, when planning for this machine's GPU: a CUDA context and
    other processes hold some) and half the host's on a GPU; a quarter of RAM each on a CPU, where
    both tiers are RAM."""
    if hardware.device == "cpu":
        return hardware.host_memory_bytes // 4, hardware.host_memory_bytes // 4
    device = hardware.device_memory_bytes if free_device_bytes is None else min(hardware.device_memory_bytes, free_device_bytes)
    return device, hardware.host_memory_bytes // 2


def check_cpu_tiers(budgets: Budgets, hardware: Any) -> None:
    """On a CPU both KV tiers are RAM: the device and pool budgets together must fit the machine's RAM."""
    total = budgets.device_memory_bytes + budgets.host_memory_bytes
    if hardware.device == "cpu" and total > hardware.host_memory_bytes:
        raise BadInput(f"--gpu-memory plus --cpu-memory ({total / 2**30:.1f} GiB) exceed this machine's "
                       f"{hardware.host_memory_bytes / 2**30:.1f} GiB of RAM (on a CPU both tiers are RAM)",
                       "lower one of them")
