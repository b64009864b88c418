"""`pie tune`: plan the CPU pool for a model, machine and workload; refine it online with --online.

Parses options, builds a `TuneRequest` (planner/tune.py), renders the `Plan` table and its
explanation, writes the plan file. With --online it hands the plan to runners/online_tuner.py,
which runs the Pie engine and the hill-climber and reports each move. Nothing else lives here.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer

from pie_cli.dtype_option import DtypeAutoOpt, announce_dtype, resolve_dtype_option
from pie_cli.options import DeviceOpt, JsonOpt, ModelOpt, OutputPathOpt, SeedOpt
from pie_cli.output import Output
from pie_core.errors import BadInput
from pie_core.inputs import check_number, writable_file
from pie_core.json_files import save_keeping
from pie_core.sizes import GIB, parse_size


HardwareOpt = Annotated[Optional[str], typer.Option("--hardware", help="A datasheet preset: h100-pcie, h200, a100-pcie, gh200, l4 (figures to replace with a `pie profile`).")]
ProfileOpt = Annotated[Optional[Path], typer.Option("--profile", help="A HardwareProfile JSON from `pie profile` (default: this host's saved profile for the model, else a quick profile, which is saved).")]
GpuMemoryOpt = Annotated[Optional[str], typer.Option("--gpu-memory", help="Device memory budget, e.g. 80GB or 70GiB (default: all device memory; a quarter of RAM on a CPU).")]
CpuMemoryOpt = Annotated[Optional[str], typer.Option("--cpu-memory", help="CPU pool budget, e.g. 200GB, or 0GB for no pool (default: half of host memory; a quarter of RAM on a CPU).")]
WorkloadOpt = Annotated[str, typer.Option("--workload", help="sharegpt or alpaca (published mean lengths), or a workload FILE (ShareGPT/Alpaca JSON or JSONL).")]
MaxTpotOpt = Annotated[Optional[float], typer.Option("--max-tpot-ms", help="Latency bound: the plan's predicted time per output token must not exceed this.")]
BlockSizeOpt = Annotated[int, typer.Option("--block-size", help="Tokens per KV block.")]
MaxBatchedOpt = Annotated[int, typer.Option("--max-num-batched-tokens", help="Tokens per engine iteration (prefill chunks + decodes).")]
MaxSeqsOpt = Annotated[Optional[int], typer.Option("--max-num-seqs", help="Cap on the batch limit the planner may choose.")]
OnlineOpt = Annotated[bool, typer.Option("--online", help="Run the plan on the Pie engine and let the hill-climber refine the pool size live.")]
OnlineRequestsOpt = Annotated[int, typer.Option("--num-prompts", help="--online: requests kept in flight per measurement window.")]
AdaptiveOpt = Annotated[bool, typer.Option("--adaptive", help="Mark the plan so `pie bench --plan` moves the pool limit while serving, within the planned pool.")]
OnlineWindowOpt = Annotated[int, typer.Option("--window-steps", help="--online: engine iterations measured per pool size.")]


def parse_budget(text: str | None, option: str, allow_zero: bool = False) -> int | None:
    """A memory budget flag in bytes (`pie_core.sizes.parse_size`: '80GB', '70GiB'), None when not given."""
    return None if text is None else parse_size(text, option, allow_zero)


def resolve_hardware(hardware: str | None, profile: Path | None, model: str, dtype: str, device: str, out: Output):
    """(HardwareSpec, dtype, say): `dtype` "auto" becomes the preset's, the profile's, or this machine's choice;
    `say()` tells the user once (called when the plan is made, so bad input stays one line)."""
    from pie_core.capability import DeviceCapability, resolve_dtype
    from planner.hardware import from_profile, preset
    from profiler.hardware_profile import HardwareProfile

    if hardware and profile:
        raise BadInput("--hardware and --profile both given", "use a preset or a measured profile, not both")
    if hardware:
        hw = preset(hardware)
        resolution = resolve_dtype(dtype, DeviceCapability.from_dict(hw.capability))
        return hw, resolution.dtype, lambda: resolution.requested == "auto" and out.info(resolution.message())
    if profile:
        hw = from_profile(HardwareProfile.load(profile), source=f"profile '{profile}'")
        if dtype == "auto":
            return hw, hw.profile_dtype, lambda: out.info(f"dtype {hw.profile_dtype} (auto: the profile's)")
        return hw, dtype, lambda: None
    resolution = resolve_dtype_option(dtype, device)
    announce_dtype(out, resolution, device)  # said before a quick profile may run
    return _this_machine(model, resolution.dtype, device, out), resolution.dtype, lambda: None


def _this_machine(model: str, dtype: str, device: str, out: Output):
    """This machine's saved profile of `device` for `model` in `dtype`, or a quick one taken now (and saved)."""
    from pie_cli.options import DEFAULT_PROFILES_DIR
    from planner.hardware import from_profile
    from profiler.saved_profiles import saved_or_quick_profile

    profile, source = saved_or_quick_profile(DEFAULT_PROFILES_DIR, model, dtype, device, out.info)
    return from_profile(profile, source=source)


