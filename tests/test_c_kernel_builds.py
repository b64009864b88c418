"""The engine's C library (decode attention and greedy argmax) builds, and computes, for every ISA variant: natively where this CPU runs it,
compiled only where it does not, and for aarch64 with a cross compiler under qemu-aarch64 when the
machine has them (scripts/test.sh installs both where apt can; otherwise those cases skip and say so)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pie_core.capability import C_VARIANT_FLAGS, c_variant
from pie_core.device_probe import detect_capability
from runners.engine.c_kernels import SOURCES

REPO = Path(__file__).resolve().parents[1]
KERNELS = [str(REPO / "runners" / "engine" / name) for name in SOURCES]
HARNESS = REPO / "tests" / "c" / "paged_decode_check.c"
X86 = ("portable", "avx2", "avx512", "avx512bf16")
ARM = ("neon", "neon-bf16")


def _hardware():
    """This CPU's record without the env-set ISA limits (they do not bind C code)."""
    return detect_capability("cpu").with_changes(torch_cpu_capability=None)


@pytest.mark.parametrize("variant", X86)
def test_x86_variant_builds_and_computes_where_the_cpu_runs_it(variant, tmp_path):
    host = _hardware()
    if not host.is_x86:
        pytest.skip(f"x86 variants are built natively; this machine is {host.arch}")
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler here: the engine takes its PyTorch path")
    binary = tmp_path / "check"
    runs_here = X86.index(variant) <= X86.index(c_variant(host))
    command = [compiler, "-O3", "-fopenmp", *C_VARIANT_FLAGS[variant], *KERNELS]
    command += [str(HARNESS), "-o", str(binary), "-lm"] if runs_here else ["-c", "-o", str(tmp_path / "k.o")]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)
    if runs_here:
        result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("variant", ARM)
def test_aarch64_variant_builds_and_computes_under_qemu(variant, tmp_path):
    compiler, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    if compiler is None or qemu is None:
        pytest.skip("needs aarch64-linux-gnu-gcc and qemu-aarch64 (Debian: gcc-aarch64-linux-gnu, qemu-user)")
    binary = tmp_path / "check"
    subprocess.run([compiler, "-O3", "-fopenmp", "-static", *C_VARIANT_FLAGS[variant], *KERNELS, str(HARNESS),
                    "-o", str(binary), "-lm"], check=True, capture_output=True, text=True, timeout=120)
    result = subprocess.run([qemu, str(binary)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_amx_gemm_library_compiles_with_its_flags(tmp_path):
    """The AMX GEMM source compiles with explicit AMX flags on any x86 compiler that knows them (it runs only where
    the CPU has AMX: tests/test_engine_linear.py computes with it there, and c_kernels' smoke test guards the load)."""
    from runners.engine.c_kernels import AMX, AMX_SOURCES

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or not _hardware().is_x86:
        pytest.skip("needs an x86 C compiler")
    probe = subprocess.run([compiler, "-mamx-tile", "-mamx-bf16", "-x", "c", "-c", "-o", str(tmp_path / "p.o"), "-"],
                           input="int x;\n", capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"this compiler has no AMX flags (the engine then stays on oneDNN): {probe.stderr.strip()[:200]}")
    sources = [str(REPO / "runners" / "engine" / name) for name in AMX_SOURCES]
    subprocess.run([compiler, "-O3", "-fopenmp", "-Wall", "-Werror", *C_VARIANT_FLAGS[AMX], "-c", *sources,
                    "-o", str(tmp_path / "amx.o")], check=True, capture_output=True, text=True, timeout=120)
