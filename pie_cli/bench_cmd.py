"""`pie bench`: run a workload on a runner, show progress, print vLLM-style metrics, store a record.

Parses options into `runners.bench.BenchSettings` and renders; the work is in runners/bench.py.
Defaults: runner pie, workload sharegpt (a labelled synthetic ShareGPT-like workload without
--dataset-path), 64 prompts, all requests at once (request rate inf), dtype auto (the plan's with
--plan, else what the device multiplies natively; every runner gets the same one), device auto
(cuda when available), seed 0, model opt-125m (seeded random weights: no download).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from pie_cli.dtype_option import DtypeAutoOpt, announce_dtype
from pie_cli.options import (DEFAULT_RESULTS_DIR, DeviceOpt, JsonOpt, ModelOpt, ResultsDirOpt, SeedOpt, parse_runner_options,
                             same_option_value)
from pie_cli.sim_option import SimHardwareOpt, SimProfileOpt
from pie_cli.output import Output, print_error_json
from pie_core.errors import BadInput
from pie_core.inputs import check_number, writable_dir
from results.metrics import summary_rows

TELEMETRY_ROWS = (("stall_fraction", "Stall fraction"), ("h2d_bytes", "Pool -> device bytes"),
                  ("d2h_bytes", "Device -> pool bytes"), ("peak_pool_blocks_used", "Peak pool blocks used"),
                  ("peak_device_blocks_used", "Peak device blocks used"), ("num_preemptions", "Preemptions"),
                  ("rebuilt_tokens", "Rebuilt tokens"))


ENGINE_FLAGS = {"plan": "--plan", "num_pool_blocks": "--pool-blocks", "num_device_blocks": "--device-blocks",
                "adaptive": "--adaptive"}


def parse_options(items: list[str], flags: dict[str, Any], sweep: str | None) -> dict[str, str]:
    """`-O KEY=VALUE` items as {key: text} (pie_cli/options.py); an engine flag or the --sweep key that gives one of
    them another value is bad input naming both (the resolve step puts the flags on top of the options)."""
    from runners.bench import SWEEP_TARGETS

    options, written = parse_runner_options(items)
    for key, value in flags.items():
        if value is None:
            continue
        flag = ENGINE_FLAGS[key] + ("" if isinstance(value, bool) else f" {value}")
        if key in options and not same_option_value(value, options[key]):
            raise BadInput(f"{flag} and -O {written[key]} give {key} two different values", f"give {key} once")
        written[key] = flag
    target = SWEEP_TARGETS.get((sweep or "").partition("=")[0].strip().lower().replace("-", "_"))
    if target and target[0] == "options" and target[1] in written:
        given = written[target[1]] if written[target[1]].startswith("--") else f"-O {written[target[1]]}"
        raise BadInput(f"--sweep {sweep} and {given} both set {target[1]}",
                       f"drop one: the sweep gives {target[1]} each of its values in turn")
    return options


def bench(
    model: ModelOpt = "opt-125m",
    workload: Annotated[str, typer.Option("--workload", "-w", help="sharegpt, alpaca, jsonl, burstgpt (need --dataset-path; sharegpt/alpaca fall back to labelled synthetic lengths), fixed, uniform or phases (synthetic).")] = "sharegpt",
    dataset_path: Annotated[Optional[Path], typer.Option("--dataset-path", help="The dataset file (never downloaded).")] = None,
    runner: Annotated[str, typer.Option("--runner", "-r", help="pie, hf, vllm, openai, or sim (the Pie scheduler on a virtual clock; --hardware or --profile).")] = "pie",
    plan: Annotated[Optional[Path], typer.Option("--plan", help="A `pie tune` plan for the pie runner.")] = None,
    num_prompts: Annotated[int, typer.Option("--num-prompts", "-n", help="Requests to send (1 to 1,000,000).")] = 64,
    request_rate: Annotated[float, typer.Option("--request-rate", help="Requests per second (Poisson/gamma); inf sends all at once.")] = math.inf,
    burstiness: Annotated[float, typer.Option("--burstiness", help="Gamma shape of arrival gaps: 1 = Poisson, < 1 burstier.")] = 1.0,
    max_concurrency: Annotated[Optional[int], typer.Option("--max-concurrency", help="At most this many requests in flight.")] = None,
    output_len: Annotated[Optional[int], typer.Option("--output-len", help="Fix every request's output length.")] = None,
    input_len: Annotated[Optional[int], typer.Option("--input-len", help="Prompt length for fixed/uniform workloads (default 128).")] = None,
    range_ratio: Annotated[float, typer.Option("--range-ratio", help="uniform workload: lengths within +-this fraction.")] = 0.5,
    goodput: Annotated[Optional[list[str]], typer.Option("--goodput", help="SLOs in ms, e.g. --goodput ttft:500 --goodput tpot:50.")] = None,
    pool_blocks: Annotated[Optional[int], typer.Option("--pool-blocks", help="pie: KV blocks in the CPU pool (overrides the plan).")] = None,
    device_blocks: Annotated[Optional[int], typer.Option("--device-blocks", help="pie: KV blocks on the device (overrides the plan).")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-O", help="Runner option KEY=VALUE (repeatable), parsed by the option's declared type, e.g. -O max_num_seqs=32.")] = None,
    sweep: Annotated[Optional[str], typer.Option("--sweep", help="One record per value: e.g. request_rate=1,2,4 or pool_blocks=0,256,512.")] = None,
    adaptive: Annotated[bool, typer.Option("--adaptive", help="pie: move the pool limit while serving (within --pool-blocks), from live stall and queue signals.")] = False,
    time_scale: Annotated[float, typer.Option("--time-scale", help="burstgpt: multiply the trace's gaps (0.1 = ten times faster).")] = 1.0,
    trace_start: Annotated[Optional[float], typer.Option("--trace-start", help="burstgpt: window start, in the trace's seconds.")] = None,
    trace_duration: Annotated[Optional[float], typer.Option("--trace-duration", help="burstgpt: window length, in the trace's seconds.")] = None,
    trace_model: Annotated[Optional[str], typer.Option("--trace-model", help="burstgpt: keep rows of this Model (e.g. ChatGPT).")] = None,
    trace_log_type: Annotated[Optional[str], typer.Option("--trace-log-type", help="burstgpt: keep rows of this Log Type (e.g. 'Conversation log').")] = None,
    save_outputs: Annotated[bool, typer.Option("--save-outputs", help="Store generated token ids per request.")] = False,
    label: Annotated[Optional[str], typer.Option("--label", help="A label to select runs by later.")] = None,
    hardware: SimHardwareOpt = None,
    profile: SimProfileOpt = None,
    dtype: DtypeAutoOpt = "auto",
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    results_dir: ResultsDirOpt = DEFAULT_RESULTS_DIR,
    json_out: JsonOpt = False,
) -> None:
    """Benchmark a runner on a workload; print throughput and latency like `vllm bench serve`.

    Examples:
      pie bench --workload sharegpt --dataset-path ShareGPT_V3_unfiltered_cleaned_split.json --model opt-125m --runner pie --request-rate 4
      pie bench --workload burstgpt --dataset-path BurstGPT_1.csv --trace-duration 600 --time-scale 0.1 --num-prompts 500
      pie bench --workload phases --device-blocks 177 --pool-blocks 768 --adaptive
    """
    from results.store import ResultsStore
    from runners.bench import BenchInterrupted, check_failures, run_bench
    from runners.resolve import BenchArgs, resolve_bench

    out = Output(json_out)
    writable_dir(results_dir, "--results-dir")  # before any work, not when the record is opened
    if max_concurrency is not None:
        check_number(max_concurrency, "--max-concurrency", minimum=1, integer=True, hint="e.g. --max-concurrency 8, or leave it out")
    workload_fields = {"name": workload.strip().lower(), "dataset_path": dataset_path, "num_prompts": num_prompts,
                       "output_len": output_len, "input_len": input_len, "range_ratio": range_ratio,
                       "time_scale": time_scale, "trace_start": trace_start, "trace_duration": trace_duration,
                       "trace_model": trace_model, "trace_log_type": trace_log_type}
    resolved = resolve_bench(BenchArgs(
        model=model, workload=workload_fields, runner=runner, plan=plan, request_rate=request_rate, burstiness=burstiness,
        max_concurrency=max_concurrency, goodput=tuple(goodput or ()), pool_blocks=pool_blocks, device_blocks=device_blocks,
        options=parse_options(option or [], {"plan": str(plan) if plan else None, "num_pool_blocks": pool_blocks,
                                             "num_device_blocks": device_blocks, "adaptive": True if adaptive else None},
                              sweep), sweep=sweep, adaptive=adaptive, save_outputs=save_outputs, label=label,
        hardware=hardware, profile=profile, dtype=dtype, device=device, seed=seed))
    for note in resolved.notes:
        out.warn(note)
    parsed_sweep = resolved.sweep
    store = ResultsStore(results_dir)
    outcomes: list = []
    def say_dtype() -> None:  # once, when the first run starts (after its input is checked)
        announce_dtype(out, resolved.dtype, resolved.settings.device)

    try:
        for index, ((point, point_settings), prepared) in enumerate(zip(resolved.points, resolved.prepared)):
            outcomes.append(_run_point(out, store, point_settings, parsed_sweep, point, run_bench, prepared,
                                       say_dtype if index == 0 else None))
            note = check_failures(outcomes[-1])  # all failed: RuntimeFailure, after the points so far are printed
            if note:
                out.warn(note)
    except BenchInterrupted as interrupted:
        if json_out:  # one JSON object: the interruption, the partial record, the points that finished
            print_error_json("interrupted", "the finished requests are kept in the record, marked incomplete", 130,
                             {**_json_runs(parsed_sweep, outcomes), "record_path": interrupted.record_path,
                              "num_requests": interrupted.num_requests})
        out.info(f"[yellow]interrupted[/yellow]: {interrupted.num_requests} finished request(s) kept in "
                 f"{interrupted.record_path} (marked incomplete)" if interrupted.record_path else
                 "[yellow]interrupted[/yellow] before any request finished; no record was kept")
        raise typer.Exit(130) from None
    except Exception as err:
        if json_out and outcomes:  # the error's JSON object (pie_cli/app.py) carries the points that finished
            err.json_details = _json_runs(parsed_sweep, outcomes)
        raise
    _print_json(out, json_out, parsed_sweep, outcomes)
    if parsed_sweep is not None and not json_out:
        _sweep_table(out, parsed_sweep, outcomes)


def _json_runs(sweep: Any, outcomes: list) -> dict[str, Any]:
    """What an error's JSON object carries of the runs that finished: the run itself (its record_path, summary, ...),
    or a sweep's finished points."""
    if not outcomes:
        return {}
    payloads = [_payload(o) for o in outcomes]
    return payloads[0] if sweep is None else {"sweep_id": sweep.sweep_id, "key": sweep.key, "runs": payloads}