def tune(model: ModelOpt, hardware: HardwareOpt = None, profile: ProfileOpt = None, gpu_memory: GpuMemoryOpt = None,
         cpu_memory: CpuMemoryOpt = None, workload: WorkloadOpt = "sharegpt", max_tpot_ms: MaxTpotOpt = None,
         dtype: DtypeAutoOpt = "auto", block_size: BlockSizeOpt = 16, max_num_batched_tokens: MaxBatchedOpt = 2048,
         max_num_seqs: MaxSeqsOpt = None, online: OnlineOpt = False, num_prompts: OnlineRequestsOpt = 64,
         window_steps: OnlineWindowOpt = 8, adaptive: AdaptiveOpt = False, device: DeviceOpt = "auto", seed: SeedOpt = 0, output: OutputPathOpt = None, json_out: JsonOpt = False) -> None:
    """Plan the CPU pool: pool size, copy/rebuild split, batch limit, predicted throughput and latency.

    --dtype auto takes the profile's dtype, or for a preset bfloat16 from compute capability 8.0 (else
    float16); without either, what this machine multiplies natively. --device matters only without
    --hardware or --profile: it is the device profiled and planned for.

    Example: pie tune --model opt-30b --hardware h100-pcie --cpu-memory 200GB --output plan.json
    """
    from pie_core.dtypes import canonical_dtype
    from pie_core.shapes import resolve_model
    from pie_core.device_probe import check_device, resolve_device
    from planner.budgets import Budgets, default_budgets
    from planner.tune import TuneRequest, make_plan
    from runners.workloads.stats import workload_stats

    out = Output(json_out)
    if output is not None:
        from pie_cli.options import DEFAULT_RESULTS_DIR
        from results.store import check_outside_store

        check_outside_store(writable_file(output, "--output"), "--output", DEFAULT_RESULTS_DIR)  # before any work
    shape = resolve_model(model)
    gpu_bytes, cpu_bytes = parse_budget(gpu_memory, "--gpu-memory"), parse_budget(cpu_memory, "--cpu-memory", allow_zero=True)
    if max_tpot_ms is not None:
        check_number(max_tpot_ms, "--max-tpot-ms", above=0, hint="give milliseconds per output token, e.g. --max-tpot-ms 50")
    if online and hardware:
        raise BadInput(f"--online runs the engine on this machine, but --hardware {hardware} plans for another one",
                       "drop --hardware (a profile of this machine is used) or pass --profile of this machine")
    online_settings = None
    if online:  # checked now, not after a quick profile
        from runners.online_tuner import OnlineSettings

        online_settings = OnlineSettings(num_prompts=num_prompts, window_steps=window_steps, seed=seed)
    stats = workload_stats(workload, model)
    if hardware is None and profile is None:
        device = check_device(resolve_device(device))
    hw, dtype, say_dtype = resolve_hardware(hardware, profile, model, canonical_dtype(dtype, allow_auto=True), device, out)
    free_now = None
    if hardware is None and profile is None and hw.device != "cpu" and gpu_bytes is None:  # this GPU: what is free now
        from pie_core.device_probe import free_device_bytes

        free_now = free_device_bytes(device)
    default_gpu, default_cpu = default_budgets(hw, free_now)
    budgets = Budgets(gpu_bytes or default_gpu, default_cpu if cpu_bytes is None else cpu_bytes, block_size=block_size,
                      max_num_batched_tokens=max_num_batched_tokens)
    if hw.device == "cpu" and budgets.device_memory_bytes + budgets.host_memory_bytes > hw.host_memory_bytes:
        raise BadInput(f"--gpu-memory plus --cpu-memory ({(budgets.device_memory_bytes + budgets.host_memory_bytes) / GIB:.1f} GiB) "
                       f"exceed this machine's {hw.host_memory_bytes / GIB:.1f} GiB of RAM (on a CPU both tiers are RAM)",
                       "lower one of them")
    plan = make_plan(TuneRequest(shape=shape, model=model, dtype=dtype, hardware=hw, budgets=budgets, workload=stats,
                                 max_tpot_ms=max_tpot_ms, max_batch_size=max_num_seqs))
    say_dtype()
    if online_settings is not None:
        from runners.online_tuner import run_online

        plan = run_online(plan, dataclasses.replace(online_settings, device=hw.device), out)
    if adaptive:
        if plan.settings.num_pool_blocks < 1:
            raise BadInput("--adaptive sizes the pool within the plan's, but this plan has no pool",
                           "give the pool room with --cpu-memory, or drop --adaptive")
        plan = dataclasses.replace(plan, adaptive=True)
    if output:
        written = save_keeping(plan.save, output, "plan")
        out.info(f"plan written to {written}")
    if json_out:
        out.json(plan)
        return
    render(plan, out)


