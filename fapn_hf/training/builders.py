"""Builders of a run's pieces from its arguments: the class names, the model (a preset of either family, or a saved
model re-headed for new classes) and the image processor.

The family follows the preset: `fapn-*` builds a `FaPNForSemanticSegmentation` with a `FaPNImageProcessor`,
`maskformer-*` a `MaskFormerFaPNForInstanceSegmentation` with a `MaskFormerFaPNImageProcessor` (a saved model: its
config's `model_type`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForSemanticSegmentation, PreTrainedModel

from ..families.fapn.presets import MASKFORMER_PRESETS, preset_config
from ..inference.predictor import check_model_source, is_mask_classification_model, model_not_found_error
from ..labels import label_maps
from ..modeling.configuration_fapn import timm_backbone_config
from ..modeling.image_processing_fapn import FaPNImageProcessor
from ..modeling.image_processing_maskformer_fapn import MaskFormerFaPNImageProcessor
from ..modeling.modeling_fapn import FaPNForSemanticSegmentation
from ..modeling.modeling_maskformer_fapn import MaskFormerFaPNForInstanceSegmentation
from .args import DataArguments, ModelArguments


def resolve_labels(data_args: DataArguments) -> list[str]:
    """Class names: the `labels` argument, or the demo set's built-in ones."""
    if data_args.labels is None:
        if data_args.dataset != "demo":
            raise ValueError("pass `labels` ('cityscapes', 'ade20k' or comma-separated class names) for this data set")
        from ..tasks.semantic.demo_data import DEMO_LABELS

        return list(DEMO_LABELS)
    if "," in data_args.labels:
        return [name.strip() for name in data_args.labels.split(",") if name.strip()]
    from ..labels import LABEL_SETS

    if data_args.labels not in LABEL_SETS:
        raise ValueError(f"unknown label set {data_args.labels!r}; use {sorted(LABEL_SETS)} or comma-separated names")
    return list(LABEL_SETS[data_args.labels])


# Options that shape the network: they build a preset, and cannot reshape a saved model.
ARCHITECTURE_OPTIONS = ("use_fam", "use_fsm", "use_point_rend", "neck_channels", "head_channels", "deformable_groups")
# The ones a MaskFormer preset takes (`neck_channels`: the pixel decoder's and mask features' width), and its own.
MASKFORMER_ARCHITECTURE_OPTIONS = ("neck_channels", "deformable_groups")
MASKFORMER_DECODER_OPTIONS = ("num_queries", "decoder_layers", "decoder_hidden_size")
MASKFORMER_ONLY_OPTIONS = (*MASKFORMER_DECODER_OPTIONS, "drop_path_rate")


def build_model(model_args: ModelArguments, label_names: Sequence[str], ignore_index: int = 255) -> PreTrainedModel:
    """A preset with overrides, or a saved model re-headed for `label_names`; the loss ignores `ignore_index`.

    `maskformer-*` presets build a `MaskFormerFaPNForInstanceSegmentation` (`_maskformer_overrides`), the others a
    `FaPNForSemanticSegmentation`; a saved model (`model_name_or_path`, either family) keeps its own
    (`_load_model_to_fine_tune`). Architecture options that differ from the saved model raise a `ValueError` (they
    are never dropped silently); `freeze_backbone_norm` (and FaPN's `freeze_backbone_stages`, MaskFormer's
    `drop_path_rate`) apply either way."""
    id2label, label2id = label_maps(list(label_names))
    if model_args.model_name_or_path:
        model = _load_model_to_fine_tune(model_args, id2label, label2id, ignore_index)
    elif model_args.preset in MASKFORMER_PRESETS:
        overrides = _maskformer_overrides(model_args, ignore_index)
        config = preset_config(model_args.preset, list(label_names), **overrides)
        if model_args.pretrained_backbone:
            model = MaskFormerFaPNForInstanceSegmentation.from_pretrained_backbone(config)
        else:
            model = MaskFormerFaPNForInstanceSegmentation(config)
    else:
        given = [key for key in MASKFORMER_ONLY_OPTIONS if getattr(model_args, key) is not None]
        if given:
            raise ValueError(f"{given} shape a MaskFormer preset (maskformer-*), not preset={model_args.preset!r}")
        overrides = {"semantic_loss_ignore_index": ignore_index, **_fapn_freezing(model_args)}
        overrides |= {key: value for key in ARCHITECTURE_OPTIONS if (value := getattr(model_args, key)) is not None}
        if model_args.backbone:
            overrides["backbone"] = model_args.backbone
        config = preset_config(model_args.preset, list(label_names), **overrides)
        if model_args.pretrained_backbone:
            return FaPNForSemanticSegmentation.from_pretrained_backbone(config)
        return FaPNForSemanticSegmentation(config)
    if is_mask_classification_model(model) and model_args.drop_path_rate:
        set_stochastic_depth(model.backbone_module(), model_args.drop_path_rate)
    return model


