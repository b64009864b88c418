"""Adaptive expansion inside `pie bench`: the controller moves the pool limit while serving, losing nothing.

A tiny seeded OPT on a device budget that holds only a few sequences, the phased workload (short
chats, then a burst of long contexts): the adaptive run's record has a timeline with the
controller's moves, and its greedy tokens equal a static run's for every request. A real engine
whose pool limit moves at random every iteration keeps its block invariants and its tokens.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tiny_hf_model import tiny_model_dir
from cli_helpers import run_pie
from results.report import build_report
from results.store import load_record
from results.timeline import timeline_windows

BUDGET = ["--device-blocks", "30", "-O", "block_size=4", "-O", "max_num_seqs=8", "-O", "prefetch_depth=1"]
WORKLOAD = ["--workload", "phases", "-n", "24", "--input-len", "40", "--output-len", "12", "--request-rate", "50",
            "--seed", "2", "--save-outputs"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("adaptive") / "opt", max_position_embeddings=128)


def bench(model_dir, results, monkeypatch, capsys, *extra):
    code, out, err = run_pie(["bench", "-m", model_dir, *WORKLOAD, *BUDGET, "--results-dir", results, "--json", *extra],
                             monkeypatch, capsys)
    assert code == 0, err
    return json.loads(out), err


def tokens(run):
    return {s.request_id: s.output_token_ids for s in load_record(Path(run["record_path"])).requests}


def test_adaptive_run_moves_the_pool_and_matches_static_tokens(model_dir, tmp_path, monkeypatch, capsys):
    static, _ = bench(model_dir, tmp_path, monkeypatch, capsys, "--pool-blocks", "20")
    adaptive, _ = bench(model_dir, tmp_path, monkeypatch, capsys, "--pool-blocks", "20", "--adaptive", "-O", "window_steps=2")
    assert adaptive["config"]["adaptive"] is True and static["config"]["adaptive"] is False
    assert adaptive["summary"]["completed"] == 24 and adaptive["summary"]["failed"] == 0
    assert tokens(adaptive) == tokens(static)
    windows = timeline_windows(load_record(Path(adaptive["record_path"])).timeline)
    moves = [w.move for w in windows]
    assert moves[:2] == ["settle", "settle"]
    # the burst grows the pool: the limit rises from one window to the next, by "grow" or, where the first demand
    # follows calm windows (more of them fit between arrivals when steps are fast), by "rearm"
    assert any(b.pool_limit_blocks > a.pool_limit_blocks for a, b in zip(windows, windows[1:]))
    assert {"grow", "rearm"} & set(moves)
    assert all(0 <= w.pool_limit_blocks <= 20 for w in windows)
    assert max(w.pool_blocks_used for w in windows) > 0  # the burst used the pool it grew
    assert all(b.t_s > a.t_s for a, b in zip(windows, windows[1:]))
    # the static run has a timeline too, with a constant limit and no moves
    static_windows = timeline_windows(load_record(Path(static["record_path"])).timeline)
    assert static_windows and {w.pool_limit_blocks for w in static_windows} == {20} and not any(w.move for w in static_windows)
    report = build_report([load_record(Path(static["record_path"])), load_record(Path(adaptive["record_path"]))])
    assert sum(f.name.startswith("timeline_") for f in report.figures) == 2  # one plot per (unswept) run

    code, out, err = run_pie(["show", adaptive["run_id"], "--timeline", "--results-dir", tmp_path], monkeypatch, capsys)
    assert code == 0 and "Timeline of" in out and "(adaptive)" in out
    assert all(move in out for move in {"grow", "rearm"} & set(moves))  # the growth moves are shown


def test_sweep_timelines_overlay_in_one_plot(model_dir, tmp_path, monkeypatch, capsys):
    code, out, err = run_pie(["bench", "-m", model_dir, *WORKLOAD, *BUDGET, "--sweep", "pool_blocks=0,24",
                              "--results-dir", tmp_path, "--json"], monkeypatch, capsys)
    assert code == 0, err
    runs = json.loads(out)["runs"]
    report = build_report([load_record(Path(r["record_path"])) for r in runs])
    assert [f.name for f in report.figures if f.name.startswith("timeline_")] == ["timeline_0"]


@pytest.mark.parametrize("args, message", [
    (["--adaptive", "--runner", "hf"], "--adaptive sizes the Pie engine's pool; runner 'hf' has none"),
    (["--adaptive"], "--adaptive needs a pool to size"),
    (["--adaptive", "--pool-blocks", "8", "-O", "window_steps=0"], "window_steps must be at least 1"),
    (["--adaptive", "--pool-blocks", "8", "-O", "max_stall_fraction=0"], "max stall fraction must be in (0, 1]"),
    (["--adaptive", "--pool-blocks", "8", "--runner", "vllm"], "runner 'vllm' has none"),
])
def test_bad_adaptive_input_is_one_line_exit_2(args, message, model_dir, tmp_path, monkeypatch, capsys):
    code, out, err = run_pie(["bench", "-m", model_dir, "-n", "2", "--results-dir", tmp_path / "r", *args], monkeypatch, capsys)
    assert code == 2, err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and out == ""
    assert not list((tmp_path / "r").glob("*.jsonl"))


def test_pool_limit_moved_at_random_every_iteration_keeps_invariants_and_tokens(model_dir):
    from runners.engine.config import EngineConfig
    from runners.engine.llm_engine import LLMEngine
    from runners.engine.sampling_params import SamplingParams

    rng = random.Random(0)
    prompts = [[rng.randrange(4, 97) for _ in range(rng.randint(3, 40))] for _ in range(30)]
    params = [SamplingParams(max_tokens=rng.randint(4, 24), ignore_eos=True) for _ in prompts]

    def run(move_limit):
        engine = LLMEngine(EngineConfig(model=str(model_dir), dtype="float32", block_size=4, num_device_blocks=40,
                                        num_pool_blocks=30, prefetch_depth=1, max_num_seqs=8, max_num_batched_tokens=64))
        pending, outputs, steps = list(range(len(prompts))), {}, 0
        while pending or engine.has_unfinished_requests():
            if pending and rng.random() < 0.5:
                index = pending.pop(0)
                engine.add_request(f"r{index}", prompts[index], params[index])
            if move_limit:
                engine.set_pool_limit(rng.randint(0, 30))
            for output in engine.step():
                if output.finished:
                    outputs[output.request_id] = list(output.output_token_ids)
            engine.check_invariants()
            assert engine.block_manager.pool_used <= engine.pool_limit_blocks or move_limit  # shrinks take effect next step
            steps += 1
        return outputs, steps, sum(s.num_preempted for s in engine.stats)

    static, _, _ = run(False)
    moved, steps, preempted = run(True)
    assert steps > 100 and len(moved) == 30
    assert moved == static
    assert preempted > 0  # the moves really forced work back (limits below use)


def test_tune_adaptive_marks_the_plan_and_the_pie_runner_reads_it(tmp_path, monkeypatch, capsys):
    from runners.base import RunnerSpec
    from runners.pie_runner import controller_config_from_spec

    plan_path = tmp_path / "plan.json"
    code, out, err = run_pie(["tune", "--model", "opt-30b", "--hardware", "h100-pcie", "--adaptive", "--output", plan_path,
                              "--json"], monkeypatch, capsys)
    assert code == 0, err
    plan = json.loads(plan_path.read_text())
    assert plan["adaptive"] is True and plan["settings"]["num_pool_blocks"] > 0
    config = controller_config_from_spec(RunnerSpec("opt-30b", options={"plan": str(plan_path)}),
                                         plan["settings"]["num_pool_blocks"])
    assert config is not None and config.capacity_blocks == plan["settings"]["num_pool_blocks"]
    assert controller_config_from_spec(RunnerSpec("opt-125m"), 10) is None
