"""What every engine model shares: the attention callback type and the model protocol.

Left out: any model code; each family lives in its own file.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch

from pie_core.shapes import ModelShape

if TYPE_CHECKING:
    from runners.engine.models.linear import Linear

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

    def prepare_positions(self, positions: torch.Tensor) -> object:
        """What `layer_forward` and `layer_kv_from_input` take as positions for a whole step (RoPE tables once)."""
        ...

    def layer_forward(self, index: int, hidden: torch.Tensor, positions: torch.Tensor,
                      attention: Attention, rows: torch.Tensor | None = None) -> torch.Tensor:
        """One layer over a step's rows. `rows`: when given, the output holds only these rows, in this order (a
        step's last layer needs only the rows it samples from: the out-projection, the MLP and their norms skip the
        other prompt tokens); every row's K and V are still computed and written."""
        ...

    def layer_kv_from_input(self, index: int, layer_input: torch.Tensor,
                            positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    lm_head: Linear  # the vocabulary projection `logits` ends with

    def head_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the lm_head multiplies: the final norm (and projection) of the hidden states."""
        ...

    def logits(self, hidden: torch.Tensor) -> torch.Tensor: ...


def init_common(model, shape: ModelShape, weights: dict[str, torch.Tensor], num_layers: int) -> None:
    """The attributes every engine model sets the same way: shape, layer count, scale, embedding, dtype, device."""
    model.shape, model.num_layers = shape, num_layers
    model.attention_scale = shape.head_dim ** -0.5
    model.embed_tokens = weights["embed_tokens.weight"]
    model.dtype, model.device = model.embed_tokens.dtype, model.embed_tokens.device
