"""How the run's model arguments shape, freeze and describe a MaskFormer + FaPN model."""

from __future__ import annotations

from typing import Any

import torch

from ...modeling.configuration_maskformer_fapn import MaskFormerFaPNConfig
from .presets import DECODER_OPTIONS

# The ModelArguments fields that shape a MaskFormer + FaPN network (`neck_channels`: the pixel decoder's and mask
# features' width); `preset_config` takes each under its own name.
OPTIONS = ("backbone", "neck_channels", "deformable_groups", *DECODER_OPTIONS)


def config_overrides(model_args: Any, ignore_index: int) -> dict[str, Any]:
    """`preset_config` overrides from the model arguments: the loss's ignore index, the BatchNorm freezing (timm's
    `FrozenBatchNorm2d`, detectron2's FrozenBN of the original R101; Swin has none) and every given option."""
    overrides: dict[str, Any] = {
        "semantic_loss_ignore_index": ignore_index,
        "freeze_backbone_norm": model_args.freeze_backbone_norm,
    }
    return overrides | {key: value for key in OPTIONS if (value := getattr(model_args, key, None)) is not None}


def saved_options(config: MaskFormerFaPNConfig) -> dict[str, Any]:
    """The architecture options a saved config fixes, under the argument names."""
    decoder = config.decoder_config
    return {
        "backbone": getattr(config.backbone_config, "backbone", None),
        "neck_channels": config.fpn_feature_size,
        "deformable_groups": config.deformable_groups,
        "num_queries": decoder.num_queries,
        "decoder_layers": decoder.decoder_layers,
        "decoder_hidden_size": decoder.d_model,
    }


def apply_freezing(config: MaskFormerFaPNConfig, model_args: Any) -> None:
    """MaskFormer's frozen BatchNorm is timm's `FrozenBatchNorm2d`, chosen in the backbone config; stage freezing
    (`freeze_backbone_stages`) is FaPN's and is refused before this is called."""
    if hasattr(config.backbone_config, "freeze_batch_norm_2d"):
        config.backbone_config.freeze_batch_norm_2d = model_args.freeze_backbone_norm


def set_stochastic_depth(backbone: torch.nn.Module, drop_path_rate: float) -> int:
    """Gives the residual branches of a timm transformer backbone (blocks with `drop_path1` / `drop_path2`, e.g.
    Swin) stochastic depth rising linearly from 0 at the first block to `drop_path_rate` at the last, as the
    original Swin's DROP_PATH_RATE (0.3 for MaskFormer + FaPN Swin-L). A training setting: it has no weights and is
    not saved with the model. Returns the number of blocks; raises `ValueError` for a rate outside [0, 1) or a
    backbone without such blocks."""
    from timm.layers import DropPath

    if not 0 <= drop_path_rate < 1:
        raise ValueError(f"drop_path_rate must lie in [0, 1), got {drop_path_rate}")
    blocks = [m for m in backbone.modules() if hasattr(m, "drop_path1") and hasattr(m, "drop_path2")]
    if not blocks:
        raise ValueError(
            f"drop_path_rate={drop_path_rate}: the backbone {type(backbone).__name__} has no timm transformer blocks "
            "(drop_path1 / drop_path2) to apply stochastic depth to"
        )
    for index, block in enumerate(blocks):
        rate = drop_path_rate * index / max(len(blocks) - 1, 1)
        block.drop_path1 = DropPath(rate) if rate > 0 else torch.nn.Identity()
        block.drop_path2 = DropPath(rate) if rate > 0 else torch.nn.Identity()
    return len(blocks)


def after_build(model: torch.nn.Module, model_args: Any) -> None:
    """Swin's stochastic depth (`drop_path_rate`), a training setting applied to the built model."""
    if model_args.drop_path_rate:
        set_stochastic_depth(model.backbone_module(), model_args.drop_path_rate)


def describe(config: MaskFormerFaPNConfig) -> str:
    """One line such as 'MaskFormer with the FaPN pixel decoder (FAM) on resnet101, 171 classes'."""
    decoder = "the FaPN pixel decoder (FAM)" if config.pixel_decoder == "fapn" else "its FPN pixel decoder"
    backbone = getattr(config.backbone_config, "backbone", None) or config.backbone_config.model_type
    return f"MaskFormer with {decoder} on {backbone}, {config.num_labels} classes"


__all__ = [
    "OPTIONS",
    "after_build",
    "apply_freezing",
    "config_overrides",
    "describe",
    "saved_options",
    "set_stochastic_depth",
]
