"""`EngineConfig`: everything the Pie engine needs, handed whole to each part (frozen, validated).

Its tunable fields are `EngineSettings`' (settings.py, the one declaration of them); this adds
the model, dtype, device, seed and weights, and the checks that need them.

The engine knows nothing of the planner: a `Plan` is turned into an `EngineConfig` by the
caller. Budgets are in blocks (the planner converts bytes to blocks).

The model's shape is resolved once, at construction (for a local directory that reads its
config.json), and kept beside the fields rather than as one: `dataclasses.asdict`, `repr`,
equality and hashing see the settings only, and `replace` builds a new config, so a changed
`model` is resolved again. `check_request` is what the engine (and the simulator) refuses before
queueing a request. Left out: noticing a config.json edited after construction.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pie_core.dtypes import canonical_dtype
from pie_core.errors import BadInput, suggest
from pie_core.inputs import check_number
from pie_core.shapes import ModelShape, resolve_model
from runners.engine.settings import EngineSettings

DEVICES = ("cpu", "cuda")
# Who copies pooled blocks into staging, per device type; the first is the default (prefetcher.py).
COPY_WORKERS = {"cpu": ("team", "thread"), "cuda": ("stream",)}


@dataclass(frozen=True, kw_only=True)
class EngineConfig(EngineSettings):
    """The engine's settings (`EngineSettings`, every tunable field) and what identifies the run."""

    model: str  # registry name or local Hugging Face directory
    dtype: str = "bfloat16"
    device: str = "cpu"
    seed: int = 0  # for random weights and sampling
    random_weights: bool | None = None  # None: load safetensors if the model is a directory that has them

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        if self.device.split(":")[0] not in DEVICES:
            raise BadInput(f"unknown device '{self.device}'", suggest(self.device, DEVICES))
        super().__post_init__()  # every setting against its declared range
        workers = COPY_WORKERS[self.device.split(":")[0]]
        if self.copy_worker is None:
            object.__setattr__(self, "copy_worker", workers[0])
        elif self.copy_worker not in workers:
            raise BadInput(f"copy_worker '{self.copy_worker}' does not exist on {self.device}",
                           f"use one of: {', '.join(workers)}")
        # Not a dataclass field (asdict would put a whole shape into every described run config); the
        # engine reads it per token, so it must not be resolved (a file read for a directory) per access.
        object.__setattr__(self, "_shape", resolve_model(self.model))
        shape = self.shape
        if self.max_model_len is not None:
            check_number(self.max_model_len, "max_model_len", minimum=1, maximum=shape.max_positions, integer=True,
                         hint=f"{shape.name} has {shape.max_positions} positions")
        if shape.rope_scaling:
            raise BadInput(f"{shape.name} uses '{shape.rope_scaling}' RoPE scaling, which the Pie engine does not implement",
                           "use a model without rope_scaling (e.g. llama-3-8b), or the vllm runner")
        if shape.sliding_window and self.model_len > shape.sliding_window:
            raise BadInput(f"{shape.name} uses sliding-window attention ({shape.sliding_window} tokens), which the Pie engine "
                           f"does not implement; max_model_len {self.model_len} exceeds the window",
                           f"set max_model_len to at most {shape.sliding_window} (attention within the window is exact)")
        if self.rebuild_fraction > 0 and not self.shape.rebuild_saves_bytes:
            raise BadInput(f"rebuild_fraction {self.rebuild_fraction} saves nothing for {self.shape.name}: "
                           f"hidden {self.shape.hidden_size} >= 2 * kv_heads * head_dim {2 * self.shape.kv_dim}",
                           "set rebuild_fraction to 0 for grouped-query models")

    @property
    def settings(self) -> EngineSettings:
        """Just the tunable settings (what a plan stores)."""
        return EngineSettings.from_mapping(dataclasses.asdict(self))

    @property
    def shape(self) -> ModelShape:
        """The model's shape, resolved once when this config was built."""
        return self._shape

    @property
    def copies_overlap(self) -> bool:
        """Whether pool copies can run beside compute; the team copy is part of the layer loop."""
        return self.copy_worker != "team"

    @property
    def model_len(self) -> int:
        return self.max_model_len or self.shape.max_positions

    def replace(self, **changes) -> "EngineConfig":
        """A new config with `changes`, validated and its shape resolved again."""
        return dataclasses.replace(self, **changes)


def check_request(request_id: str, prompt: list[int], max_tokens: int, config: EngineConfig, vocab_size: int,
                  num_device_blocks: int) -> None:
    """What the engine refuses (BadInput) before queueing a request; the simulator refuses the same (torch-free)."""
    if not prompt:
        raise BadInput(f"request '{request_id}' has an empty prompt", "give at least one token id")
    if min(prompt) < 0 or max(prompt) >= vocab_size:
        raise BadInput(f"request '{request_id}': token ids must be in 0..{vocab_size - 1}")
    if len(prompt) >= config.model_len:
        raise BadInput(f"request '{request_id}': prompt of {len(prompt)} tokens leaves no room in the "
                       f"{config.model_len}-token context", "shorten the prompt or raise max_model_len")
    longest = min(len(prompt) + max_tokens, config.model_len)
    blocks = -(-longest // config.block_size)
    if blocks > num_device_blocks:  # a sequence left alone must always finish, whatever the pool limit
        raise BadInput(f"request '{request_id}' may need {blocks} KV blocks ({longest} tokens) but the device holds "
                       f"{num_device_blocks} after staging", "raise the device KV budget or shorten the request")
