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

from pie_cli.dtype_option import DtypeAutoOpt, announce_dtype
from pie_cli.options import DeviceOpt, JsonOpt, ModelOpt, OutputPathOpt, SeedOpt
from pie_cli.output import Output
from pie_core.errors import BadInput
from pie_core.inputs import writable_file
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
    from planner.tune import make_plan
    from runners.resolve import TuneArgs, resolve_tune

    out = Output(json_out)
    if output is not None:
        from pie_cli.options import DEFAULT_RESULTS_DIR
        from results.store import check_outside_store

        check_outside_store(writable_file(output, "--output"), "--output", DEFAULT_RESULTS_DIR)  # before any work
    resolved = resolve_tune(TuneArgs(
        model=model, hardware=hardware, profile=profile, gpu_memory_bytes=parse_budget(gpu_memory, "--gpu-memory"),
        cpu_memory_bytes=parse_budget(cpu_memory, "--cpu-memory", allow_zero=True), workload=workload,
        max_tpot_ms=max_tpot_ms, dtype=dtype, block_size=block_size, max_num_batched_tokens=max_num_batched_tokens,
        max_num_seqs=max_num_seqs, online=online, num_prompts=num_prompts, window_steps=window_steps, device=device,
        seed=seed), announce=lambda resolution, where: announce_dtype(out, resolution, where), say=out.info)
    plan = make_plan(resolved.request)
    if not resolved.dtype_said and resolved.dtype.requested == "auto":
        out.info(resolved.dtype.message())
    if resolved.online is not None:
        from runners.online_tuner import run_online

        plan = run_online(plan, resolved.online, out)
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
