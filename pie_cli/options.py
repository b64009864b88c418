"""Options shared by several commands, declared once as `Annotated` aliases (each command sets its default).

`--dtype auto` lives in pie_cli/dtype_option.py with its resolution; what `auto` falls back to
differs by command only in where a dtype can come from (a plan, a profile, a preset), which each
command's docstring says. Also here: how a repeated option is read (`check_repeated_options`,
`parse_runner_options`): the same value twice is harmless, two different values are bad input naming both.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from pie_core.errors import BadInput
from runners.hardware_source import DEFAULT_PROFILES_DIR  # noqa: F401 - declared with the decisions that use it

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout; human text goes to stderr.")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="A registry name (e.g. opt-125m, llama-3-8b; see `pie models`) or a local Hugging Face directory.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N, or auto (cuda when available).")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float16, bfloat16 or float32.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for random weights, workloads and arrivals.")]
OutputPathOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write the result file.")]
ResultsDirOpt = Annotated[Path, typer.Option("--results-dir", help="Results store directory.")]

DEFAULT_RESULTS_DIR = Path(".pie/results")


def parse_runner_options(items: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """`-O KEY=VALUE` items as ({key: text}, {key: how the user wrote it}); each runner parses the text by the
    option's declared type. Keys differing only in '-' and '_' are one key: two different values for it are bad input."""
    options: dict[str, str] = {}
    written: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"runner option '{item}' is not KEY=VALUE", "e.g. --option num_pool_blocks=256")
        key, value = key.strip().replace("-", "_"), value.strip()
        if key in options and options[key] != value:
            raise BadInput(f"-O {written[key]} and -O {item.strip()} give {key} two different values", f"give -O {key} once")
        options[key], written[key] = value, f"{item.strip()}"
    return options, written


def same_option_value(flag_value: object, text: str) -> bool:
    """Whether a flag's typed value and an -O text say the same thing (32 and '32', True and 'true')."""
    if isinstance(flag_value, bool):
        return text.lower() in (("1", "true", "yes", "on") if flag_value else ("0", "false", "no", "off"))
    return str(flag_value).strip().lower() == text.strip().lower()


def check_repeated_options(command: Any, args: list[str]) -> None:
    """A single-valued option given twice with different values (`--sweep a=1 --sweep b=2`, `-n 4 --num-prompts 8`)
    is bad input naming both; the same value twice is harmless. `command` is the click command that parses `args`."""
    single = {}
    for param in getattr(command, "params", ()):
        if param.param_type_name == "option" and not param.multiple and not param.is_flag and not param.count:
            for name in (*param.opts, *param.secondary_opts):
                single[name] = param
    seen: dict[str, tuple[str, str]] = {}
    index = 0
    while index < len(args):
        token = args[index]
        index += 1
        if token == "--":
            break
        name, value = token, None
        if token.startswith("--") and "=" in token:
            name, value = token.split("=", 1)
        elif not token.startswith("--") and token.startswith("-") and len(token) > 2 and token[:2] in single:
            name, value = token[:2], token[2:]
        if name not in single:
            continue
        if value is None:
            if index >= len(args):
                return  # click says the value is missing
            value = args[index]
            index += 1
        param = single[name]
        if param.name in seen and seen[param.name][1] != value:
            first_name, first_value = seen[param.name]
            raise BadInput(f"{first_name} {first_value} and {name} {value} conflict: the option was given twice with "
                           "different values", f"give {name} once")
        seen.setdefault(param.name, (name, value))
