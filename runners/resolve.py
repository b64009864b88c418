"""The resolve step: from what the user typed to one frozen run, every decision made once, below the CLI.

`pie bench` (every runner, `--runner sim` included) and `pie tune` parse their flags into a
`BenchArgs` or `TuneArgs` and call `resolve_bench` / `resolve_tune`. Here, and nowhere else:

- the device (auto: cuda when present; the simulator computes on the CPU, whatever it prices);
- the hardware source and the dtype with the reason for it (runners/hardware_source.py);
- the plan, read once and handed to the runner as an object (`RunnerSpec.plan`);
- the engine flags merged into runner options (`--pool-blocks`, `--device-blocks`, `--adaptive`,
  `-O`), the kernel switches taken once from `PIE_DECODE_KERNEL` / `PIE_PREPACK` (recorded as
  engine settings), and which flags apply to which runner;
- the workload, arrivals and sweep, and every sweep point's prepared run (`prepare_points`);
- for tune: the budgets (on a CPU both tiers are RAM) and the online settings.

The result says what it decided and why (`dtype.message()`, `notes`); the CLI renders it and runs
it. Left out: printing, progress and the records (runners/bench.py).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pie_core.capability import DtypeResolution
from pie_core.dtypes import canonical_dtype
from pie_core.errors import BadInput
from runners.base import PreparedRun
from runners.hardware_source import (
    HardwareSource,
    dtype_for_hardware,
    dtype_from_plan,
    dtype_on_device,
    explicit_source,
    saved_source,
)

ENGINE_RUNNERS = ("pie", "sim")
KERNEL_ENVIRONMENT = {"decode_kernel": "PIE_DECODE_KERNEL", "prepack": "PIE_PREPACK"}


@dataclass(frozen=True)
class BenchArgs:
    """`pie bench`'s flags as parsed (strings and numbers, nothing decided yet)."""

    model: str
    workload: dict[str, Any]  # WorkloadSpec fields other than model and seed
    runner: str = "pie"
    plan: Path | None = None
    request_rate: float = math.inf
    burstiness: float = 1.0
    max_concurrency: int | None = None
    goodput: tuple[str, ...] = ()
    pool_blocks: int | None = None
    device_blocks: int | None = None
    options: dict[str, str] = field(default_factory=dict)  # -O KEY=VALUE, keys normalised
    sweep: str | None = None
    adaptive: bool = False
    save_outputs: bool = False
    label: str | None = None
    hardware: str | None = None
    profile: Path | None = None
    dtype: str = "auto"
    device: str = "auto"
    seed: int = 0


@dataclass(frozen=True)
class ResolvedBench:
    settings: Any  # runners.bench.BenchSettings: the first (or only) run
    dtype: DtypeResolution
    source: HardwareSource | None  # what a simulated run prices; None for runs on this machine
    sweep: Any  # runners.bench.Sweep or None
    points: tuple[tuple[dict[str, Any] | None, Any], ...]  # (sweep point, BenchSettings)
    prepared: tuple[PreparedRun, ...]  # one per point, prepared once
    notes: tuple[str, ...] = ()  # warnings about flags that do nothing


