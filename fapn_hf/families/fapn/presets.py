"""Named configurations of the FaPN semantic models: `fapn-r18` ... `fapn-r101`, the paper's Cityscapes models
`fapn-r50-pointrend` / `fapn-r101-pointrend`, and their `fpn-*` baselines (`PRESETS`)."""

from __future__ import annotations

from typing import Any

from ...labels import label_maps
from ...modeling.configuration_fapn import FaPNConfig
from ...modeling.image_processing_fapn import FaPNImageProcessor

_BACKBONES = {"r18": "resnet18", "r34": "resnet34", "r50": "resnet50", "r101": "resnet101"}


def _build_presets() -> dict[str, dict[str, Any]]:
    presets: dict[str, dict[str, Any]] = {}
    for neck, switches in (("fapn", {"use_fam": True, "use_fsm": True}), ("fpn", {"use_fam": False, "use_fsm": False})):
        for short, backbone in _BACKBONES.items():
            presets[f"{neck}-{short}"] = {"backbone": backbone, **switches}
        # The paper's Cityscapes models: semantic FPN head refined by PointRend.
        for short in ("r50", "r101"):
            presets[f"{neck}-{short}-pointrend"] = {"backbone": _BACKBONES[short], "use_point_rend": True, **switches}
    return presets


PRESETS: dict[str, dict[str, Any]] = _build_presets()

# Evaluation-time resizing that matches each data set's recipe.
_PROCESSOR_SETTINGS: dict[str, dict[str, Any]] = {
    "cityscapes": {"size": {"shortest_edge": 1024, "longest_edge": 2048}, "do_reduce_labels": False},
    "ade20k": {"size": {"shortest_edge": 512, "longest_edge": 2048}, "do_reduce_labels": True},
}


def fapn_preset_config(
    name: str, labels: str | list[str] | tuple[str, ...] | None = None, **overrides: Any
) -> FaPNConfig:
    """The `FaPNConfig` of preset `name` with the given label set (default: Cityscapes' 19 classes); `overrides` set
    config fields, e.g. `backbone="resnet18"` or `use_point_rend=False`."""
    if name not in PRESETS:
        raise ValueError(f"Unknown FaPN preset {name!r}; available: {', '.join(PRESETS)}")
    id2label, label2id = label_maps("cityscapes" if labels is None else labels)
    return FaPNConfig(**{**PRESETS[name], "id2label": id2label, "label2id": label2id, **overrides})


def fapn_preset_image_processor(
    name: str = "fapn-r50", labels: str | list[str] | tuple[str, ...] | None = None, **overrides: Any
) -> FaPNImageProcessor:
    """The processor for a label set (default Cityscapes): Cityscapes at full resolution, ADE20K at shorter side 512;
    the same for every FaPN preset."""
    labels = "cityscapes" if labels is None else labels
    if isinstance(labels, str):
        label_maps(labels)  # an unknown label-set name is refused here, not served the default settings
    settings = _PROCESSOR_SETTINGS.get(labels, {}) if isinstance(labels, str) else {}
    return FaPNImageProcessor(**{**settings, **overrides})


__all__ = ["PRESETS", "fapn_preset_config", "fapn_preset_image_processor"]
