"""host_memory: huge-page-backed zeros behave as torch.zeros; the allocator tuning is idempotent."""
from __future__ import annotations

import sys

import pytest
import torch

from runners.engine import host_memory


@pytest.mark.parametrize("shape", [(3, 5), (64, 2, 16, 12, 64), (1000, 2, 16, 2, 64)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_zeros_is_a_zeroed_contiguous_tensor(shape, dtype) -> None:
    tensor = host_memory.zeros(shape, dtype)
    assert tensor.shape == shape and tensor.dtype == dtype and tensor.is_contiguous()
    assert tensor.device.type == "cpu" and not bool(tensor.any())
    tensor.fill_(1)  # writable over its whole extent
    assert float(tensor.float().sum()) == tensor.numel()


def test_large_tensors_are_aligned_to_huge_pages() -> None:
    if not host_memory.huge_pages_enabled():
        pytest.skip("no libc to madvise with here: every tensor takes the plain path")
    tensor = host_memory.zeros((64, 2, 16, 12, 64), torch.bfloat16)  # 3 MiB < 2 huge pages: plain
    big = host_memory.zeros((256, 2, 16, 12, 64), torch.bfloat16)  # 12 MiB: carved from an over-sized buffer
    assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    assert big.data_ptr() % host_memory.HUGE_PAGE == 0
    assert big.untyped_storage().nbytes() == big.numel() * big.element_size() + host_memory.HUGE_PAGE


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="THP is a Linux feature")
def test_huge_pages_are_used_when_the_kernel_offers_them() -> None:
    mode = open("/sys/kernel/mm/transparent_hugepage/enabled").read() if \
        __import__("os").path.exists("/sys/kernel/mm/transparent_hugepage/enabled") else "[never]"
    if "[never]" in mode or not host_memory.huge_pages_enabled():
        pytest.skip(f"transparent huge pages off here ({mode.strip()})")

    def huge_kib() -> int:
        return sum(int(line.split()[1]) for line in open("/proc/self/smaps_rollup") if line.startswith("AnonHugePages"))

    before = huge_kib()
    tensor = host_memory.zeros((4096, 2, 16, 12, 64), torch.bfloat16)  # 192 MiB
    assert huge_kib() - before > 0, "no 2 MiB page backs a madvised 192 MiB tensor"
    del tensor


def test_switches_turn_both_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIE_HUGE_PAGES", "0")
    assert not host_memory.huge_pages_enabled()
    tensor = host_memory.zeros((256, 2, 16, 12, 64), torch.bfloat16)
    assert not bool(tensor.any())
    assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()  # the plain path
    monkeypatch.setenv("PIE_MALLOC_TUNING", "0")
    monkeypatch.setattr(host_memory, "_malloc_tuned", False)
    assert host_memory.keep_freed_memory() is False


def test_keep_freed_memory_is_idempotent() -> None:
    first = host_memory.keep_freed_memory()
    assert host_memory.keep_freed_memory() == first
