"""`EngineSettings`: the one declaration of the Pie engine's tunable settings (torch-free).

Each setting is one dataclass field whose metadata gives its kind, range, help text, an example
and the names `--sweep` knows it by. Everything else derives from the fields:

- `EngineConfig` (config.py) is these settings plus what identifies a run (model, dtype,
  device, seed, weights);
- a `Plan` (planner/plan.py) stores them as its `settings`, and the planner fills them in;
- `-O KEY=VALUE` options of the pie and sim runners are parsed by `option_types()`;
- `--sweep` keys for them come from `sweep_keys()`.

So adding a setting is adding one field here. Ranges are checked once, in `__post_init__`;
what depends on the device (which copy workers exist) or on the model (the context length, a
rebuild split that saves nothing) is checked by `EngineConfig`. Left out: runner options that
are not engine settings (the adaptive controller's, the plan's path; runners/pie_runner.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pie_core.errors import BadInput, suggest
from pie_core.inputs import OptionType, check_block_size, check_number

DECODE_KERNELS = ("auto", "c", "torch", "triton")  # auto: what the capability record selects (runners/engine/kernels.py)
PREPACK_CHOICES = ("auto", "onednn", "off")  # auto: the AMX GEMM or oneDNN-prepacked bf16 weights, as the record selects


def setting(default: Any, kind: type, help: str, example: str, *, minimum: float | None = None,
            maximum: float | None = None, choices: tuple[str, ...] = (), sweep: tuple[str, ...] = (),
            block_size: bool = False) -> Any:
    """A settings field with the metadata the option parser, the sweep and the range check read."""
    return field(default=default, metadata={"kind": kind, "help": help, "example": example, "minimum": minimum,
                                            "maximum": maximum, "choices": choices, "sweep": sweep,
                                            "block_size": block_size})


@dataclass(frozen=True, kw_only=True)
class EngineSettings:
    block_size: int = setting(16, int, "tokens per KV block (a power of two)", "16", block_size=True)
    num_device_blocks: int = setting(1024, int, "KV blocks on the device, staging included", "1024", minimum=1,
                                     sweep=("device_blocks",))
    num_pool_blocks: int = setting(0, int, "KV blocks in the CPU pool (0: no pool)", "256", minimum=0,
                                   sweep=("pool_blocks",))
    prefetch_depth: int = setting(2, int, "staging slots: copies for layers i+1..i+d overlap layer i", "2", minimum=1)
    copy_worker: str | None = setting(None, str, "who copies pooled blocks: cpu team|thread, cuda stream (default: "
                                      "the device's first)", "team")
    rebuild_fraction: float = setting(0.0, float, "share of the pooled context kept as activations and rebuilt (KVPR)",
                                      "0.5", minimum=0, maximum=1)
    max_num_batched_tokens: int = setting(2048, int, "tokens per iteration (prefill chunks + decodes)", "2048",
                                          minimum=1)
    max_num_seqs: int = setting(64, int, "running sequences at once", "32", minimum=1)
    max_model_len: int | None = setting(None, int, "context length (default: the model's positions)", "2048",
                                        minimum=1)
    decode_kernel: str = setting("auto", str, "decode attention: auto (the capability record's choice), c, torch or "
                                 "triton", "torch", choices=DECODE_KERNELS)
    prepack: str = setting("auto", str, "GEMM weights: auto (AMX tiles or oneDNN-prepacked, as selected), onednn "
                           "(never the AMX GEMM) or off", "off",
                           choices=PREPACK_CHOICES)

    def __post_init__(self) -> None:
        for item in dataclasses.fields(EngineSettings):
            value, meta = getattr(self, item.name), item.metadata
            if value is None and item.default is None:
                continue
            if meta["block_size"]:
                check_block_size(value)
            elif meta["choices"]:
                if value not in meta["choices"]:
                    raise BadInput(f"{item.name} '{value}' is not one of {', '.join(meta['choices'])}",
                                   suggest(str(value), meta["choices"]))
            elif meta["kind"] in (int, float):
                check_number(value, item.name, minimum=meta["minimum"], maximum=meta["maximum"],
                             integer=meta["kind"] is int, hint=f"e.g. {item.name} {meta['example']}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> "EngineSettings":
        """The settings among `values` (other keys ignored), checked."""
        return cls(**{name: values[name] for name in setting_names() if name in values})


def setting_names() -> tuple[str, ...]:
    return tuple(item.name for item in dataclasses.fields(EngineSettings))


def option_types() -> dict[str, OptionType]:
    """`-O KEY=VALUE` parsers of every setting (ranges are `EngineSettings`' own checks)."""
    return {item.name: OptionType(item.metadata["kind"], example=item.metadata["example"])
            for item in dataclasses.fields(EngineSettings)}


def sweep_keys() -> dict[str, tuple[str, type]]:
    """`--sweep` key -> (setting, kind), for each setting under its own name and its aliases."""
    keys: dict[str, tuple[str, type]] = {}
    for item in dataclasses.fields(EngineSettings):
        for key in (item.name, *item.metadata["sweep"]):
            keys[key] = (item.name, item.metadata["kind"])
    return keys
