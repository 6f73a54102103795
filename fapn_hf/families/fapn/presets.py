"""Named configurations of the models users look for: `fapn-r50`, `fapn-r50-pointrend`, their `fpn-*` baselines, and
the MaskFormer + FaPN models of the paper (`maskformer-fapn-swin-l-ade20k`, `maskformer-fapn-r101-cocostuff`) with
their `maskformer-fpn-*` baselines (`MASKFORMER_PRESETS`)."""

from __future__ import annotations

from typing import Any

from ...labels import label_maps
from ...modeling.configuration_fapn import FaPNConfig
from ...modeling.image_processing_fapn import FaPNImageProcessor
from ..maskformer_fapn.presets import MASKFORMER_PRESETS, maskformer_preset_config, maskformer_preset_image_processor

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


def preset_config(name: str, labels: str | list[str] | tuple[str, ...] | None = None, **overrides: Any) -> FaPNConfig:
    """The config of preset `name` with the given label set (`"cityscapes"`, `"ade20k"`, `"cocostuff"` or class
    names; by default the preset's own: Cityscapes for the semantic FPN presets).

    `overrides` are passed on to the config class, e.g. `use_point_rend=False`. MaskFormer presets give a
    `MaskFormerFaPNConfig`. For timm's pretrained backbone weights build the model with
    `from_pretrained_backbone(config)`.
    """
    if name in MASKFORMER_PRESETS:
        return maskformer_preset_config(name, labels, **overrides)
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; available: {', '.join([*PRESETS, *MASKFORMER_PRESETS])}")
    labels = "cityscapes" if labels is None else labels
    id2label, label2id = label_maps(labels)
    settings = {**PRESETS[name], "id2label": id2label, "label2id": label2id, **overrides}
    return FaPNConfig(**settings)


def preset_image_processor(
    labels: str | list[str] | tuple[str, ...] = "cityscapes", preset: str | None = None, **overrides: Any
):
    """The image processor for a label set: Cityscapes at full resolution, ADE20K at shorter side 512; for a
    MaskFormer `preset`, that model's processor (its test size, label reduction)."""
    if preset in MASKFORMER_PRESETS:
        return maskformer_preset_image_processor(preset, **overrides)
    settings = _PROCESSOR_SETTINGS.get(labels, {}) if isinstance(labels, str) else {}
    return FaPNImageProcessor(**{**settings, **overrides})


__all__ = ["MASKFORMER_PRESETS", "PRESETS", "preset_config", "preset_image_processor"]
