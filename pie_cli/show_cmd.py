"""`pie show`: list stored benchmark runs, or inspect one (header, metric table, requests).

Reads the results store (results/store.py); renders only. Left out: comparing runs (`pie compare`).
"""
from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from pie_cli.options import DEFAULT_RESULTS_DIR, JsonOpt, ResultsDirOpt
from pie_cli.output import Output
from pie_core.errors import BadInput
from results.metrics import summary_rows, tpot_s
from results.record import runner_label

Filter = Annotated[Optional[str], typer.Option(help="Only runs with this value.")]


def show(
    run: Annotated[Optional[str], typer.Argument(help="A run id (a unique prefix is enough) or a record file; omit to list runs.")] = None,
    label: Filter = None,
    model: Filter = None,
    runner: Filter = None,
    sweep_id: Annotated[Optional[str], typer.Option("--sweep-id", help="Only runs of this sweep.")] = None,
    requests: Annotated[bool, typer.Option("--requests", help="With a run: list its requests too.")] = False,
    timeline: Annotated[bool, typer.Option("--timeline", help="With a run: its timeline (pool limit, blocks, requests, stall, tok/s, controller moves per window; for --runner openai, the client's tok/s and TTFT and the server's series per scrape).")] = False,
    results_dir: ResultsDirOpt = DEFAULT_RESULTS_DIR,
    json_out: JsonOpt = False,
) -> None:
    """List stored runs (newest last), or show one run's settings and metrics.

    Example: pie show --runner pie --label nightly | pie show 20260101T000000Z-pie --requests --timeline
    """
    from results.store import ResultsStore

    out = Output(json_out)
    store = ResultsStore(results_dir)
    if run is None and (requests or timeline):
        flag = "--requests" if requests else "--timeline"
        raise BadInput(f"{flag} shows one run, but no run was given", f"e.g. pie show RUN_ID {flag} (list runs with `pie show`)")
    if run is None:
        records = store.select(label=label, model=model, runner=runner, sweep_id=sweep_id)
        for _, why in store.unreadable():
            out.warn(f"left out a record pie cannot read: {why}")
        filters = {"--label": label, "--model": model, "--runner": runner, "--sweep-id": sweep_id}
        _list(out, records, store, " ".join(f"{flag} {value}" for flag, value in filters.items() if value is not None))
        return
    record = store.load(run)
    if json_out:
        out.json(record.to_dict())
        return
    _detail(out, record, requests)
    if timeline:
        _timeline(out, record)


def _list(out: Output, records: list, store: Any, filters: str = "") -> None:
    rows = []
    for record in records:
        summary, header = record.summary or {}, record.header
        rows.append({"run_id": record.run_id, "created_at": header.created_at, "runner": runner_label(header), "model": header.model,
                     "workload": header.workload.get("name"), "label": header.label,
                     "sweep_point": header.sweep_point, "complete": record.complete, "requests": len(record.requests),
                     "output_throughput": summary.get("output_throughput"), "mean_ttft_ms": summary.get("mean_ttft_ms"),
                     "mean_tpot_ms": summary.get("mean_tpot_ms")})
    if out.json_mode:
        out.json({"results_dir": str(store.root), "runs": rows})
        return
    if not rows:
        total = len(store.records())
        if filters and total:
            out.info(f"no run in {store.root} matches {filters} (it holds {total} run{'s' if total != 1 else ''}; "
                     "`pie show` lists them all)")
        else:
            out.info(f"no runs in {store.root} (run `pie bench` to make one)")
        return
    out.table(f"Runs in {store.root}", ["run", "created", "runner", "model", "workload", "label", "sweep", "complete",
                                        "requests", "output tok/s", "mean TTFT (ms)", "mean TPOT (ms)"],
              [[r["run_id"], r["created_at"], r["runner"], r["model"], r["workload"], r["label"],
                ", ".join(f"{k}={v}" for k, v in (r["sweep_point"] or {}).items()) or None,
                "yes" if r["complete"] else "NO", r["requests"], r["output_throughput"], r["mean_ttft_ms"], r["mean_tpot_ms"]]
               for r in rows])


