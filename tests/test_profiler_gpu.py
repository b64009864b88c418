"""The CUDA path of the profiler: pinned vs pageable transfers, CUDA-event timing, a full quick profile. Skips without CUDA."""
import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

from pie_core.sizes import MIB  # noqa: E402
from profiler.link import LinkSweep, measure_link  # noqa: E402
from profiler.memory import measure_copy_bandwidth, measure_matmul  # noqa: E402
from profiler.run import ProfileRequest, run_profile  # noqa: E402
from profiler.timing import time_call  # noqa: E402


def test_cuda_event_timing_sees_device_work():
    a = torch.randn(4096, 4096, device="cuda")
    timing = time_call(lambda: a @ a, device="cuda", repeats=5, warmup=2)
    # 137 GFLOP per call: even a fast GPU needs tens of microseconds; a host-only clock would see ~0.
    assert timing.median_s > 1e-5


def test_pinned_h2d_beats_pageable_on_large_copies():
    sweep = LinkSweep(sizes_bytes=(64 * MIB,), repeats=5, directions=("h2d", "d2h", "bidirectional"))
    samples, notes = measure_link("cuda", sweep)
    by_kind = {(s.direction, s.host_memory): s.median_gbps for s in samples}
    assert len(by_kind) == 6 and not notes
    assert by_kind[("h2d", "pinned")] > by_kind[("h2d", "pageable")]
    assert by_kind[("h2d", "pinned")] > 5  # any PCIe 3+ or NVLink-C2C link


def test_device_memory_and_matmul_rates():
    _, gbps = measure_copy_bandwidth("cuda", 512 * MIB, repeats=5)
    _, tflops = measure_matmul("cuda", "float16", (4096, 4096, 4096), repeats=5)
    assert gbps > 100 and tflops > 1


def test_quick_cuda_profile():
    profile = run_profile(ProfileRequest(device="cuda", model="opt-125m", quick=True))
    assert not profile.link_is_memcpy and profile.device == "cuda" and profile.dtype == "float16"
    assert profile.fingerprint["gpu_name"] and profile.extra["peak_device_bytes"] > 0
    assert profile.decode_fit is not None and profile.decode_fit.median_rel_error < 0.25
