"""Link sweep and memory measurements on the CPU (where the link is a memcpy)."""
import pytest

from pie_core.errors import BadInput
from pie_core.sizes import GIB, KIB, MIB
from profiler.hardware_profile import HOST_MEMORY_KINDS, LINK_DIRECTIONS
from profiler.link import LinkSweep, bidirectional_copies_per_call, lock_pages, measure_link, sweep_sizes, unlock_pages
from profiler.memory import default_matmul_shape, measure_copy_bandwidth, measure_matmul


def test_sweep_sizes_cover_64kib_to_max():
    assert sweep_sizes(GIB, quick=False) == (64 * KIB, 256 * KIB, MIB, 4 * MIB, 16 * MIB, 64 * MIB, 256 * MIB, GIB)
    assert sweep_sizes(256 * MIB, quick=True) == (64 * KIB, MIB, 16 * MIB, 256 * MIB)
    assert sweep_sizes(3 * MIB, quick=True) == (64 * KIB, MIB, 3 * MIB)  # the maximum is always measured
    assert sweep_sizes(64 * KIB, quick=True) == (64 * KIB,)
    with pytest.raises(BadInput, match="below the smallest"):
        sweep_sizes(1000, quick=True)


def test_link_sweep_validates():
    sweep = LinkSweep(sizes_bytes=(64 * KIB, MIB))
    assert sweep.num_points == 2 * len(LINK_DIRECTIONS) * len(HOST_MEMORY_KINDS)
    assert sweep.peak_bytes == 2 * MIB + 2 * (64 * KIB + MIB)
    with pytest.raises(BadInput):
        LinkSweep(sizes_bytes=())
    with pytest.raises(BadInput, match="direction"):
        LinkSweep(sizes_bytes=(MIB,), directions=("sideways",))
    with pytest.raises(BadInput, match="host memory"):
        LinkSweep(sizes_bytes=(MIB,), host_memory_kinds=("magic",))


def test_bidirectional_amortises_thread_start():
    assert bidirectional_copies_per_call(64 * KIB) == 1024
    assert bidirectional_copies_per_call(GIB) == 1


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core machine, two OpenMP threads stall each other's tiny copies."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_measure_link_on_cpu_times_every_kind(one_thread):
    sweep = LinkSweep(sizes_bytes=(64 * KIB, 4 * MIB), repeats=3, warmup=1, target_sample_s=0.001)
    messages = []
    samples, notes = measure_link("cpu", sweep, messages.append)
    assert len(samples) == sweep.num_points == len(messages)
    keys = {(s.direction, s.host_memory, s.size_bytes) for s in samples}
    assert len(keys) == sweep.num_points
    for sample in samples:
        assert len(sample.samples_s) == 3
        assert sample.p10_gbps <= sample.median_gbps <= sample.p90_gbps
        assert 0.01 < sample.median_gbps < 2000  # a memcpy: bytes / seconds, far from zero and from infinity


def test_page_locking_round_trip():
    torch = pytest.importorskip("torch")
    buffer = torch.ones(MIB, dtype=torch.uint8)
    if lock_pages(buffer):  # some sandboxes refuse mlock; the profiler then notes it
        unlock_pages(buffer)


def test_memory_bandwidth_and_matmul_rates_are_consistent():
    timing, gbps = measure_copy_bandwidth("cpu", 8 * MIB, repeats=3)
    assert gbps == pytest.approx(2 * 8 * MIB / timing.median_s / 1e9)
    shape = (64, 128, 256)
    timing, tflops = measure_matmul("cpu", "float32", shape, repeats=3)
    assert tflops == pytest.approx(2 * 64 * 128 * 256 / timing.median_s / 1e12)
    with pytest.raises(BadInput):
        measure_copy_bandwidth("cpu", 1000)


def test_default_matmul_shape_caps_width():
    assert default_matmul_shape("cpu", 768) == (512, 768, 3072)
    assert default_matmul_shape("cpu", 7168) == (512, 4096, 16384)
    assert default_matmul_shape("cuda") == (8192, 8192, 8192)