def _detail(out: Output, record: Any, with_requests: bool) -> None:
    header = record.header
    workload = header.workload
    synthetic = " (SYNTHETIC)" if workload.get("synthetic") else ""
    rows = [["run", record.run_id], ["file", record.source], ["created", header.created_at],
            ["finished", record.finished_at or "NO - interrupted, incomplete"], ["runner", runner_label(header)],
            ["model", header.model], ["label", header.label], ["git commit", header.git_commit],
            ["sweep", f"{header.sweep_id} {header.sweep_point}" if header.sweep_id else None],
            ["workload", f"{workload.get('name')}{synthetic}: {workload.get('source')}"],
            ["tokens", workload.get("tokenizer")], ["arrivals", f"{workload.get('arrivals')} rate {workload.get('request_rate') or 'inf'}"],
            ["machine", f"{header.fingerprint.get('cpu_model')}, GPU {header.fingerprint.get('gpu_name')}"],
            ["config", ", ".join(f"{k}={v}" for k, v in header.config.items())]]
    out.table(f"Run {record.run_id}", ["field", "value"], rows)
    if record.summary is not None:
        out.table("Serving Benchmark Result", ["metric", "value"], [list(row) for row in summary_rows(record.summary)])
        telemetry = {k: v for k, v in record.telemetry.items() if k not in ("effective_config", "server_metrics")}
        scraped = record.telemetry.get("server_metrics") or {}
        if scraped.get("url"):
            check = scraped.get("token_check") or {}
            telemetry["server metrics"] = (f"{scraped.get('kind')} at {scraped['url']}: {scraped.get('num_scrapes')} scrapes, "
                                           f"{scraped.get('num_failed_scrapes')} failed")
            telemetry["server token check"] = (f"{'MISMATCH' if check['mismatch'] else 'agrees'}: within "
                                               f"{check['max_relative_difference']:.2%}" if check else "not possible")
        if telemetry:
            out.table("Runner telemetry", ["field", "value"], [[k, v] for k, v in telemetry.items()])
    else:
        out.warn(f"run is incomplete: {len(record.requests)} request(s) finished before it stopped; no summary")
    if with_requests:
        out.table("Requests", ["request", "prompt", "output", "arrival (s)", "TTFT (ms)", "TPOT (ms)", "E2EL (ms)", "ok"],
                  [[s.request_id, s.prompt_len, s.output_len, s.arrival_s, _ms(s.ttft_s), _ms(tpot_s(s)), _ms(s.e2el_s),
                    "yes" if s.success else f"no: {s.error}"] for s in record.requests])


def _timeline(out: Output, record: Any) -> None:
    from results.timeline import TIMELINE_COLUMNS, timeline_rows, timeline_windows

    windows = timeline_windows(record.timeline)
    if not windows:
        out.warn(f"run {record.run_id} has no timeline (runs that step an engine, pie and sim, and openai runs record one)")
        return
    if not windows[0].engine:
        _client_timeline(out, record, windows)
        return
    moves = sum(1 for w in windows if w.move in ("grow", "shrink", "rearm"))
    out.table(f"Timeline of {record.run_id}", [label for _, label in TIMELINE_COLUMNS], timeline_rows(windows),
              caption=f"{len(windows)} windows, {moves} pool moves" + (" (adaptive)" if record.header.config.get("adaptive") else ""))


def _client_timeline(out: Output, record: Any, windows: list) -> None:
    """An openai run: the client's columns, then the server's that the record holds (results/server_series.py)."""
    from results.server_series import SHOW_COLUMNS, find_series
    from results.timeline import CLIENT_COLUMNS, server_names

    names = server_names(windows)
    chosen = [(find_series(names, role), heading) for role, heading in SHOW_COLUMNS]
    chosen = [(name, heading) for name, heading in chosen if name is not None]
    rows = []
    for w in windows:
        row = [getattr(w, key) for key, _ in CLIENT_COLUMNS]
        for name, _ in chosen:
            value = None if w.server is None else w.server.get(name)
            row.append("gap" if w.server is None else (f"{value:.0%}" if value is not None and name.endswith("_perc") else value))
        rows.append(row)
    scraped = (record.telemetry or {}).get("server_metrics") or {}
    gaps = sum(1 for w in windows if w.server is None)
    caption = f"{len(windows)} windows on the client's clock"
    if scraped.get("url"):
        caption += (f"; server {scraped.get('kind')} at {scraped['url']}, {gaps} gap(s); "
                    f"{len(names) - len(chosen)} more series in `pie show {record.run_id} --json`")
    else:
        caption += "; server metrics were off" + (f" ({scraped['note']})" if scraped.get("note") else "")
    out.table(f"Timeline of {record.run_id}", [label for _, label in CLIENT_COLUMNS] + [h for _, h in chosen], rows,
              caption=caption)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0