def kernel_defaults(options: dict[str, Any], environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Engine kernel settings from the environment (read once, here), unless -O gives them."""
    environ = os.environ if environ is None else environ
    found = {}
    if "decode_kernel" not in options and environ.get(KERNEL_ENVIRONMENT["decode_kernel"]):
        found["decode_kernel"] = environ[KERNEL_ENVIRONMENT["decode_kernel"]].strip().lower()
    if "prepack" not in options and environ.get(KERNEL_ENVIRONMENT["prepack"], "").strip() == "0":
        found["prepack"] = "off"
    return found


def plan_and_dtype(plan_path: Path | None, requested: str, device: str) -> tuple[Any, DtypeResolution]:
    """The plan (read once, here) and the dtype of a run on this device: auto is the plan's, else the device's choice."""
    plan = load_plan(plan_path)
    return plan, dtype_on_device(requested, device) if plan is None else dtype_from_plan(plan, requested, device)


def load_plan(plan_path: Path | None) -> Any:
    """The `pie tune` plan a run names (None without one): the one read of its file in a run."""
    if plan_path is None:
        return None
    from planner.plan import Plan

    return Plan.load(plan_path)


def runner_options(args: Any, runner: str) -> dict[str, Any]:
    """-O options with the engine flags on top (and, for the engine's runners, the kernel defaults). `args`: a
    `BenchArgs`, or anything with its `options`, `plan`, `pool_blocks`, `device_blocks` and `adaptive`."""
    options: dict[str, Any] = dict(args.options)
    flags = {"plan": str(args.plan) if args.plan else None, "num_pool_blocks": args.pool_blocks,
             "num_device_blocks": args.device_blocks, "adaptive": True if args.adaptive else None}
    options.update({key: value for key, value in flags.items() if value is not None})
    if runner in ENGINE_RUNNERS:
        options.update(kernel_defaults(options))
    return options


def resolve_bench(args: BenchArgs) -> ResolvedBench:
    """Every decision of a `pie bench` run; bad input raises here, before any record."""
    from pie_core.device_probe import check_device, resolve_device
    from results.metrics import parse_goodput
    from runners.arrivals import ArrivalSpec
    from runners.bench import BenchSettings, expand_sweep, parse_sweep, prepare_points
    from runners.registry import get_runner
    from runners.workloads import WorkloadSpec

    runner = args.runner.strip().lower()
    get_runner(runner)  # an unknown runner fails before any work
    if runner != "sim" and (args.hardware or args.profile):
        flag = "--hardware" if args.hardware else "--profile"
        raise BadInput(f"{flag} chooses what the simulator prices; runner '{runner}' runs on this machine",
                       f"add --runner sim, or drop {flag}")
    options = runner_options(args, runner)
    device = "cpu" if runner == "sim" else check_device(resolve_device(args.device))
    source = None
    if runner == "sim":  # the dtype of what is simulated, not of this machine
        plan = load_plan(args.plan)
        source = explicit_source(args.hardware, args.profile) or saved_source(args.model, args.dtype)
        options.update(source.options)
        auto = canonical_dtype(args.dtype, allow_auto=True) == "auto"
        dtype = (dtype_from_plan(plan, args.dtype, device) if plan is not None and auto
                 else dtype_for_hardware(source.spec, source.label, args.dtype))
    else:
        plan, dtype = plan_and_dtype(args.plan, args.dtype, device)
    settings = BenchSettings(
        model=args.model, runner=runner, dtype=dtype.dtype, dtype_requested=canonical_dtype(args.dtype, allow_auto=True),
        device=device, seed=args.seed,
        workload=WorkloadSpec(model=args.model, seed=args.seed, **args.workload),
        arrivals=ArrivalSpec(request_rate=args.request_rate, burstiness=args.burstiness, seed=args.seed),
        max_concurrency=args.max_concurrency, save_outputs=args.save_outputs, runner_options=options,
        goodput_slos_ms=parse_goodput(list(args.goodput)), label=args.label, plan=plan)
    given = [flag for flag, value in (("--plan", args.plan), ("--pool-blocks", args.pool_blocks),
                                      ("--device-blocks", args.device_blocks)) if value is not None]
    if given and runner not in ENGINE_RUNNERS:
        raise BadInput(f"{given[0]} configures the Pie engine; runner '{runner}' runs its own",
                       f"use --runner pie (or sim), or drop {given[0]}")
    notes = []
    if math.isinf(args.request_rate) and args.burstiness != 1.0 and not (args.sweep or "").startswith("request_rate"):
        notes.append("--burstiness has no effect without --request-rate: every request is released at once")
    sweep = parse_sweep(args.sweep) if args.sweep else None
    points = expand_sweep(settings, sweep)
    prepared = prepare_points(points)  # every point's settings, before the first runs
    return ResolvedBench(settings, dtype, source, sweep, tuple(points), tuple(prepared), tuple(notes))


@dataclass(frozen=True)
class TuneArgs:
    """`pie tune`'s flags as parsed."""

    model: str
    hardware: str | None = None
    profile: Path | None = None
    gpu_memory_bytes: int | None = None
    cpu_memory_bytes: int | None = None
    workload: str = "sharegpt"
    max_tpot_ms: float | None = None
    dtype: str = "auto"
    block_size: int = 16
    max_num_batched_tokens: int = 2048
    max_num_seqs: int | None = None
    online: bool = False
    num_prompts: int = 64
    window_steps: int = 8
    device: str = "auto"
    seed: int = 0


@dataclass(frozen=True)
class ResolvedTune:
    request: Any  # planner.tune.TuneRequest
    source: HardwareSource
    dtype: DtypeResolution
    online: Any  # runners.online_tuner.OnlineSettings or None
    dtype_said: bool  # announced already (before a quick profile of this machine)


def resolve_tune(args: TuneArgs, announce: Any, say: Any) -> ResolvedTune:
    """Every decision of a `pie tune` run. For this machine, `announce(dtype, device)` says the dtype before a
    quick profile may run and `say(text)` reports the profile. Bad input raises here, before any plan."""
    from pie_core.device_probe import check_device, free_device_bytes, resolve_device
    from pie_core.inputs import check_number
    from pie_core.shapes import resolve_model
    from planner.budgets import Budgets, check_cpu_tiers, default_budgets
    from planner.tune import TuneRequest
    from runners.workloads.stats import workload_stats

    shape = resolve_model(args.model)
    if args.max_tpot_ms is not None:
        check_number(args.max_tpot_ms, "--max-tpot-ms", above=0, hint="give milliseconds per output token, e.g. --max-tpot-ms 50")
    if args.online and args.hardware:
        raise BadInput(f"--online runs the engine on this machine, but --hardware {args.hardware} plans for another one",
                       "drop --hardware (a profile of this machine is used) or pass --profile of this machine")
    online = None
    if args.online:  # checked now, not after a quick profile
        from runners.online_tuner import OnlineSettings

        online = OnlineSettings(num_prompts=args.num_prompts, window_steps=args.window_steps, seed=args.seed)
    stats = workload_stats(args.workload, args.model)
    source = explicit_source(args.hardware, args.profile)
    free_now = None
    if source is not None:
        dtype = dtype_for_hardware(source.spec, source.label, args.dtype)
    else:
        device = check_device(resolve_device(args.device))
        dtype = dtype_on_device(args.dtype, device)
        announce(dtype, device)  # said before a quick profile may run
        from runners.hardware_source import this_machine_source

        source = this_machine_source(args.model, dtype.dtype, device, say)
        if source.spec.device != "cpu" and args.gpu_memory_bytes is None:  # this GPU: what is free now
            free_now = free_device_bytes(device)
    default_gpu, default_cpu = default_budgets(source.spec, free_now)
    budgets = Budgets(args.gpu_memory_bytes or default_gpu, default_cpu if args.cpu_memory_bytes is None else args.cpu_memory_bytes,
                      block_size=args.block_size, max_num_batched_tokens=args.max_num_batched_tokens)
    check_cpu_tiers(budgets, source.spec)
    request = TuneRequest(shape=shape, dtype=dtype.dtype, hardware=source.spec, budgets=budgets, workload=stats,
                          max_tpot_ms=args.max_tpot_ms, max_batch_size=args.max_num_seqs)
    if online is not None:
        import dataclasses

        online = dataclasses.replace(online, device=source.spec.device)
    return ResolvedTune(request, source, dtype, online, dtype_said=args.hardware is None and args.profile is None)