def _print_json(out: Output, json_out: bool, sweep: Any, outcomes: list) -> None:
    if not json_out or not outcomes:
        return
    payloads = [_payload(o) for o in outcomes]
    out.json(payloads[0] if sweep is None else {"sweep_id": sweep.sweep_id, "key": sweep.key, "runs": payloads})


def _run_point(out: Output, store: Any, settings: Any, sweep: Any, point: dict | None, run_bench: Any, prepared: Any,
               say_dtype: Any = None) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=out.messages, transient=True)
    state = {"task": None, "tokens": 0, "failed": 0}

    def on_start(info: Any, config: dict, path: Path) -> None:
        if say_dtype is not None:
            say_dtype()
        kind = "SYNTHETIC " if info.synthetic else ""
        where = f" {point}" if point else ""
        out.info(f"{settings.runner} runner{where}: {kind}workload {info.name} ({info.source}); {info.num_requests} requests, "
                 f"mean {info.mean_prompt_len:.0f} prompt / {info.mean_output_len:.0f} output tokens")
        out.info(f"tokens: {info.tokenizer}")
        if (info.num_malformed or info.num_filtered) and info.name != "burstgpt":  # a trace says its own summary line
            out.info(f"skipped {info.num_malformed} malformed and {info.num_filtered} filtered entries")
        for note in info.notes:
            out.warn(note)
        if config.get("server_metrics_note"):
            out.info(config["server_metrics_note"])
        if config.get("random_weights"):
            out.warn(f"{settings.model}: seeded random weights (seed {settings.seed}); throughput is real, text is not")
        out.info(f"record: {path}")
        state["task"] = progress.add_task(f"{settings.runner} requests", total=info.num_requests, rate="0 tok/s")
        state["start"] = time.perf_counter()
        progress.start()

    def on_done(sample: Any) -> None:
        state["tokens"] += sample.output_len
        state["failed"] += not sample.success
        elapsed = max(1e-9, time.perf_counter() - state["start"])
        failed = f", {state['failed']} failed" if state["failed"] else ""
        progress.update(state["task"], advance=1, rate=f"{state['tokens'] / elapsed:,.0f} tok/s{failed}")

    try:
        outcome = run_bench(settings, store, on_request_done=on_done, on_start=on_start, sweep=sweep, sweep_point=point,
                            prepared=prepared)
    finally:
        if state["task"] is not None:
            progress.stop()
    _result_table(out, outcome)
    return outcome


