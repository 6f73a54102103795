"""What every family's config checks in what it is given, besides its labels (`label_checks`): settings of the wrong
type, and keys it does not know that are near misses of its settings.

Part of the shipped kernel: imports nothing of the package (see `remote_code.KERNEL_MODULES`).
"""

from __future__ import annotations

import difflib
import os
import sys
import warnings
from collections.abc import Mapping
from typing import Any

# The setting names every config has besides its own fields.
LABEL_SETTINGS = ("num_labels", "id2label", "label2id")

# A field's annotation (as written, `from __future__ import annotations`) -> the Python types its value may have.
ACCEPTED_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "bool": (bool,),
    "float": (float, int),
    "float | int": (float, int),
    "str": (str,),
}


def stacklevel_outside_configs() -> int:
    """The `warnings.warn` stacklevel of the first caller outside the shipped code, transformers, huggingface_hub and
    generated dataclass code: the line that built the config."""
    internal = (
        os.path.dirname(__file__) + os.sep,
        f"{os.sep}transformers{os.sep}",
        f"{os.sep}huggingface_hub{os.sep}",
        "<string>",
    )
    frame, level = sys._getframe(1), 1
    while frame is not None and any(part in frame.f_code.co_filename for part in internal):
        frame, level = frame.f_back, level + 1
    return level


def own_settings(config_class: type, base: type) -> list[str]:
    """The field names `config_class` and its bases below `base` (e.g. `PreTrainedConfig`) declare."""
    names: list[str] = []
    for klass in config_class.__mro__:
        if klass is base or not issubclass(klass, base):
            break
        names.extend(name for name in vars(klass).get("__annotations__", {}) if name not in names)
    return names


def warn_about_misspelt_keys(kwargs: Mapping[str, Any], settings: list[str], owner: str) -> None:
    """Keys a config does not know are kept as attributes (transformers' convention); one that is a near miss of one
    of its `settings` (or of `num_labels` / `id2label` / `label2id`) is almost certainly a typo that nothing reads:
    warns (prefixed `owner: `) with the closest setting."""
    known = [*settings, *LABEL_SETTINGS]
    for key in kwargs:
        if key in known or key.startswith("_"):
            continue
        match = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        if match:
            warnings.warn(
                f"{owner}: unknown setting {key!r} (kept, but nothing reads it); did you mean {match[0]!r}?",
                stacklevel=stacklevel_outside_configs(),
            )


def check_field_types(config: Any, annotations: Mapping[str, Any], owner: str) -> None:
    """Raises `ValueError` (prefixed `owner: `) for a setting of the wrong type, e.g. the string "256" or "false" of a
    hand-edited config.json, which would otherwise fail deep inside the model or, for a bool, count as true.

    Args:
        config: the config, or the keyword arguments it is about to be built from (a mapping).
        annotations: the fields to check, as a config class declares them (`SomeConfig.__annotations__`). Written
            annotations (`from __future__ import annotations`) take the types of `ACCEPTED_TYPES`; a class
            (`int`, `float`, `bool`, `str`: transformers' own configs) exactly that type, as huggingface_hub's strict
            dataclasses check it. Other annotations, and None values, are not checked.
    """
    for name, annotation in annotations.items():
        if isinstance(annotation, str):
            types = ACCEPTED_TYPES.get(annotation)
        else:
            types = (annotation,) if annotation in (int, float, bool, str) else None
        value = config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)
        if types is None or value is None:
            continue
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            expected = " or ".join(t.__name__ for t in types)
            raise ValueError(f"{owner}: {name} must be {expected}, got {value!r} ({type(value).__name__})")


__all__ = [
    "ACCEPTED_TYPES",
    "LABEL_SETTINGS",
    "check_field_types",
    "own_settings",
    "stacklevel_outside_configs",
    "warn_about_misspelt_keys",
]
