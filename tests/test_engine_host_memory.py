"""host_memory: huge-page-backed zeros behave as torch.zeros; the allocator tuning is idempotent."""
from __future__ import annotations

import sys
from pathlib import Path

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


def _mapping_of(address: int) -> dict[str, str]:
    """The /proc/self/smaps entry (field -> value) of the mapping that holds `address`."""
    entry: dict[str, str] = {}
    inside = False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):  # a mapping's first line: start-end perms offset dev inode [path]
            if inside:
                return entry
            start, end = (int(part, 16) for part in head.split("-"))
            inside = start <= address < end
        elif inside:
            key, _, value = line.partition(":")
            entry[key] = value.strip()
    return entry


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="THP is a Linux feature")
def test_large_tensors_are_advised_for_huge_pages() -> None:
    """What the engine controls: the range is madvised (MADV_HUGEPAGE shows as `hg` in its mapping's VmFlags).

    Whether the kernel then hands out 2 MiB pages depends on its free, unfragmented memory (a shared CI runner
    may have none), so the pages themselves are not asserted."""
    if not host_memory.huge_pages_enabled():
        pytest.skip("no libc to madvise with here: every tensor takes the plain path")
    if not Path("/sys/kernel/mm/transparent_hugepage/enabled").exists():
        pytest.skip("this kernel has no transparent huge pages: madvise refuses MADV_HUGEPAGE")
    tensor = host_memory.zeros((4096, 2, 16, 12, 64), torch.bfloat16)  # 192 MiB
    mapping = _mapping_of(tensor.data_ptr())
    assert mapping, "the tensor's address is in no mapping of /proc/self/smaps"
    if "VmFlags" not in mapping:
        pytest.skip("this kernel's smaps has no VmFlags")
    assert "hg" in mapping["VmFlags"].split(), f"the 192 MiB tensor is not advised for huge pages: {mapping['VmFlags']}"
    plain = torch.zeros((4096, 2, 16, 12, 64), dtype=torch.bfloat16)
    plain_flags = _mapping_of(plain.data_ptr()).get("VmFlags", "").split()
    assert "hg" not in plain_flags, "the check cannot tell advised from plain memory"
    del tensor, plain


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


def _needs_huge_pages() -> None:
    if not host_memory.huge_pages_enabled():
        pytest.skip("no libc to madvise with here: weights take plain torch.empty")


def test_weights_are_carved_one_after_another_from_a_huge_page_chunk() -> None:
    """Small packed weights share 2 MiB pages: consecutive, cache-line aligned, not overlapping, in one chunk."""
    _needs_huge_pages()
    keep = host_memory.weight_buffer((8, 8), torch.bfloat16)  # whatever chunk is current; start a fresh one below
    host_memory._weight_chunks._current.clear()
    shapes = [(2304, 768), (768, 768), (3, 5), (3072, 768)]
    tensors = [host_memory.weight_buffer(shape, torch.bfloat16) for shape in shapes]
    chunk = tensors[0]._base
    assert all(t._base is chunk for t in tensors), "one chunk for weights that fit in it"
    assert tensors[0].data_ptr() % host_memory.HUGE_PAGE == 0
    for t, shape in zip(tensors, shapes):
        assert t.shape == shape and t.dtype == torch.bfloat16 and t.is_contiguous() and t.data_ptr() % 64 == 0
    for a, b in zip(tensors, tensors[1:]):
        assert a.data_ptr() + a.numel() * 2 <= b.data_ptr() < a.data_ptr() + a.numel() * 2 + 64
    for i, t in enumerate(tensors):  # each writable over its whole extent without touching the others
        t.fill_(i + 1)
    assert [float(t.float().mean()) for t in tensors] == [1.0, 2.0, 3.0, 4.0]
    assert tensors[-1].data_ptr() + tensors[-1].numel() * 2 <= chunk.data_ptr() + chunk.numel()
    del keep


def test_a_full_chunk_gives_way_to_a_new_one_and_a_big_weight_gets_its_own() -> None:
    _needs_huge_pages()
    host_memory._weight_chunks._current.clear()
    third = host_memory.WEIGHT_CHUNK // 2 // 3 - 64  # bf16 elements: three fit in a chunk with their alignment
    first, second, third_one, fourth = (host_memory.weight_buffer((third,), torch.bfloat16) for _ in range(4))
    assert first._base is second._base is third_one._base and fourth._base is not first._base
    assert fourth.data_ptr() % host_memory.HUGE_PAGE == 0
    big = host_memory.weight_buffer((host_memory.WEIGHT_CHUNK // 2 + 1,), torch.bfloat16)
    assert big._base is not fourth._base and big.data_ptr() % host_memory.HUGE_PAGE == 0
    after = host_memory.weight_buffer((16,), torch.bfloat16)
    assert after._base is fourth._base, "a big weight does not end the current chunk"


def test_a_chunk_goes_when_its_last_weight_goes() -> None:
    """An engine that closes gives its weights' memory back: the arena holds its chunk only weakly."""
    _needs_huge_pages()
    import gc

    host_memory._weight_chunks._current.clear()
    weight = host_memory.weight_buffer((1024, 1024), torch.bfloat16)
    chunk = host_memory._weight_chunks._current[torch.bfloat16][0]
    assert chunk() is weight._base
    del weight
    gc.collect()
    assert chunk() is None
    again = host_memory.weight_buffer((1024, 1024), torch.bfloat16)
    assert again.data_ptr() % host_memory.HUGE_PAGE == 0  # a fresh chunk starts on a 2 MiB boundary


def test_weight_buffers_are_plain_with_huge_pages_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIE_HUGE_PAGES", "0")
    tensor = host_memory.weight_buffer((2304, 768), torch.bfloat16)
    assert tensor._base is None and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
