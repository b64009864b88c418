"""How a request is sampled and when it stops (torch-free, vLLM's field names)."""
from __future__ import annotations

from dataclasses import dataclass

from pie_core.errors import BadInput


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False  # benchmarks set this so output lengths are exactly max_tokens
    stop_token_ids: tuple[int, ...] = ()
    min_tokens: int = 0  # EOS and stop_token_ids end a request only after this many other tokens (sampled, not masked)

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise BadInput(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise BadInput(f"min_tokens must be in 0..max_tokens ({self.max_tokens}), got {self.min_tokens}")
        if self.temperature < 0:
            raise BadInput(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise BadInput(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