def _fapn_freezing(model_args: ModelArguments) -> dict[str, Any]:
    """A FaPN config's backbone freezing from the arguments (it lives in the config and travels with the weights)."""
    freezing: dict[str, Any] = {"freeze_backbone_norm": model_args.freeze_backbone_norm}
    if model_args.freeze_backbone_stages is not None:
        freezing["freeze_backbone_stages"] = model_args.freeze_backbone_stages
    return freezing


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


def _maskformer_overrides(model_args: ModelArguments, ignore_index: int) -> dict[str, Any]:
    """`MaskFormerFaPNConfig` settings from the model arguments of a `maskformer-*` preset.

    `backbone` replaces the preset's timm backbone; `freeze_backbone_norm` freezes its BatchNorms (timm's
    `FrozenBatchNorm2d`, detectron2's FrozenBN of the original R101; Swin has none); `neck_channels` sets the pixel
    decoder's and the mask features' width D; `num_queries`, `decoder_layers` and `decoder_hidden_size` shape the
    transformer decoder (feed-forward 8 x hidden and hidden / 32 heads, as the original's 256 / 2048 / 8). FaPN-only
    options (`use_fam`, `use_fsm`, `use_point_rend`, `head_channels`, `freeze_backbone_stages`) raise a
    `ValueError`."""
    unsupported = {
        key: value
        for key in ("use_fam", "use_fsm", "use_point_rend", "head_channels", "freeze_backbone_stages")
        if (value := getattr(model_args, key)) is not None
    }
    if unsupported:
        raise ValueError(
            f"{unsupported} do not apply to the MaskFormer preset {model_args.preset!r}: it takes backbone, "
            f"{', '.join(MASKFORMER_ARCHITECTURE_OPTIONS + MASKFORMER_ONLY_OPTIONS)} and freeze_backbone_norm"
        )
    backbone = model_args.backbone or MASKFORMER_PRESETS[model_args.preset]["backbone"]
    overrides: dict[str, Any] = {
        "semantic_loss_ignore_index": ignore_index,
        "backbone_config": timm_backbone_config(backbone, freeze_batch_norm_2d=model_args.freeze_backbone_norm),
    }
    if model_args.neck_channels is not None:
        overrides["fpn_feature_size"] = overrides["mask_feature_size"] = model_args.neck_channels
    if model_args.deformable_groups is not None:
        overrides["deformable_groups"] = model_args.deformable_groups
    decoder: dict[str, Any] = {}
    if model_args.num_queries is not None:
        decoder["num_queries"] = model_args.num_queries
    if model_args.decoder_layers is not None:
        decoder["decoder_layers"] = model_args.decoder_layers
    if (hidden := model_args.decoder_hidden_size) is not None:
        if hidden < 32 or hidden % 32:
            raise ValueError(f"decoder_hidden_size must be a positive multiple of 32 (heads of 32), got {hidden}")
        decoder |= {"d_model": hidden, "decoder_ffn_dim": 8 * hidden, "decoder_attention_heads": hidden // 32}
    if decoder:
        from transformers import DetrConfig

        overrides["decoder_config"] = DetrConfig(**decoder)
    return overrides


def _saved_architecture(config: Any) -> dict[str, Any]:
    """The architecture options a saved config fixes, under the argument names (each family has its own)."""
    if is_mask_classification_model(config):
        decoder = config.decoder_config
        return {
            "neck_channels": config.fpn_feature_size,
            "deformable_groups": config.deformable_groups,
            "num_queries": decoder.num_queries,
            "decoder_layers": decoder.decoder_layers,
            "decoder_hidden_size": decoder.d_model,
        }
    return {key: getattr(config, key, None) for key in ARCHITECTURE_OPTIONS}


def _load_model_to_fine_tune(
    model_args: ModelArguments,
    id2label: dict[int, str],
    label2id: dict[str, int],
    ignore_index: int,
) -> PreTrainedModel:
    """The saved model (FaPN or MaskFormer + FaPN, by its `model_type`) with a new classifier for `id2label`."""
    source = model_args.model_name_or_path
    check_model_source(source)
    try:
        config = AutoConfig.from_pretrained(
            source,
            id2label=id2label,
            label2id=label2id,
            semantic_loss_ignore_index=ignore_index,
            trust_remote_code=model_args.trust_remote_code,
        )
    except OSError as error:
        if Path(source).is_dir():
            raise
        raise model_not_found_error(source, error) from error
    maskformer = is_mask_classification_model(config)
    family = "a MaskFormer + FaPN model" if maskformer else "a FaPN model"
    saved = _saved_architecture(config)
    options = ARCHITECTURE_OPTIONS + MASKFORMER_DECODER_OPTIONS
    if maskformer:
        options += ("freeze_backbone_stages",)
    conflicts = [
        f"{key}={value!r} (the model has {saved[key]!r})" if key in saved else f"{key}={value!r} ({family} has none)"
        for key in options
        if (value := getattr(model_args, key)) is not None and value != saved.get(key)
    ]
    saved_backbone = getattr(config.backbone_config, "backbone", None)
    if model_args.backbone and model_args.backbone != saved_backbone:
        conflicts.append(f"backbone={model_args.backbone!r} (the model has {saved_backbone!r})")
    if model_args.pretrained_backbone:
        conflicts.append("pretrained_backbone=True (the saved weights already hold the backbone)")
    if conflicts:
        raise ValueError(
            f"model_name_or_path={source!r} is fine-tuned with its own architecture, which these options would "
            f"change: {'; '.join(conflicts)}. Drop them, or leave out model_name_or_path to build a preset with them."
        )
    if maskformer:
        # MaskFormer's frozen BatchNorm is timm's FrozenBatchNorm2d, chosen in the backbone config.
        if hasattr(config.backbone_config, "freeze_batch_norm_2d"):
            config.backbone_config.freeze_batch_norm_2d = model_args.freeze_backbone_norm
    else:
        for key, value in _fapn_freezing(model_args).items():
            setattr(config, key, value)
    return AutoModelForSemanticSegmentation.from_pretrained(
        source, config=config, ignore_mismatched_sizes=True, trust_remote_code=model_args.trust_remote_code
    )


def build_image_processor(
    data_args: DataArguments, model: PreTrainedModel | None = None
) -> FaPNImageProcessor | MaskFormerFaPNImageProcessor:
    """The processor saved with the model, the one place images become `pixel_values`: it rescales and normalises
    the training crops, and resizes (`eval_shortest_edge` / `eval_longest_edge`) the images of inference. A
    `MaskFormerFaPNImageProcessor` for a mask-classification `model` (same settings, plus its ignore index), else
    a `FaPNImageProcessor`."""
    size = {"shortest_edge": data_args.eval_shortest_edge or 512}
    if data_args.eval_longest_edge:
        size["longest_edge"] = data_args.eval_longest_edge
    settings = {
        "do_resize": data_args.eval_shortest_edge is not None,
        "size": size,
        "do_reduce_labels": data_args.reduce_labels,
    }
    if model is not None and is_mask_classification_model(model):
        return MaskFormerFaPNImageProcessor(**settings, ignore_index=data_args.ignore_index)
    return FaPNImageProcessor(**settings)


__all__ = [
    "ARCHITECTURE_OPTIONS",
    "MASKFORMER_ARCHITECTURE_OPTIONS",
    "MASKFORMER_DECODER_OPTIONS",
    "MASKFORMER_ONLY_OPTIONS",
    "build_image_processor",
    "build_model",
    "resolve_labels",
    "set_stochastic_depth",
]