def render(plan, out: Output) -> None:
    p, b, s = plan.predicted, plan.baseline, plan.settings
    rows = [
        ["batch limit (max_num_seqs)", s.max_num_seqs, b.batch_size],
        ["device KV (GiB)", p.device_kv_bytes / GIB, b.device_kv_bytes / GIB],
        ["CPU pool (GiB)", p.pool_bytes / GIB, 0.0],
        ["pooled share of the batch's KV", f"{p.pooled_fraction:.1%}", "0%"],
        ["rebuilt share of the pool", f"{s.rebuild_fraction:.0%}", "-"],
        ["prefetch depth", s.prefetch_depth, "-"],
        ["staging (MiB)", p.staging_bytes / 1024**2, 0.0],
        ["predicted output tok/s", p.output_tok_s, b.output_tok_s],
        ["predicted TPOT (ms)", p.tpot_ms, b.tpot_ms],
        ["predicted stall per step (ms)", p.stall_ms_per_step, b.stall_ms_per_step],
    ]
    out.table(f"Plan for {plan.model} ({plan.dtype}), workload {plan.workload['name']}"
              f"{' (synthetic lengths)' if plan.workload['synthetic'] else ''}", ["", "with pool", "no pool"], rows)
    out.data.print(f"hardware: {plan.hardware['label']}")
    out.data.print(f"engine: {s.num_device_blocks} device + {s.num_pool_blocks} pool blocks of {s.block_size} tokens, "
                   f"max_num_seqs {s.max_num_seqs}, prefetch depth {s.prefetch_depth}, rebuild fraction {s.rebuild_fraction:g}"
                   + ("; adaptive: `pie bench --plan` moves the pool limit within it" if plan.adaptive else ""))
    for line in plan.explanation:
        out.data.print(f"- {line}")
    solver = plan.solver
    out.info(f"LP: {solver['candidates']} candidates, {solver['lp_variables']} variables, {solver['lp_solves']} CBC solves "
             f"({solver['lp_solve_ms']:.0f} ms, slowest {solver['lp_solve_ms_max']:.0f} ms; +{solver['lp_build_ms']:.0f} ms to build); "
             f"binding: {', '.join(plan.binding) or 'none'}")
    if plan.online:
        online = plan.online
        out.data.print(f"- online: measured best pool {online['best_pool_blocks']} blocks at {online['best_output_tok_s']:,.1f} tok/s "
                       f"after {online['num_moves']} moves (plan's start: {online['start_pool_blocks']} blocks)")
