"""`pie profile`: measure the link, the memory and one model layer, fit the cost model, save a HardwareProfile.

This module only parses options, draws progress and renders tables; the measuring is
`profiler.run.run_profile`. `--show FILE` renders a saved profile without measuring.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pie_cli.dtype_option import DtypeAutoOpt, announce_dtype
from pie_cli.options import DEFAULT_PROFILES_DIR, DeviceOpt, JsonOpt, ModelOpt, OutputPathOpt, SeedOpt
from pie_cli.output import Output
from pie_core.errors import RuntimeFailure
from pie_core.inputs import writable_file
from pie_core.json_files import save_keeping
from profiler.hardware_profile import HardwareProfile
from profiler.saved_profiles import default_profile_path

KIND_COLUMNS = (("h2d", "pinned"), ("h2d", "pageable"), ("d2h", "pinned"), ("d2h", "pageable"),
                ("bidirectional", "pinned"), ("bidirectional", "pageable"))

QuickOpt = Annotated[bool, typer.Option("--quick", help="Fewer sizes, repeats and grid points (under a minute on a small CPU machine).")]
MaxSizeOpt = Annotated[Optional[str], typer.Option("--max-size", help="Largest link transfer, e.g. 256MiB or 1GiB (default: 1GiB, 256MiB with --quick, cut to fit free memory).")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", help="torch intra-op threads while measuring, 1 to this machine's CPUs (default: torch's, all cores); 1 is steadier on a busy machine.")]
NoLayerOpt = Annotated[bool, typer.Option("--no-layer", help="Measure only the link, memory bandwidth and FLOP/s.")]
ShowOpt = Annotated[Optional[Path], typer.Option("--show", help="Render a saved profile instead of measuring.")]


class RichProgress:
    """Adapts profiler.run.Progress to a rich progress display (on stderr)."""

    def __init__(self, progress):
        self.progress = progress
        self.task = None

    def start(self, stage: str, total: int) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=self.progress.tasks[self.task].total)
        self.stage = stage
        self.task = self.progress.add_task(stage, total=max(total, 1))

    def advance(self, detail: str) -> None:
        self.progress.update(self.task, advance=1, description=f"{self.stage}: {detail}")


def render(out: Output, profile: HardwareProfile, path: Path | None) -> None:
    sizes = sorted({s.size_bytes for s in profile.link})
    medians = {(s.direction, s.host_memory, s.size_bytes): s.median_gbps for s in profile.link}
    rows = [[_size(size)] + [medians.get((d, k, size)) for d, k in KIND_COLUMNS] for size in sizes]
    h2d = [medians.get(("h2d", "pinned", size)) or 0.0 for size in sizes]
    best = h2d.index(max(h2d)) if h2d else None
    link_caption = ("CPU-only: the 'link' is a memcpy between two host buffers; pinned = page-locked (mlock)"
                    if profile.link_is_memcpy else "best pinned H2D size in bold")
    out.table("Link bandwidth (GB/s, median)", ["size"] + [f"{d} {k}" for d, k in KIND_COLUMNS], rows,
              highlight_row=best, caption=link_caption)
    shape = profile.extra.get("matmul_shape")
    by_dtype = profile.matmul_by_dtype or {profile.dtype: {"tflops": profile.matmul_tflops, "shape": shape, "support": None}}
    matmul_rows = [[f"matmul {name}{' (profile dtype)' if name == profile.dtype else ''} (TFLOP/s"
                    f"{', M×K×N ' + '×'.join(map(str, row['shape'])) if row.get('shape') else ''}"
                    f"{', ' + row['support'] if row.get('support') else ''})", row["tflops"]]
                   for name, row in by_dtype.items()]
    capability = profile.capability.get("torch_cpu_capability") if profile.capability else None
    out.table(f"Device ({profile.device_name})", ["measure", "value"], [
        ["memory bandwidth (GB/s, read + write)", profile.memory_bandwidth_gbps],
        *matmul_rows,
        *([["torch CPU capability / native dtypes",
            f"{capability} / {', '.join(profile.capability.get('native_dtypes', []))}"]] if capability else []),
        ["torch threads", profile.extra.get("threads")],
        ["peak RSS (GiB)", profile.extra["peak_rss_bytes"] / 2**30 if "peak_rss_bytes" in profile.extra else None]])
    if profile.layer_timings:
        _render_layer(out, profile)
    for note in profile.notes:
        out.info(f"note: {note}")
    if path is not None:
        out.info(f"profile saved to {path}")


def _size(size: int) -> str:
    from pie_core.sizes import format_bytes

    return format_bytes(size)


def _render_layer(out: Output, profile: HardwareProfile) -> None:
    from profiler.fit import holdout_mask

    held_out = {}
    for phase in ("decode", "prefill"):
        timings = [t for t in profile.layer_timings if t.phase == phase]
        held_out.update({id(t): m for t, m in zip(timings, holdout_mask(timings))})
    rows = []
    for timing in profile.layer_timings:
        if timing.phase == "decode" and profile.decode_fit:
            predicted = profile.decode_fit.predict_s(timing.batch_size, timing.context_len)
        elif timing.phase == "prefill" and profile.prefill_fit:
            predicted = profile.prefill_fit.predict_s(timing.batch_size * timing.context_len,
                                                      timing.batch_size * timing.context_len**2)
        else:
            predicted = None
        error = abs(predicted - timing.median_s) / timing.median_s * 100 if predicted else None
        rows.append([timing.phase, timing.batch_size, timing.context_len, timing.median_s * 1e3, timing.p10_s * 1e3,
                     timing.p90_s * 1e3, predicted * 1e3 if predicted else None, error,
                     "yes" if held_out.get(id(timing)) else ""])
    kernels = profile.extra.get("kernels") or {}
    kernel = kernels.get("decode_attention") or profile.extra.get("decode_kernel")
    out.table(f"One {profile.model} layer of the Pie engine ({profile.dtype}, seeded random weights"
              + (f", GEMMs {kernels['linear']}" if kernels.get("linear") else "")
              + (f", decode kernel: {kernel})" if kernel else ")"),
              ["phase", "batch", "context", "median ms", "p10 ms", "p90 ms", "fitted ms", "error %", "held out"], rows)
    fit_rows = []
    if profile.decode_fit:
        fit = profile.decode_fit
        fit_rows.append(["decode: fixed + per_token·b + per_kv_token·b·ctx",
                         f"{fit.fixed_s * 1e3:.3g} ms + {fit.per_token_s * 1e6:.3g} µs·b + {fit.per_kv_token_s * 1e9:.3g} ns·b·ctx",
                         fit.median_rel_error * 100, fit.max_rel_error * 100, f"{fit.num_fit_points}/{fit.num_holdout_points}"])
    if profile.prefill_fit:
        fit = profile.prefill_fit
        held_out_prefill = [(t, held_out[id(t)]) for t in profile.layer_timings if t.phase == "prefill"]
        fit_rows.append(["prefill: fixed + per_token·n + per_token_sq·Σlen²",
                         f"{fit.fixed_s * 1e3:.3g} ms + {fit.per_token_s * 1e6:.3g} µs·n + {fit.per_token_sq_s * 1e9:.3g} ns·Σlen²",
                         fit.median_rel_error * 100, (profile.extra.get("prefill_max_rel_error") or 0) * 100,
                         f"{sum(not m for t, m in held_out_prefill)}/{sum(m for t, m in held_out_prefill)}"])
    if fit_rows:
        out.table("Fitted layer cost model (errors on held-out grid points)",
                  ["model", "coefficients", "median error %", "max error %", "fit/held-out points"], fit_rows)


def profile(model: ModelOpt = "opt-125m", quick: QuickOpt = False, device: DeviceOpt = "cpu",
            dtype: DtypeAutoOpt = "auto", output: OutputPathOpt = None, max_size: MaxSizeOpt = None,
            threads: ThreadsOpt = None, no_layer: NoLayerOpt = False, show: ShowOpt = None,
            seed: SeedOpt = 0, json_out: JsonOpt = False) -> None:
    """Measure host<->device link bandwidth, memory bandwidth, FLOP/s and one model layer; save a profile.

    Example: pie profile --quick --model opt-125m   (or: pie profile --show .pie/profiles/FILE.json)
    """
    out = Output(json_out)
    if show is not None:
        loaded = HardwareProfile.load(show)
        if json_out:
            out.json({"path": str(show), "profile": loaded.to_dict()})
        else:
            render(out, loaded, None)
        return
    from pie_core.device_probe import check_device
    from pie_core.sizes import parse_size
    from profiler.run import ProfileRequest, run_profile

    if output is not None:
        from pie_cli.options import DEFAULT_RESULTS_DIR
        from results.store import check_outside_store

        check_outside_store(writable_file(output, "--output"), "--output", DEFAULT_RESULTS_DIR)  # before measuring
    from runners.hardware_source import dtype_on_device

    resolved = dtype_on_device(dtype, check_device(device))
    request = ProfileRequest(device=device, dtype=resolved.dtype, model=None if no_layer else model, quick=quick,
                             max_size_bytes=parse_size(max_size, "--max-size") if max_size is not None else None,
                             threads=threads, seed=seed)
    request.link_sweep()  # sizes that cannot fit fail here, before the dtype line and any measuring
    announce_dtype(out, resolved, device)
    with out.progress(transient=True) as bar:
        result = run_profile(request, RichProgress(bar))
    default = default_profile_path(result, DEFAULT_PROFILES_DIR)
    path = save_keeping(result.save, output or default, "profile", fallbacks=(default,))
    if json_out:
        out.json({"path": str(path), "profile": result.to_dict()})
    render(out, result, path)
    if "layer_error" in result.extra:
        raise RuntimeFailure(f"timing the layer failed ({result.extra['layer_error']}); "
                             f"the link and memory figures were saved to {path}",
                             "pass --no-layer to skip the layer, or try a smaller --model")
