"""Target presets: CPUs and boards as data, chosen by name, inline JSON or a JSON file."""

from edgetvm.targets.presets import TargetPreset, list_presets, resolve_target

__all__ = ["TargetPreset", "list_presets", "resolve_target"]
