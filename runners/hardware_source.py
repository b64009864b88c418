"""Where a run's hardware figures and its dtype come from: the one place that decides both.

A run is priced or planned on one hardware source:
- `preset`: a datasheet preset (`--hardware h100-pcie`);
- `profile`: a `pie profile` JSON (`--profile FILE`);
- `this device`: the machine the command runs on (its capability record; for `pie tune` and
  `--runner sim` also its saved profile of the model, or a quick one taken now).

`--dtype auto` follows the source: a preset's device choice, the dtype a profile was measured
in, this device's native choice, or the plan's (`pie bench --plan`). A named dtype is checked
against the source's capability record. Each function returns a `DtypeResolution` (what, and
why), which the CLI says once and the record keeps.

Left out: saying anything (the CLI renders), and loading the engine (the runners do).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pie_core.capability import DeviceCapability, DtypeResolution, resolve_dtype
from pie_core.dtypes import AUTO, canonical_dtype
from pie_core.errors import BadInput

DEFAULT_PROFILES_DIR = Path(".pie/profiles")  # where this machine's profiles are saved and found


@dataclass(frozen=True)
class HardwareSource:
    """What a run is priced or planned on: `kind` preset | profile | device, and its hardware figures."""

    kind: str
    label: str  # "preset h100-pcie" | "profile PATH" | "this machine's saved profile PATH" ...
    spec: Any  # planner.hardware.HardwareSpec
    path: str | None = None  # the profile's file, for a profile

    @property
    def options(self) -> dict[str, str]:
        """The sim runner's options naming this source."""
        return {"hardware": self.spec.name} if self.kind == "preset" else {"profile": str(self.path)}


def dtype_on_device(requested: str, device: str) -> DtypeResolution:
    """`--dtype` (auto or a name) against `device`'s capability record (cpu, cuda, cuda:N)."""
    from pie_core.device_probe import detect_capability

    return resolve_dtype(canonical_dtype(requested, allow_auto=True), detect_capability(device))


def dtype_from_plan(plan: Any, requested: str, device: str) -> DtypeResolution:
    """`pie bench --plan`: auto is the plan's dtype; a named dtype wins, checked against the device."""
    if canonical_dtype(requested, allow_auto=True) == AUTO:
        return DtypeResolution(plan.dtype, AUTO, "native", "the plan's")
    return dtype_on_device(requested, device)


def dtype_for_hardware(spec: Any, label: str, requested: str) -> DtypeResolution:
    """`--dtype` for a preset or a profile: auto is the profile's own dtype or the preset device's choice."""
    name = canonical_dtype(requested, allow_auto=True)
    if spec.source == "profile" and name == AUTO:
        return DtypeResolution(spec.profile_dtype, AUTO, "native", f"the dtype {label} was measured in")
    if spec.capability:
        return resolve_dtype(name, DeviceCapability.from_dict(spec.capability))
    return DtypeResolution(name, name, "native", f"as {label} was measured")


def explicit_source(hardware: str | None, profile: Path | str | None) -> HardwareSource | None:
    """The preset or profile the user named; None when neither was given."""
    if hardware and profile:
        raise BadInput("--hardware and --profile both given", "use a preset or a measured profile, not both")
    if hardware:
        from planner.hardware import preset

        spec = preset(str(hardware))
        return HardwareSource("preset", f"preset {spec.name}", spec)
    if profile:
        from planner.hardware import from_profile
        from profiler.hardware_profile import HardwareProfile

        return HardwareSource("profile", f"profile {profile}",
                              from_profile(HardwareProfile.load(Path(profile)), source=f"profile '{profile}'"), str(profile))
    return None


def saved_source(model: str, requested: str, device: str = "cpu", folder: Path = DEFAULT_PROFILES_DIR) -> HardwareSource:
    """This machine's saved profile of `model` in the dtype `requested` resolves to here (`--runner sim`'s default)."""
    from profiler.saved_profiles import saved_profile

    wanted = dtype_on_device(requested, device).dtype
    path = saved_profile(folder, model, wanted, device)
    if path is None:
        raise BadInput(f"--runner sim needs hardware to simulate, and {folder} holds no profile of this "
                       f"machine for {model} ({wanted})",
                       f"pass --hardware PRESET (e.g. h100-pcie) or --profile FILE, or run `pie profile --model {model}` first")
    return explicit_source(None, path)


def this_machine_source(model: str, dtype: str, device: str, say: Callable[[str], None],
                        folder: Path = DEFAULT_PROFILES_DIR) -> HardwareSource:
    """`pie tune` without --hardware/--profile: this machine's saved profile, else a quick one taken now (saved)."""
    from planner.hardware import from_profile
    from profiler.saved_profiles import saved_or_quick_profile

    profile, label = saved_or_quick_profile(folder, model, dtype, device, say)
    return HardwareSource("device", label, from_profile(profile, source=label))
