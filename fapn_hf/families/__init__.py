"""The registry of model families: every sub-package of `fapn_hf.families` defines one `Family` as `FAMILY` and is
registered on import, so that a new family is one new folder (plus its shipped files in `fapn_hf.modeling`).

Families are found by `config.model_type` (`family_of`, which also works for remote-code copies of the classes) or
by preset name (`family_of_preset`). Importing this package registers every family with transformers' Auto classes.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from ..modeling.remote_code import register_family
from .base import SHIPPED_PACKAGE, ExportSpec, Family

FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Adds `family` to the registry and its classes to transformers' Auto classes. Preset names and model types
    are unique across families."""
    for other in FAMILIES.values():
        if other.name != family.name and (
            other.model_type == family.model_type or set(other.presets) & set(family.presets)
        ):
            raise ValueError(f"family {family.name!r} repeats a model type or preset name of {other.name!r}")
    FAMILIES[family.name] = family
    register_family(family.code, SHIPPED_PACKAGE)
    return family


def family_of(model_or_config: Any) -> Family:
    """The family of a model or config (or a model type string), by `model_type`."""
    if isinstance(model_or_config, str):
        model_type = model_or_config
    else:
        config = getattr(model_or_config, "config", model_or_config)
        model_type = getattr(config, "model_type", None)
    for family in FAMILIES.values():
        if family.model_type == model_type:
            return family
    known = ", ".join(f"{f.model_type!r} ({f.display_name})" for f in FAMILIES.values())
    raise ValueError(f"model type {model_type!r} is not a fapn_hf model family; known: {known}")


def find_family(model_or_config: Any) -> Family | None:
    """The family of a model or config, or None for a model that is not one of fapn_hf's."""
    try:
        return family_of(model_or_config)
    except ValueError:
        return None


def all_presets() -> list[str]:
    """Every preset name of every family, in registration order."""
    return [name for family in FAMILIES.values() for name in family.presets]


def family_of_preset(name: str) -> Family:
    """The family that defines preset `name`; `ValueError` listing every preset (and the closest) otherwise."""
    if not isinstance(name, str):
        raise ValueError(f"a preset is named by a string, got {type(name).__name__} {name!r}")
    for family in FAMILIES.values():
        if name in family.presets:
            return family
    import difflib

    close = difflib.get_close_matches(str(name), all_presets(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"Unknown preset {name!r}{hint}; available: {', '.join(all_presets())}")


def preset_config(name: str, labels: str | list[str] | tuple[str, ...] | None = None, **overrides: Any) -> Any:
    """The config of preset `name` (any family) with the given label set (`"cityscapes"`, `"ade20k"`,
    `"cocostuff"` or class names; by default the preset's own). `overrides` set config fields or the options every
    family takes the same way (`backbone="resnet18"`, a timm name)."""
    return family_of_preset(name).preset_config(name, labels, **overrides)


def preset_image_processor(
    labels: str | list[str] | tuple[str, ...] | None = None, preset: str = "fapn-r50", **overrides: Any
) -> Any:
    """The image processor of `preset` (default `fapn-r50`) for a label set: its test-time size and label rules."""
    if isinstance(labels, str):
        # The first argument is the label set (unlike preset_config's): a preset there would get FaPN-R50's processor.
        import difflib

        close = [labels] if labels in all_presets() else difflib.get_close_matches(labels, all_presets(), n=1)
        if close:
            raise ValueError(
                f"preset_image_processor's first argument is the label set, and {labels!r} is "
                f"{'a preset' if close[0] == labels else f'not one (close to the preset {close[0]!r})'}: "
                f"call preset_image_processor(preset={close[0]!r})"
            )
    return family_of_preset(preset).preset_image_processor(preset, labels, **overrides)


def original_models() -> dict[str, Any]:
    """Every released checkpoint the families convert, by name."""
    return {name: model for family in FAMILIES.values() for name, model in family.original_models.items()}


def _register_every_family() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg:
            register(importlib.import_module(f"{__name__}.{info.name}").FAMILY)


_register_every_family()

__all__ = [
    "FAMILIES",
    "ExportSpec",
    "Family",
    "all_presets",
    "family_of",
    "find_family",
    "family_of_preset",
    "original_models",
    "preset_config",
    "preset_image_processor",
    "register",
]
