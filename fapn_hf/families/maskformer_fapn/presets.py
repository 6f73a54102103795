"""MaskFormer + FaPN presets: the paper's ADE20K (Swin-L, 640) and COCO-Stuff-10K (ResNet-101) models and their
baselines with MaskFormer's own FPN pixel decoder. Reached through `preset_config` / `preset_image_processor`."""

from __future__ import annotations

from typing import Any

from ...labels import label_maps
from ...modeling.configuration_fapn import timm_backbone_config
from ...modeling.configuration_maskformer_fapn import MaskFormerFaPNConfig
from ...modeling.image_processing_maskformer_fapn import MaskFormerFaPNImageProcessor

# The original configs: Swin-L (IN-21k, 384, window 12) with detectron2's per-stage output LayerNorms, ADE20K-150 at
# test short side 640 (max 2560); torchvision-layout ResNet-101, COCO-Stuff-10K (171 classes), short side 640.
_MODELS: dict[str, dict[str, Any]] = {
    "swin-l-ade20k": {
        "backbone": "swin_large_patch4_window12_384",
        "backbone_output_norms": True,
        "labels": "ade20k",
        "processor": {"size": {"shortest_edge": 640, "longest_edge": 2560}, "do_reduce_labels": True},
    },
    "r101-cocostuff": {
        "backbone": "resnet101",
        "backbone_output_norms": False,
        "labels": "cocostuff",
        "processor": {"size": {"shortest_edge": 640, "longest_edge": 2560}, "do_reduce_labels": False},
    },
}


def _build() -> dict[str, dict[str, Any]]:
    presets = {}
    for decoder in ("fapn", "fpn"):
        for short, settings in _MODELS.items():
            presets[f"maskformer-{decoder}-{short}"] = {"pixel_decoder": decoder, **settings}
    return presets


MASKFORMER_PRESETS: dict[str, dict[str, Any]] = _build()


def maskformer_preset_config(
    name: str, labels: str | list[str] | tuple[str, ...] | None = None, **overrides: Any
) -> MaskFormerFaPNConfig:
    """The `MaskFormerFaPNConfig` of preset `name`: its backbone (timm), pixel decoder, the original MaskFormer
    settings (100 queries, 6 decoder layers, D = 256, deep supervision, loss weights 1 / 20 / 1, no-object 0.1) and
    its label set unless `labels` names another."""
    if name not in MASKFORMER_PRESETS:
        raise ValueError(f"Unknown MaskFormer preset {name!r}; available: {', '.join(MASKFORMER_PRESETS)}")
    preset = MASKFORMER_PRESETS[name]
    id2label, label2id = label_maps(preset["labels"] if labels is None else labels)
    settings = {
        "backbone_config": timm_backbone_config(preset["backbone"]),
        "backbone_output_norms": preset["backbone_output_norms"],
        "pixel_decoder": preset["pixel_decoder"],
        "fpn_feature_size": 256,
        "mask_feature_size": 256,
        "use_auxiliary_loss": True,  # DEEP_SUPERVISION: True in the original configs
        "no_object_weight": 0.1,
        "dice_weight": 1.0,
        "mask_weight": 20.0,
        "cross_entropy_weight": 1.0,
        "id2label": id2label,
        "label2id": label2id,
        **overrides,
    }
    return MaskFormerFaPNConfig(**settings)


def maskformer_preset_image_processor(name: str, **overrides: Any) -> MaskFormerFaPNImageProcessor:
    """The processor of preset `name`: shorter side 640 (longer <= 2560), ImageNet mean/std, RGB."""
    if name not in MASKFORMER_PRESETS:
        raise ValueError(f"Unknown MaskFormer preset {name!r}; available: {', '.join(MASKFORMER_PRESETS)}")
    return MaskFormerFaPNImageProcessor(**{**MASKFORMER_PRESETS[name]["processor"], "ignore_index": 255, **overrides})


__all__ = ["MASKFORMER_PRESETS", "maskformer_preset_config", "maskformer_preset_image_processor"]
