"""Finding a saved `HardwareProfile` that describes this machine, so `pie tune` need not profile again.

A profile matches when it was taken on this host (hostname hash), of the same device kind, for the
same model and dtype, with a decode fit, and (when it records one) the same capability record: a
profile taken with the ISA limited, or before a driver or CPU change, describes another device.
`default_profile_path` names a new profile in a folder by machine, device, model and dtype;
`saved_or_quick_profile` returns the saved one, or takes a quick profile now and saves it.
Left out: where the folder is (the CLI's default, `.pie/profiles`) and loading (HardwareProfile.load).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pie_core.capability import DeviceCapability
from pie_core.device_probe import detect_capability
from pie_core.dtypes import canonical_dtype
from pie_core.errors import BadInput
from pie_core.fingerprint import fingerprint_slug, hostname_hash
from pie_core.json_files import read_json_file


def saved_profile(folder: Path, model: str, dtype: str, device: str = "cpu") -> Path | None:
    """The newest profile in `folder` taken on this host (by hostname hash) of `device` for this model and
    dtype; a profile that records a capability must match this device's (an ISA-limited run is another device)."""
    if not folder.is_dir():
        return None
    wanted_dtype = canonical_dtype(dtype)
    matches = []
    for path in folder.glob("*.json"):
        try:
            data = read_json_file(path, "profile", "", "")
        except BadInput:
            continue  # not a readable profile: not this machine's (loading it by name says why)
        if not isinstance(data, dict) or data.get("model") != model or not data.get("decode_fit"):
            continue
        if not isinstance(data.get("fingerprint") or {}, dict) or not isinstance(data.get("created_at", ""), str):
            continue
        if (data.get("fingerprint") or {}).get("hostname_sha256") != hostname_hash():
            continue
        if wanted_dtype and data.get("dtype") != wanted_dtype or data.get("device") != device.split(":")[0]:
            continue
        recorded = (data.get("fingerprint") or {}).get("capability")
        if recorded and DeviceCapability.from_dict(recorded) != detect_capability(device):
            continue
        matches.append((data.get("created_at", ""), path))
    return max(matches)[1] if matches else None


def default_profile_path(profile: Any, folder: Path) -> Path:
    """Where a new `HardwareProfile` is saved in `folder`: machine and device slug, model, dtype."""
    model = Path(profile.model).name if profile.model else "no-layer"
    return folder / f"{fingerprint_slug(profile.fingerprint, profile.device)}-{model}-{profile.dtype}.json"


def saved_or_quick_profile(folder: Path, model: str, dtype: str, device: str, say: Callable[[str], None]) -> tuple[Any, str]:
    """(HardwareProfile, where it came from): this machine's saved profile of `device` for `model` in `dtype`,
    else a quick profile taken now and saved in `folder`; `say` reports which."""
    from profiler.hardware_profile import HardwareProfile
    from profiler.run import ProfileRequest, run_profile

    saved = saved_profile(folder, model, dtype, device)
    if saved is not None:
        say(f"no --hardware or --profile: using {saved}, this machine's saved profile for {model} "
            "(pass --profile or --hardware to choose)")
        return HardwareProfile.load(saved), f"profile '{saved}'"
    say(f"no --hardware or --profile: running a quick profile of this machine for {model} (once; it is saved)")
    measured = run_profile(ProfileRequest(device=device, dtype=dtype, model=model, quick=True))
    path = measured.save(default_profile_path(measured, folder))
    say(f"profile saved to {path}")
    return measured, "quick profile"
