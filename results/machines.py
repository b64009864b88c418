"""The machine rule of `pie compare`: no verdict across machines unless the user asks for one.

Two runs measure the code only when they ran on the same kind of machine. Shared CI runners of one
label differ by more than a 5% rule (three EPYC generations all called "AMD EPYC"), so `compare`
refuses (exit 2) when any record of either side differs from the others in what decides speed: the
CPU's model name, vendor, family, model number and stepping, its core count, the device's capability
record (ISA, features, runnable dtypes, GPU compute capability) and the GPU's name and count. A side
whose own records mix machines counts as differing too. `--allow-different-machines` gives the
verdict anyway; `mark_headline` then marks it, so every output format says so.

A field that no record has is ignored (a record older than the field); one that some records lack
differs. Runs of the simulator (fingerprint `simulated`) are measured in virtual time, so for them
the machine rule does not apply. Left out: the other fingerprint fields (hostname, RAM, versions),
which `compare` reports as a warning only: two identical self-hosted machines may compare.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pie_core.errors import BadInput
from results.record import RunRecord

IDENTITY_KEYS = ("cpu_model", "cpu_vendor", "cpu_family", "cpu_model_number", "cpu_stepping", "cpu_cores",
                 "capability", "gpu_name", "gpu_count", "gpu_compute_capability")
MARK = "different machines"
FIX = ("measure both sides in one job on one machine (examples/ci/ab.sh runs them interleaved), or pass "
       "--allow-different-machines for a verdict marked as such")


def machine_identity(fingerprint: dict[str, Any] | None) -> dict[str, Any]:
    """The fingerprint fields that decide speed; the capability record flattened to `capability.<field>`."""
    identity: dict[str, Any] = {}
    for key in IDENTITY_KEYS:
        value = (fingerprint or {}).get(key)
        if key == "capability" and isinstance(value, dict):
            identity.update({f"capability.{name}": field for name, field in value.items()})
        elif key in (fingerprint or {}):
            identity[key] = value
    return identity


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "none"
    return "missing" if value is None else str(value)


def _values(records: Sequence[RunRecord], key: str) -> list[str]:
    return sorted({_text(machine_identity(r.header.fingerprint).get(key)) for r in records})


def machine_differences(before_name: str, before: Sequence[RunRecord], after_name: str,
                        after: Sequence[RunRecord]) -> tuple[str, ...]:
    """'cpu_family: 25 -> 26' per identity field that is not the same in every record of both sides."""
    records = list(before) + list(after)
    if records and all((r.header.fingerprint or {}).get("simulated") for r in records):
        return ()
    keys = sorted({k for r in records for k in machine_identity(r.header.fingerprint)})
    differences = []
    for key in keys:
        old, new = _values(before, key), _values(after, key)
        if len(set(old) | set(new)) <= 1:
            continue
        mixed = [name for name, values in ((before_name, old), (after_name, new)) if len(values) > 1]
        note = f" ({' and '.join(mixed)} mix{'es' if len(mixed) == 1 else ''} machines)" if mixed else ""
        differences.append(f"{key}: {' | '.join(old)} -> {' | '.join(new)}{note}")
    return tuple(differences)


def check_same_machine(before_name: str, before: Sequence[RunRecord], after_name: str, after: Sequence[RunRecord],
                       allow: bool) -> tuple[str, ...]:
    """The differences (empty on one machine); a BadInput naming them unless `allow`."""
    differences = machine_differences(before_name, before, after_name, after)
    if differences and not allow:
        raise BadInput(f"refusing to compare runs from different machines ({'; '.join(differences)})", FIX)
    return differences


def machine_warning(differences: Sequence[str]) -> str:
    return (f"verdict across {MARK} (--allow-different-machines): {'; '.join(differences)}; part of any "
            "difference may come from the machines, not the code")


def mark_headline(headline: str, differences: Sequence[str]) -> str:
    """'OK: no rule fired' -> 'OK: no rule fired (different machines: cpu_family, cpu_model_number)'."""
    if not differences:
        return headline
    keys = ", ".join(dict.fromkeys(d.split(":", 1)[0] for d in differences))
    return f"{headline} ({MARK}: {keys})"
