"""BurstGPT trace replay: reading the CSV (rejections counted and named), bad input, and real replays.

The tests write their own BurstGPT-format files. The end-to-end replays run `pie bench` on a
tiny seeded model with `--runner pie` (in-process) and `--runner vllm` (a subprocess, as vLLM
spawns workers), and check that each request was handed to the engine within 10 ms of the
file's timestamp (after `--time-scale`).
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_hf_model import tiny_model_dir, vllm_model_dir
from cli_helpers import NEEDS_VLLM, run_pie, vllm_child_env
from pie_core.errors import BadInput
from results.store import load_record
from runners.workloads.burstgpt import read_burstgpt
from runners.workloads.common import WorkloadSpec

REPO = Path(__file__).resolve().parent.parent
HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"
TOLERANCE_S = 0.010


def write_trace(path: Path, num_rows: int = 300, seed: int = 0, rate: float = 2.0, start: float = 5.0,
                bad_rows: bool = True) -> tuple[Path, list[tuple[float, int, int, str, str]]]:
    """A BurstGPT-format CSV; returns it and the good rows (timestamp, request, response, model, log type)."""
    rng = random.Random(seed)
    lines, good, clock = [HEADER], [], start
    for index in range(num_rows):
        clock += rng.expovariate(rate)
        request, response = rng.randint(4, 40), rng.randint(2, 8)
        model = "GPT-4" if index % 5 == 0 else "ChatGPT"
        log_type = "API log" if index % 7 == 0 else "Conversation log"
        lines.append(f"{clock:.3f},{model},{request},{response},{request + response},{log_type}")
        good.append((round(clock, 3), request, response, model, log_type))
        if bad_rows and index % 50 == 10:
            lines += ["nan-ish,ChatGPT,5,5,10,Conversation log", f"{clock:.3f},ChatGPT,0,5,5,Conversation log",
                      f"{clock:.3f},ChatGPT,7,-1,6,Conversation log", f"{clock - 3:.3f},ChatGPT,5,5,10,Conversation log"]
    path.write_text("\n".join(lines) + "\n")
    return path, good


def spec(path, **kw):
    return WorkloadSpec(name="burstgpt", dataset_path=path, num_prompts=kw.pop("num_prompts", 10_000), **kw)


def test_reads_arrivals_and_lengths_and_names_every_rejected_row(tmp_path):
    path, good = write_trace(tmp_path / "t.csv")
    trace = read_burstgpt(path, spec(path, time_scale=0.5), max_model_len=2048, vocab_size=1000)
    assert [r.prompt_len for r in trace.requests] == [g[1] for g in good]
    assert [r.output_len for r in trace.requests] == [g[2] for g in good]
    expected = [(g[0] - good[0][0]) * 0.5 for g in good]
    assert max(abs(r.arrival_s - e) for r, e in zip(trace.requests, expected)) < 1e-9
    assert trace.rejected == {"unparsable": 6, "zero or negative tokens": 12, "unsorted timestamp": 6}
    line = trace.summary(path)
    assert "rejected 24 (6 unparsable, 12 zero or negative tokens, 6 unsorted timestamp)" in line
    assert f"{len(good) + 24} rows, {len(good)} replayed" in line


def test_filters_and_window(tmp_path):
    path, good = write_trace(tmp_path / "t.csv", bad_rows=False)
    kept = [g for g in good if g[3] == "ChatGPT" and g[4] == "Conversation log" and 30 <= g[0] < 60]
    trace = read_burstgpt(path, spec(path, trace_model="chatgpt", trace_log_type="Conversation Log", trace_start=30,
                                     trace_duration=30), 2048, 1000)
    assert [r.prompt_len for r in trace.requests] == [g[1] for g in kept]
    assert trace.requests[0].arrival_s == 0.0
    assert trace.filtered["other model"] == sum(g[3] != "ChatGPT" for g in good)
    assert trace.filtered["outside the window"] > 0
    capped = read_burstgpt(path, spec(path, num_prompts=7), 2048, 1000)
    assert len(capped.requests) == 7 and capped.filtered["beyond --num-prompts"] == len(good) - 7
    short = read_burstgpt(path, spec(path), max_model_len=30, vocab_size=1000)
    assert short.rejected["longer than the model"] == sum(g[1] + g[2] > 30 for g in good)


@pytest.mark.parametrize("content, message", [
    ("Time,Request tokens,Response tokens\n1,2,3\n", "lacks the column(s) 'Timestamp'"),
    (HEADER + "\n", "no usable rows"),
    (HEADER + "\n1,ChatGPT,0,0,0,API log\n", "1 zero or negative tokens"),
])
def test_unusable_files_are_bad_input(tmp_path, content, message):
    path = tmp_path / "t.csv"
    path.write_text(content)
    with pytest.raises(BadInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_burstgpt(path, spec(path), 2048, 1000)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("trace") / "opt", max_position_embeddings=128)


@pytest.mark.parametrize("args, message", [
    (["--time-scale", "0"], "--time-scale must be greater than 0"),
    (["--time-scale", "-1"], "--time-scale must be greater than 0"),
    (["--trace-start", "1000", "--trace-duration", "5"], "no usable rows in the window"),
    (["--trace-duration", "0"], "--trace-duration must be greater than 0"),
    (["--request-rate", "4"], "--request-rate does not apply to trace replay"),
    (["--trace-model", "nothing-like-it"], "no usable rows"),
    (["--dataset-path", "NOCOLS"], "lacks the column(s)"),
    (["--workload", "uniform", "--dataset-path", None, "--time-scale", "2"], "--time-scale applies only to trace replay"),
    (["--dataset-path", None], "workload 'burstgpt' needs --dataset-path"),
])
def test_bad_trace_input_is_one_line_exit_2(args, message, model_dir, tmp_path, monkeypatch, capsys):
    path, _ = write_trace(tmp_path / "t.csv", num_rows=20)
    nocols = tmp_path / "nocols.csv"
    nocols.write_text("a,b\n1,2\n")
    base = ["bench", "-m", model_dir, "--workload", "burstgpt", "--dataset-path", path, "--results-dir", tmp_path / "r"]
    for flag, value in zip(args[::2], args[1::2]):
        if flag == "--dataset-path":
            index = base.index("--dataset-path")
            base[index:index + 2] = [] if value is None else [flag, nocols]
        elif flag == "--workload":
            base[base.index("--workload") + 1] = value
        else:
            base += [flag, value]
    code, out, err = run_pie(base, monkeypatch, capsys)
    assert code == 2, err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and out == ""
    assert not list((tmp_path / "r").glob("*.jsonl"))


def _check_replay(record, good, scale):
    assert record.complete and len(record.requests) == len(good)
    expected = {f"burstgpt-{i}": (g[0] - good[0][0]) * scale for i, g in enumerate(good)}
    errors = [abs(s.sent_s - expected[s.request_id]) for s in record.requests]
    assert all(s.success for s in record.requests)
    assert max(errors) <= TOLERANCE_S, f"replayed arrivals off by up to {max(errors) * 1000:.1f} ms"
    assert max(abs(s.arrival_s - expected[s.request_id]) for s in record.requests) < 1e-6
    return max(errors)


SCALE = 0.1  # 300 rows at 2/s in the file: about 15 s replayed


def replay(model, tmp_path, runner, *extra, env=None):
    """`pie bench --workload burstgpt` in a child process with one OpenMP thread: on a 2-core machine two
    threads' spinning workers take the core the release loop wakes on, and a release can slip by a
    scheduler tick (measured here: up to 18-30 ms with 2 threads, at most 4 ms with 1; docs/adaptive-and-traces.md)."""
    path, good = write_trace(tmp_path / "t.csv")
    command = [sys.executable, "-m", "pie_cli.app", "bench", "--model", str(model), "--workload", "burstgpt",
               "--dataset-path", str(path), "-n", "1000", "--time-scale", str(SCALE), "--runner", runner, "--device", "cpu",
               "--results-dir", str(tmp_path / "r"), "--json", *extra]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=400, check=False,
                          env={**vllm_child_env(), "OMP_NUM_THREADS": "1", **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rejected 24 (6 unparsable, 12 zero or negative tokens, 6 unsorted timestamp)" in done.stderr
    run = json.loads(done.stdout)
    assert run["workload"]["arrivals"] == f"trace replay, gaps x {SCALE:g}" and not run["workload"]["synthetic"]
    worst = _check_replay(load_record(Path(run["record_path"])), good, SCALE)
    print(f"{runner} runner: worst replayed-arrival error {worst * 1000:.2f} ms")


def test_replay_on_the_pie_runner(model_dir, tmp_path):
    replay(model_dir, tmp_path, "pie")


@pytest.mark.vllm
@pytest.mark.slow
@NEEDS_VLLM
def test_replay_on_the_vllm_runner(tmp_path):
    # vLLM's engine core in this process, not in a second one polling the other of the two cores
    replay(vllm_model_dir(tmp_path / "opt", "opt"), tmp_path, "vllm", "-O", "kv_cache_space_gib=0.25", "-O", "enforce_eager=true",
           env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
