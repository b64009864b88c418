"""Capability records of the machines pie meets, for injecting into tests (tests only).

An AMD EPYC Zen 3 (AVX2 only), a Skylake-X (AVX-512 without BF16), an EPYC Zen 4 (AVX-512 BF16),
a Sapphire Rapids Xeon (AMX), ARM servers with and without bf16, an x86 CPU reporting no features,
and CUDA GPUs of compute capability 7.0, 8.0 and 9.0.
"""
from pie_core.capability import DeviceCapability

AVX2 = ("avx2", "fma", "f16c")
AVX512 = AVX2 + ("avx512f", "avx512bw", "avx512vl", "avx512dq")
RECORDS = {
    "zen3-avx2": DeviceCapability("cpu", "x86_64", "AVX2", AVX2),
    "skylake-avx512": DeviceCapability("cpu", "x86_64", "AVX512", AVX512),
    "zen4-avx512-bf16": DeviceCapability("cpu", "x86_64", "AVX512", AVX512 + ("avx512_bf16",)),
    "xeon-amx": DeviceCapability("cpu", "x86_64", "AVX512", AVX512 + ("avx512_bf16", "amx_tile", "amx_bf16")),
    "arm-bf16": DeviceCapability("cpu", "aarch64", "DEFAULT", ("asimd", "asimdhp", "fphp", "bf16")),
    "arm-plain": DeviceCapability("cpu", "aarch64", "DEFAULT", ("asimd",)),
    "x86-no-features": DeviceCapability("cpu", "x86_64", "DEFAULT", ()),
    "cuda-7.0": DeviceCapability("cuda", "x86_64", cuda_compute_capability="7.0", device_name="V100"),
    "cuda-8.0": DeviceCapability("cuda", "x86_64", cuda_compute_capability="8.0", device_name="A100"),
    "cuda-9.0": DeviceCapability("cuda", "x86_64", cuda_compute_capability="9.0", device_name="H100"),
}
CPU_RECORDS = {name: cap for name, cap in RECORDS.items() if cap.kind == "cpu"}
