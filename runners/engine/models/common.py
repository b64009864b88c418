"""What every engine model shares: the attention callback type and the model protocol.

Left out: any model code; each family lives in its own file.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from planner.shapes import ModelShape

# attention(layer_index, q[T, Hq, dh], k[T, Hkv, dh], v[T, Hkv, dh]) -> out[T, Hq, dh]
Attention = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class DecoderModel(Protocol):
    """The seam in docs/engine-interfaces.md; `attention_scale` is what kernels multiply q·kᵀ by."""

    shape: ModelShape
    num_layers: int
    attention_scale: float
    dtype: torch.dtype
    device: torch.device

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor: ...

    def layer_forward(self, index: int, hidden: torch.Tensor, positions: torch.Tensor,
                      attention: Attention) -> torch.Tensor: ...

    def layer_kv_from_input(self, index: int, layer_input: torch.Tensor,
                            positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def logits(self, hidden: torch.Tensor) -> torch.Tensor: ...
