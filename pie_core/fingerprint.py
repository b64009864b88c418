"""Machine fingerprint: what a profile was measured on, so results from different machines never mix.

Collected: CPU model, core count, RAM, GPU name, memory and compute capability, NVIDIA driver,
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
