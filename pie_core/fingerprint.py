"""Machine fingerprint: what a profile was measured on, so results from different machines never mix.

Collected: CPU model name and identity (vendor, family, model number, stepping: `lscpu` calls
three EPYC generations "AMD EPYC" alike, the numbers tell them apart), core count, RAM, GPU name, memory and compute capability, NVIDIA driver,
torch / CUDA / Python versions, OS, a hash of the hostname (the name itself is not stored), and
the device's capability record (pie_core/capability.py: the ISA torch dispatches to, the CPU
features that decide the fast paths, the dtypes it multiplies natively).
`fingerprint_slug` turns it into a short file-name-safe key for `.pie/profiles/`.

Left out: anything that changes from run to run (load, free memory, clocks) and serial numbers.
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import socket
import subprocess
from typing import Any

from pie_core.device_probe import detect_capability
from pie_core.sizes import total_host_bytes


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpuinfo_fields(text: str) -> dict[str, str]:
    """The first processor's `key: value` lines of /proc/cpuinfo (later processors repeat them)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, separator, value = line.partition(":")
        key = key.strip()
        if not separator or not key:
            continue
        if key in fields and key == "processor":
            break
        fields.setdefault(key, value.strip())
    return fields


def _number(text: str | None) -> int | str | None:
    """'25' -> 25, '0xd0c' -> 3340; anything else as given (None stays None)."""
    if text is None:
        return None
    try:
        return int(text, 0)
    except ValueError:
        return text.strip() or None


def cpu_identity_from_cpuinfo(text: str) -> dict[str, Any]:
    """Vendor, family, model number and stepping from /proc/cpuinfo text (x86 and ARM spellings)."""
    fields = _cpuinfo_fields(text)
    if "vendor_id" in fields or "cpu family" in fields:  # x86
        return {"cpu_vendor": fields.get("vendor_id"), "cpu_family": _number(fields.get("cpu family")),
                "cpu_model_number": _number(fields.get("model")), "cpu_stepping": _number(fields.get("stepping"))}
    if "CPU implementer" in fields:  # ARM: implementer, architecture, part number, variant.revision
        variant, revision = _number(fields.get("CPU variant")), _number(fields.get("CPU revision"))
        return {"cpu_vendor": fields.get("CPU implementer"), "cpu_family": _number(fields.get("CPU architecture")),
                "cpu_model_number": _number(fields.get("CPU part")), "cpu_stepping": f"{variant}.{revision}"}
    return {}


def cpu_identity_from_processor(text: str) -> dict[str, Any]:
    """The same from Windows' `platform.processor()`: 'Intel64 Family 6 Model 167 Stepping 1, GenuineIntel'."""
    match = re.search(r"Family (\d+) Model (\d+) Stepping (\d+), (\w+)", text or "")
    if not match:
        return {}
    return {"cpu_vendor": match[4], "cpu_family": int(match[1]), "cpu_model_number": int(match[2]),
            "cpu_stepping": int(match[3])}


def _sysctl(name: str) -> str | None:
    try:
        result = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def cpu_identity() -> dict[str, Any]:
    """{'cpu_vendor', 'cpu_family', 'cpu_model_number', 'cpu_stepping'} of this CPU; keys it cannot read are None.

    Linux: /proc/cpuinfo. macOS: sysctl machdep.cpu.* (Intel) or the chip's brand string (Apple
    silicon, whose brand string names the chip). Windows: platform.processor().
    """
    empty = {"cpu_vendor": None, "cpu_family": None, "cpu_model_number": None, "cpu_stepping": None}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            found = cpu_identity_from_cpuinfo(cpuinfo.read())
    except OSError:
        found = {}
    if not found and platform.system() == "Darwin":
        vendor = _sysctl("machdep.cpu.vendor")
        found = {"cpu_vendor": vendor or "Apple", "cpu_family": _number(_sysctl("machdep.cpu.family")),
                 "cpu_model_number": _number(_sysctl("machdep.cpu.model")) if vendor else _sysctl("machdep.cpu.brand_string"),
                 "cpu_stepping": _number(_sysctl("machdep.cpu.stepping"))}
    if not found:
        found = cpu_identity_from_processor(platform.processor())
    return {**empty, **found}


def hostname_hash() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:12]


def nvidia_driver_version() -> str | None:
    """The driver version from nvidia-smi, or None when there is no driver (or it does not answer)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = result.stdout.strip().splitlines()
    return lines[0].strip() if result.returncode == 0 and lines else None


def gpu_details(device: str) -> dict[str, Any]:
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return {"gpu_name": None, "gpu_memory_bytes": None, "gpu_compute_capability": None, "gpu_count": 0}
    properties = torch.cuda.get_device_properties(torch.device(device))
    return {"gpu_name": properties.name, "gpu_memory_bytes": int(properties.total_memory),
            "gpu_compute_capability": f"{properties.major}.{properties.minor}",
            "gpu_count": torch.cuda.device_count()}


def collect_fingerprint(device: str) -> dict[str, Any]:
    import torch

    fingerprint: dict[str, Any] = {
        "cpu_model": cpu_model(),
        **cpu_identity(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "host_memory_bytes": total_host_bytes(),
        **gpu_details(device),
        "nvidia_driver": nvidia_driver_version() if device.startswith("cuda") else None,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "python_version": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "hostname_sha256": hostname_hash(),
        "capability": detect_capability(device).to_dict(),
    }
    return fingerprint


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def fingerprint_slug(fingerprint: dict[str, Any], device: str) -> str:
    """'cpu-2c-<hash8>' or 'nvidia-h100-80gb-hbm3-<hash8>': stable per machine and device kind."""
    host = str(fingerprint.get("hostname_sha256", "unknown"))[:8]
    if device.startswith("cuda") and fingerprint.get("gpu_name"):
        return f"{_slug(str(fingerprint['gpu_name']))}-{host}"
    return f"cpu-{fingerprint.get('cpu_cores', 0)}c-{host}"
