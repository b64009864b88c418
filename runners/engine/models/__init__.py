"""`build_model`: an engine model (OPT or Llama family) with loaded or seeded random weights.

The returned object follows `DecoderModel` (models/common.py, docs/engine-interfaces.md):
`embed`, `layer_forward`, `layer_kv_from_input`, `logits`, plus `attention_scale`.
`num_layers` builds only the first layers (the profiler times one layer of a big model
without holding all of it). Random weights are labelled: `model.random_weights` is True.

Left out: tensor parallelism, quantisation, weight offloading.
"""
from __future__ import annotations

from pathlib import Path

import torch

from pie_core.errors import BadInput
from pie_core.shapes import ModelShape
from runners.engine import loader
from runners.engine.models.common import Attention, DecoderModel
from runners.engine.models.llama import LlamaModel
from runners.engine.models.opt import OPTModel

__all__ = ["Attention", "DecoderModel", "build_model"]


def build_model(shape: ModelShape, dtype: str, device: str, seed: int = 0,
                weights_dir: Path | None = None, num_layers: int | None = None,
                prepack: bool | str | None = None) -> DecoderModel:
    """Weights from `weights_dir/*.safetensors` when given, else seeded random weights of `shape`.

    `prepack`: whether bf16 CPU weights are reordered for oneDNN (True), packed for the AMX GEMM ("amx") or
    left plain (False) (runners/engine/kernels.py decides; None lets `Linear` decide by what torch offers).
    """
    layers = shape.num_layers if num_layers is None else num_layers
    if weights_dir is not None and not Path(weights_dir).is_dir():
        raise BadInput(f"weights directory '{weights_dir}' does not exist", "give a local Hugging Face model directory")
    torch_device = torch.device(device)
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"device '{device}' asked for, but CUDA is not available", "use --device cpu")
    if weights_dir is not None:
        weights = loader.load_weights(shape, Path(weights_dir), dtype, device, layers)
    else:
        weights = loader.random_weights(shape, dtype, device, seed, layers)
    model: DecoderModel
    model = (OPTModel if shape.is_opt else LlamaModel)(shape, weights, layers, prepack=prepack)
    model.random_weights = weights_dir is None
    return model
