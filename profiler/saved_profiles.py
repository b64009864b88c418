"""Finding a saved `HardwareProfile` that describes this machine, so `pie tune` need not profile again.

A profile matches when it was taken on this host (hostname hash), of the same device kind, for the
same model and dtype, with a decode fit, and (when it records one) the same capability record: a
profile taken with the ISA limited, or before a driver or CPU change, describes another device.
Left out: where the folder is (the CLI's default, `.pie/profiles`) and loading (HardwareProfile.load).
"""
from __future__ import annotations

import json
from pathlib import Path

from pie_core.capability import DeviceCapability
from pie_core.device_probe import detect_capability
from pie_core.dtypes import canonical_dtype
from pie_core.fingerprint import hostname_hash


def saved_profile(folder: Path, model: str, dtype: str, device: str = "cpu") -> Path | None:
    """The newest profile in `folder` taken on this host (by hostname hash) of `device` for this model and
    dtype; a profile that records a capability must match this device's (an ISA-limited run is another device)."""
    if not folder.is_dir():
        return None
    wanted_dtype = canonical_dtype(dtype)
    matches = []
    for path in folder.glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not isinstance(data, dict) or data.get("model") != model or not data.get("decode_fit"):
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