def _result_table(out: Output, outcome: Any) -> None:
    rows = [[label, value] for label, value in summary_rows(outcome.summary)]
    for key, label in TELEMETRY_ROWS:
        if key in outcome.telemetry:
            rows.append([label, outcome.telemetry[key]])
    if outcome.config.get("simulated"):
        rows.insert(0, ["SIMULATED on", outcome.config.get("hardware_source")])
    kernels = outcome.config.get("kernels")
    if kernels:  # the pie runner says which paths ran, and each fast path it fell back from
        prefill = f", prefill attention {kernels['prefill_attention']}" if "prefill_attention" in kernels else ""
        rows.append(["Kernels", f"GEMMs {kernels['linear']}, decode attention {kernels['decode_attention']}{prefill} "
                                f"({kernels['dtype']})"])
        for why in kernels.get("fallbacks", ()):
            out.warn(f"kernel fallback: {why}")
    scraped = outcome.telemetry.get("server_metrics") or {}
    if scraped.get("url"):
        check = scraped.get("token_check")
        rows.append(["Server metrics", f"{scraped['kind']}; {scraped['num_scrapes']} scrapes, {scraped['num_failed_scrapes']} failed"
                     + (f"; tokens {'MISMATCH' if check['mismatch'] else 'agree'} ({check['max_relative_difference']:.2%})" if check else "")])
    for warning in outcome.telemetry.get("warnings", ()):
        out.warn(warning)
    title = "Serving Benchmark Result" + (f" ({outcome.sweep_point})" if outcome.sweep_point else "")
    out.table(title, ["metric", "value"], rows, caption=f"run {outcome.run_id} -> {outcome.record_path}")


def _sweep_table(out: Output, sweep: Any, outcomes: list) -> None:
    columns = [sweep.key, "completed", "req/s", "output tok/s", "mean TTFT (ms)", "mean TPOT (ms)", "run"]
    rows = [[o.sweep_point[sweep.key], o.summary["completed"], o.summary["request_throughput"], o.summary["output_throughput"],
             o.summary["mean_ttft_ms"], o.summary["mean_tpot_ms"], o.run_id] for o in outcomes]
    out.table(f"Sweep {sweep.sweep_id}", columns, rows)


def _payload(outcome: Any) -> dict[str, Any]:
    return {"run_id": outcome.run_id, "record_path": str(outcome.record_path), "sweep_point": outcome.sweep_point,
            "workload": outcome.workload.to_dict(), "config": outcome.config, "summary": outcome.summary,
            "telemetry": {k: v for k, v in outcome.telemetry.items() if k != "effective_config"}}
