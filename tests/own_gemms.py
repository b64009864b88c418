"""Skips for the engine's own bf16 kernels (GEMMs, prefill attention), shared by the test files that exercise them."""
from __future__ import annotations

import pytest


def amx_or_skip() -> None:
    """Skip where this CPU lacks AMX tiles or AVX512-BF16 (as it reports them, whatever ONEDNN_MAX_CPU_ISA lets the
    engine choose: the kernel itself runs on the hardware); where it has them, a library that fails to build or
    fails its smoke test is a failure, not a skip."""
    from pie_core.device_probe import detect_capability
    from runners.engine import c_kernels

    if not {"amx_tile", "amx_bf16", "avx512_bf16"} <= set(detect_capability("cpu").cpu_flags):
        pytest.skip("this CPU has no AMX tiles or AVX512-BF16 for the AMX GEMM")
    assert c_kernels.load(c_kernels.AMX) is not None, c_kernels.load_error(c_kernels.AMX)


def _avx512bf16_or_skip(carries: str, what: str) -> None:
    """Skip where this CPU lacks AVX512-BF16; where it has it, an avx512bf16 library without the kernel that
    `c_kernels.<carries>` looks for is a failure, not a skip."""
    from pie_core.capability import c_variant
    from pie_core.device_probe import detect_capability
    from runners.engine import c_kernels

    if c_variant(detect_capability("cpu")) != "avx512bf16":
        pytest.skip(f"this CPU has no AVX512-BF16 for the engine's {what}")
    assert getattr(c_kernels, carries)(c_kernels.load("avx512bf16")), c_kernels.load_error("avx512bf16")


def avx512_gemm_or_skip() -> None:
    _avx512bf16_or_skip("has_gemm", "vector-unit GEMM")


def avx512_prefill_or_skip() -> None:
    _avx512bf16_or_skip("has_prefill", "prefill attention")


OWN_GEMMS = {"amx": amx_or_skip, "avx512bf16": avx512_gemm_or_skip}  # Linear's prepack value -> its skip
