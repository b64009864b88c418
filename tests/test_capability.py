"""dtype and kernels are pure functions of the capability record: every branch, with injected records
(tests/capability_records.py: the machines pie meets)."""
import pytest

from pie_core.capability import C_VARIANT_FLAGS, DeviceCapability, choose_dtype, dtype_support, resolve_dtype, select_kernels
from pie_core.device_probe import detect_capability, read_cpu_flags
from pie_core.errors import BadInput

from capability_records import AVX2, RECORDS

# record -> (auto dtype, prepack for bf16, C variant for the auto dtype or None)
EXPECTED = {
    "zen3-avx2": ("float32", False, "avx2"),
    "skylake-avx512": ("float32", True, "avx512"),
    "zen4-avx512-bf16": ("bfloat16", True, "avx512bf16"),
    "xeon-amx": ("bfloat16", True, "avx512bf16"),
    "arm-bf16": ("bfloat16", False, "neon-bf16"),
    "arm-plain": ("float32", False, "neon"),
    "x86-no-features": ("float32", False, "portable"),
    "cuda-7.0": ("float16", False, None),
    "cuda-8.0": ("bfloat16", False, None),
    "cuda-9.0": ("bfloat16", False, None),
}


@pytest.mark.parametrize("name", RECORDS)
def test_dtype_and_kernels_for_each_machine(name):
    cap = RECORDS[name]
    dtype, prepack, variant = EXPECTED[name]
    assert choose_dtype(cap).dtype == dtype
    assert select_kernels(cap, "bfloat16").prepack is prepack
    kernels = select_kernels(cap, dtype)
    assert kernels.c_variant == variant
    assert kernels.decode == ("c" if variant else "triton" if cap.kind == "cuda" else "torch")
    assert kernels.c_flags == (C_VARIANT_FLAGS[variant] if variant else ())
    assert all("native" not in flag for flag in kernels.c_flags)  # explicit ISA flags only
    assert DeviceCapability.from_dict(cap.to_dict()) == cap
    assert cap.to_dict()["auto_dtype"] == dtype


def test_native_and_emulated_dtypes():
    assert dtype_support(RECORDS["zen3-avx2"], "bfloat16") == "emulated"
    assert dtype_support(RECORDS["zen4-avx512-bf16"], "bfloat16") == "native"
    assert dtype_support(RECORDS["zen4-avx512-bf16"], "float16") == "emulated"
    assert dtype_support(RECORDS["arm-bf16"], "float16") == "native"
    assert dtype_support(RECORDS["cuda-7.0"], "bfloat16") == "emulated"
    assert dtype_support(RECORDS["cuda-7.0"], "float16") == "native"
    no_fp16 = RECORDS["zen3-avx2"].with_changes(runnable_dtypes=("bfloat16", "float32"))
    assert dtype_support(no_fp16, "float16") == "unsupported"


def test_isa_limits_mask_what_the_cpu_reports():
    """ATEN_CPU_CAPABILITY=avx2 on an AVX-512 BF16 CPU, or ONEDNN_MAX_CPU_ISA=AVX2, choose as an AVX2 CPU does."""
    zen4 = RECORDS["zen4-avx512-bf16"]
    torch_limited = zen4.with_changes(torch_cpu_capability="AVX2")
    assert torch_limited.features == frozenset(AVX2)
    assert choose_dtype(torch_limited).dtype == "float32" and c_variant_of(torch_limited) == "avx2"
    onednn_limited = zen4.with_changes(onednn_max_isa="AVX2")
    assert choose_dtype(onednn_limited).dtype == "float32"
    assert not select_kernels(onednn_limited, "bfloat16").prepack
    assert c_variant_of(onednn_limited) == "avx512bf16"  # the C kernel is not oneDNN's: only torch's limit binds it
    below_bf16 = zen4.with_changes(onednn_max_isa="AVX512_CORE")
    assert choose_dtype(below_bf16).dtype == "float32" and select_kernels(below_bf16, "bfloat16").prepack


def test_amx_gemm_only_where_amx_is_in_effect_for_bf16():
    """The AMX GEMM is chosen for bf16 where AMX tiles and AVX512-BF16 are in effect, and oneDNN's ISA limit binds it
    (it is oneDNN's stand-in): limited below AMX, the record falls back to oneDNN prepacking."""
    xeon = RECORDS["xeon-amx"]
    assert select_kernels(xeon, "bfloat16").amx and select_kernels(xeon, "bfloat16").prepack
    assert any("AMX" in why for why in select_kernels(xeon, "bfloat16").reasons)
    assert not select_kernels(xeon, "float32").amx and not select_kernels(xeon, "float16").amx
    for name in ("zen4-avx512-bf16", "skylake-avx512", "zen3-avx2", "arm-bf16", "cuda-8.0"):
        assert not select_kernels(RECORDS[name], "bfloat16").amx, name
    below_amx = xeon.with_changes(onednn_max_isa="AVX512_CORE_BF16")
    assert not select_kernels(below_amx, "bfloat16").amx and select_kernels(below_amx, "bfloat16").prepack
    assert select_kernels(xeon.with_changes(onednn_max_isa="AVX512_CORE_AMX"), "bfloat16").amx
    assert not select_kernels(xeon.with_changes(torch_cpu_capability="AVX2"), "bfloat16").amx


def c_variant_of(cap):
    return select_kernels(cap, "float32").c_variant


def test_no_c_kernel_for_fp16_caches():
    kernels = select_kernels(RECORDS["arm-bf16"], "float16")
    assert kernels.decode == "torch" and kernels.c_variant is None


def test_resolve_dtype_auto_named_and_bad():
    zen3 = RECORDS["zen3-avx2"]
    auto = resolve_dtype("auto", zen3)
    assert (auto.dtype, auto.requested, auto.support) == ("float32", "auto", "native")
    assert "emulates bfloat16" in auto.message()
    named = resolve_dtype("bf16", zen3)
    assert (named.dtype, named.support) == ("bfloat16", "emulated")
    with pytest.raises(BadInput) as unknown:
        resolve_dtype("int8", zen3)
    assert "unknown dtype 'int8' (hint: accepted: auto, bfloat16 (bf16), float16 (fp16, half), float32" in unknown.value.one_line()
    no_fp16 = zen3.with_changes(runnable_dtypes=("bfloat16", "float32"))
    with pytest.raises(BadInput) as unrunnable:
        resolve_dtype("float16", no_fp16)
    assert "float16 does not run on cpu x86_64 AVX2" in unrunnable.value.one_line()
    assert "use --dtype auto (float32) or one of: bfloat16, float32" in unrunnable.value.one_line()


def test_read_cpu_flags_keeps_the_deciding_features(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 amx_tile\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert read_cpu_flags(str(x86)) == ("amx_tile", "avx2", "avx512_bf16", "avx512f", "fma")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm aes bf16 sve\n")
    assert read_cpu_flags(str(arm)) == ("asimd", "bf16", "sve")
    assert read_cpu_flags(str(tmp_path / "missing")) == ()


def test_this_machine_has_a_consistent_record():
    cap = detect_capability("cpu")
    assert cap.kind == "cpu" and "float32" in cap.runnable_dtypes
    assert choose_dtype(cap).dtype in ("bfloat16", "float32")
    assert detect_capability("cpu") is cap  # measured once per process
