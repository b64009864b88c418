"""Profile requests are checked before anything is measured; a run returns a complete, loadable profile."""
import json

import pytest

from pie_core.capability import choose_dtype
from pie_core.device_probe import detect_capability
from pie_core.errors import BadInput
from pie_core.sizes import KIB, MIB
from profiler.hardware_profile import SCHEMA_VERSION, HardwareProfile
from profiler.run import ProfileRequest, run_profile

torch = pytest.importorskip("torch")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")


def test_defaults_follow_the_device():
    assert ProfileRequest().dtype == choose_dtype(detect_capability("cpu")).dtype
    assert ProfileRequest(dtype="auto").dtype == ProfileRequest().dtype
    assert ProfileRequest(dtype="fp32").dtype == "float32"


@no_cuda
def test_cuda_without_cuda_is_bad_input():
    with pytest.raises(BadInput, match="CUDA is not available"):
        ProfileRequest(device="cuda")


@pytest.mark.parametrize("kwargs, pattern", [
    ({"device": "tpu"}, "unknown device"),
    ({"dtype": "int3"}, "unknown dtype"),
    ({"model": "opt-31b"}, "unknown model"),
    ({"threads": 0}, "threads"),
])
def test_bad_requests(kwargs, pattern):
    with pytest.raises(BadInput, match=pattern):
        ProfileRequest(**kwargs)


def test_directory_without_config_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="no config.json"):
        ProfileRequest(model=str(tmp_path))


def test_max_size_beyond_free_memory_says_how_much_is_free():
    request = ProfileRequest(model=None, max_size_bytes=100 * 1024**3 * 1024)  # 100 TiB
    with pytest.raises(BadInput) as err:
        request.link_sweep()
    assert "is free" in err.value.message and "GiB" in err.value.message
    assert "--max-size" in err.value.hint


def test_default_sweep_shrinks_to_free_memory_with_a_note(monkeypatch):
    import profiler.run as run_module

    monkeypatch.setattr(run_module, "free_host_bytes", lambda: 64 * MIB)
    sweep, notes = ProfileRequest(model=None, quick=True).link_sweep()
    assert max(sweep.sizes_bytes) * 4 <= 32 * MIB
    assert notes and "cut" in notes[0]


@pytest.fixture(scope="module")
def link_profile():
    before = torch.get_num_threads()
    try:
        yield run_profile(ProfileRequest(model=None, quick=True, max_size_bytes=256 * KIB, threads=1))
    finally:
        torch.set_num_threads(before)


def test_link_only_profile_round_trips(tmp_path, link_profile):
    profile = link_profile
    assert profile.link_is_memcpy and profile.device == "cpu"
    assert profile.link_h2d_gbps > 0 and profile.memory_bandwidth_gbps > 0 and profile.matmul_tflops > 0
    assert {s.size_bytes for s in profile.link} == {64 * KIB, 256 * KIB}
    assert profile.model is None and profile.decode_fit is None and not profile.layer_timings
    assert any("memcpy" in note for note in profile.notes)
    assert profile.extra["threads"] == 1 and profile.extra["peak_rss_bytes"] > 0
    assert profile.fingerprint["hostname_sha256"] and profile.fingerprint["cpu_cores"] >= 1
    path = profile.save(tmp_path / "p.json")
    assert HardwareProfile.load(path) == profile


def test_profile_with_layer_has_fits_and_timings(tmp_path):
    before = torch.get_num_threads()
    try:
        profile = run_profile(ProfileRequest(model="opt-125m", quick=True, max_size_bytes=64 * KIB, threads=1))
    finally:
        torch.set_num_threads(before)
    assert profile.model == "opt-125m" and profile.model_shape["hidden_size"] == 768
    assert len([t for t in profile.layer_timings if t.phase == "decode"]) == 12
    assert profile.decode_fit is not None and profile.prefill_fit is not None
    assert profile.decode_fit.num_holdout_points == 4
    assert profile.extra["decode_kernel"] == profile.extra["kernels"]["decode_attention"]
    assert profile.extra["decode_kernel"] == "torch" or profile.extra["decode_kernel"].startswith("c-")
    assert profile.capability["kind"] == "cpu" and profile.dtype in profile.matmul_by_dtype
    assert all(row["tflops"] > 0 for row in profile.matmul_by_dtype.values())
    assert HardwareProfile.load(profile.save(tmp_path / "p.json")) == profile


# --- loading profiles: every problem is one BadInput -------------------------------------
def _write(tmp_path, payload):
    path = tmp_path / "profile.json"
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


def test_load_missing_file(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        HardwareProfile.load(tmp_path / "absent.json")


@pytest.mark.parametrize("payload, pattern", [
    ("{not json", "not valid JSON"),
    ([1, 2], "not a pie hardware profile"),
    ({"schema_version": SCHEMA_VERSION + 1}, "schema version"),
    ({"schema_version": None}, "schema version"),
    ({"schema_version": SCHEMA_VERSION, "device": "cpu"}, "field .created_at. is missing"),
])
def test_load_corrupt_or_wrong_version(tmp_path, payload, pattern):
    with pytest.raises(BadInput, match=pattern):
        HardwareProfile.load(_write(tmp_path, payload))


def test_load_rejects_a_bad_sample(tmp_path, link_profile):
    good = link_profile.to_dict()
    good["link"][0]["direction"] = "sideways"
    with pytest.raises(BadInput, match="direction"):
        HardwareProfile.load(_write(tmp_path, good))


def test_a_failing_layer_keeps_link_and_memory_figures(monkeypatch):
    import profiler.layer as layer_module

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory while building the layer\nsecond line of a torch message")

    monkeypatch.setattr(layer_module, "measure_layer", broken)
    before = torch.get_num_threads()
    profile = run_profile(ProfileRequest(model="opt-125m", quick=True, max_size_bytes=64 * KIB, threads=1))
    assert torch.get_num_threads() == before  # restored after the run
    assert profile.extra["layer_error"] == "RuntimeError: out of memory while building the layer"
    assert profile.link and profile.memory_bandwidth_gbps > 0 and profile.decode_fit is None
    assert any("layer failed" in note for note in profile.notes)
