"""Probing this machine: its capability record and its free device memory (the parts of the ground
layer that touch torch or the OS; torch is imported inside the functions, so importing this is cheap).

Left out: deciding anything from what is found (pie_core/capability.py does that, torch-free).
"""
from __future__ import annotations

import os
import platform

from pie_core.capability import ARM_FEATURES, DTYPES, X86_FEATURES, DeviceCapability
from pie_core.errors import BadInput
from pie_core.sizes import free_host_bytes


def read_cpu_flags(path: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """The deciding features of the first CPU in /proc/cpuinfo ('flags' on x86, 'Features' on ARM)."""
    wanted = set(X86_FEATURES) | set(ARM_FEATURES)
    try:
        with open(path) as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return tuple(sorted(wanted & set(value.split())))
    except OSError:
        pass
    return ()


def _probe_dtypes(device: str) -> tuple[str, ...]:
    """Dtypes a tiny matmul runs in on `device` (a build without a kernel raises)."""
    import torch

    runnable = []
    for name in DTYPES:
        try:
            a = torch.ones(4, 8, dtype=getattr(torch, name), device=device)
            torch.matmul(a, a.t())
            runnable.append(name)
        except (RuntimeError, TypeError):
            continue
    return tuple(runnable)


_detected: dict[str, DeviceCapability] = {}


DEVICE_KINDS = ("cpu", "cuda")


def check_device(device: str) -> str:
    """`device` if it names a device of this machine: cpu, cuda or cuda:N (N below the GPUs torch sees).

    The one check of every command's --device (after `resolve_device` turned auto into a name)."""
    kind, colon, index = device.partition(":")
    if kind not in DEVICE_KINDS or (colon and not index.isdigit()) or (kind == "cpu" and colon and index != "0"):
        raise BadInput(f"unknown device '{device}'", "use cpu, cuda, cuda:N or auto")
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise BadInput(f"--device {device} asked for, but CUDA is not available here (torch {torch.__version__})",
                           "use --device cpu, or install a CUDA build of torch on a machine with a GPU")
        count = torch.cuda.device_count()
        if colon and int(index) >= count:
            raise BadInput(f"--device {device}: this machine has {count} CUDA device(s)",
                           f"use cuda:0 to cuda:{count - 1}, or cuda")
    return device


def resolve_device(device: str) -> str:
    """`auto` -> cuda when torch sees a CUDA device, else cpu; any other name as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def detect_capability(device: str = "cpu") -> DeviceCapability:
    """Measure this machine's record for `device` (cpu, cuda, cuda:N); cached per device in this process."""
    if device in _detected:
        return _detected[device]
    import torch

    kind = device.split(":")[0]
    cuda_cc = name = None
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise BadInput(f"device '{device}' asked for, but CUDA is not available", "use --device cpu")
        props = torch.cuda.get_device_properties(torch.device(device))
        cuda_cc, name = f"{props.major}.{props.minor}", props.name
    cap = DeviceCapability(
        kind=kind, arch=platform.machine().lower(), torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
        cpu_flags=read_cpu_flags(), onednn_max_isa=os.environ.get("ONEDNN_MAX_CPU_ISA") or None,
        cuda_compute_capability=cuda_cc, device_name=name, runnable_dtypes=_probe_dtypes(device))
    _detected[device] = cap
    return cap


def free_device_bytes(device: str) -> int:
    """Free memory on `device`: host memory for 'cpu'; for 'cuda' the driver's free figure plus what
    torch's caching allocator holds reserved but unused (freed tensors it keeps, which the driver
    counts as used although this process can allocate them again)."""
    if not device.startswith("cuda"):
        return free_host_bytes()
    import torch

    index = torch.device(device)
    free, _total = torch.cuda.mem_get_info(index)
    return int(free) + max(0, torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index))
