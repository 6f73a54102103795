"""MaskFormer + FaPN presets: the paper's ADE20K (Swin-L, 640) and COCO-Stuff-10K (ResNet-101) models and their
baselines with MaskFormer's own FPN pixel decoder (`MASKFORMER_PRESETS`)."""

from __future__ import annotations

from typing import Any

from ...labels import label_maps
from ...modeling.backbone_utils import timm_backbone_config
from ...modeling.config_checks import check_field_types
from ...modeling.configuration_maskformer_fapn import MaskFormerFaPNConfig
from ...modeling.image_processing_maskformer_fapn import MaskFormerFaPNImageProcessor

# The original configs: Swin-L (IN-21k, 384, window 12) with detectron2's per-stage output LayerNorms, ADE20K-150 at
# test short side 640 (max 2560); torchvision-layout ResNet-101, COCO-Stuff-10K (171 classes), short side 640.
_MODELS: dict[str, dict[str, Any]] = {
    "swin-l-ade20k": {
        "backbone": "swin_large_patch4_window12_384",
        "backbone_output_norms": True,
        "labels": "ade20k",
        "processor": {
            "size": {"shortest_edge": 640, "longest_edge": 2560},
            "do_reduce_labels": True,
            "detectron2_resize": True,
        },
    },
    "r101-cocostuff": {
        "backbone": "resnet101",
        "backbone_output_norms": False,
        "labels": "cocostuff",
        "processor": {
            "size": {"shortest_edge": 640, "longest_edge": 2560},
            "do_reduce_labels": False,
            "detectron2_resize": True,
        },
    },
}


def _build() -> dict[str, dict[str, Any]]:
    presets = {}
    for decoder in ("fapn", "fpn"):
        for short, settings in _MODELS.items():
            presets[f"maskformer-{decoder}-{short}"] = {"pixel_decoder": decoder, **settings}
    return presets


MASKFORMER_PRESETS: dict[str, dict[str, Any]] = _build()

# The transformer decoder options a preset takes (feed-forward 8 x hidden and hidden / 32 heads, as the original's
# 256 / 2048 / 8).
DECODER_OPTIONS = ("num_queries", "decoder_layers", "decoder_hidden_size")


_OPTION_TYPES = {
    "backbone": "str",
    "neck_channels": "int",
    "num_queries": "int",
    "decoder_layers": "int",
    "decoder_hidden_size": "int",
    "freeze_backbone_norm": "bool",
}


def decoder_config(num_queries: int | None, decoder_layers: int | None, decoder_hidden_size: int | None) -> Any:
    """transformers' `DetrConfig` for the transformer decoder with the given (or the original's) sizes."""
    from transformers import DetrConfig

    settings: dict[str, Any] = {}
    if num_queries is not None:
        settings["num_queries"] = num_queries
    if decoder_layers is not None:
        settings["decoder_layers"] = decoder_layers
    if (hidden := decoder_hidden_size) is not None:
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 32 or hidden % 32:
            raise ValueError(f"decoder_hidden_size must be a positive multiple of 32 (heads of 32), got {hidden!r}")
        settings |= {"d_model": hidden, "decoder_ffn_dim": 8 * hidden, "decoder_attention_heads": hidden // 32}
    return DetrConfig(**settings)


def maskformer_preset_config(
    name: str,
    labels: str | list[str] | tuple[str, ...] | None = None,
    *,
    backbone: str | None = None,
    neck_channels: int | None = None,
    num_queries: int | None = None,
    decoder_layers: int | None = None,
    decoder_hidden_size: int | None = None,
    freeze_backbone_norm: bool = False,
    **overrides: Any,
) -> MaskFormerFaPNConfig:
    """The `MaskFormerFaPNConfig` of preset `name`: its backbone (timm), pixel decoder, the original MaskFormer
    settings (100 queries, 6 decoder layers, D = 256, deep supervision, loss weights 1 / 20 / 1, no-object 0.1) and
    its label set unless `labels` names another.

    The options every family takes the same way: `backbone` (a timm model name) replaces the preset's backbone,
    `neck_channels` sets the pixel decoder's and the mask features' width D, `num_queries`, `decoder_layers` and
    `decoder_hidden_size` shape the transformer decoder, `freeze_backbone_norm` freezes the backbone's BatchNorms
    (timm's `FrozenBatchNorm2d`); other `overrides` set config fields."""
    if name not in MASKFORMER_PRESETS:
        raise ValueError(f"Unknown MaskFormer preset {name!r}; available: {', '.join(MASKFORMER_PRESETS)}")
    options = {
        "backbone": backbone,
        "neck_channels": neck_channels,
        "num_queries": num_queries,
        "decoder_layers": decoder_layers,
        "decoder_hidden_size": decoder_hidden_size,
        "freeze_backbone_norm": freeze_backbone_norm,
    }
    # Named as the caller wrote them, before they become fields of other configs under other names.
    check_field_types(options, _OPTION_TYPES, "MaskFormerFaPNConfig")
    preset = MASKFORMER_PRESETS[name]
    id2label, label2id = label_maps(preset["labels"] if labels is None else labels)
    width = 256 if neck_channels is None else neck_channels
    settings: dict[str, Any] = {
        "backbone_config": timm_backbone_config(
            backbone or preset["backbone"], freeze_batch_norm_2d=freeze_backbone_norm
        ),
        "backbone_output_norms": preset["backbone_output_norms"],
        "pixel_decoder": preset["pixel_decoder"],
        "fpn_feature_size": width,
        "mask_feature_size": width,
        "use_auxiliary_loss": True,  # DEEP_SUPERVISION: True in the original configs
        "no_object_weight": 0.1,
        "dice_weight": 1.0,
        "mask_weight": 20.0,
        "cross_entropy_weight": 1.0,
        "id2label": id2label,
        "label2id": label2id,
    }
    if any(value is not None for value in (num_queries, decoder_layers, decoder_hidden_size)):
        settings["decoder_config"] = decoder_config(num_queries, decoder_layers, decoder_hidden_size)
    return MaskFormerFaPNConfig(**{**settings, **overrides})


def maskformer_preset_image_processor(
    name: str, labels: str | list[str] | tuple[str, ...] | None = None, **overrides: Any
) -> MaskFormerFaPNImageProcessor:
    """The processor of preset `name`: shorter side 640 (longer <= 2560) resized as the original (detectron2's
    `ResizeShortestEdge`: `detectron2_resize=True`), ImageNet mean/std, RGB; its label reduction follows the preset's
    data set (the label set does not change the test size)."""
    if name not in MASKFORMER_PRESETS:
        raise ValueError(f"Unknown MaskFormer preset {name!r}; available: {', '.join(MASKFORMER_PRESETS)}")
    if labels is not None:
        label_maps(labels)  # checked (a mistyped set name is refused) though it does not change the processor
    return MaskFormerFaPNImageProcessor(**{**MASKFORMER_PRESETS[name]["processor"], "ignore_index": 255, **overrides})


__all__ = [
    "DECODER_OPTIONS",
    "MASKFORMER_PRESETS",
    "decoder_config",
    "maskformer_preset_config",
    "maskformer_preset_image_processor",
]
