"""Builders of a run's pieces from its arguments: the class names, the model (a preset or a saved FaPN re-headed
for new classes) and the image processor."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModelForSemanticSegmentation

from .image_processing_fapn import FaPNImageProcessor
from .inference import check_model_source, model_not_found_error
from .labels import label_maps
from .modeling_fapn import FaPNForSemanticSegmentation
from .presets import preset_config
from .training_args import DataArguments, ModelArguments


def resolve_labels(data_args: DataArguments) -> list[str]:
    """Class names: the `labels` argument, or the demo set's built-in ones."""
    if data_args.labels is None:
        if data_args.dataset != "demo":
            raise ValueError("pass `labels` ('cityscapes', 'ade20k' or comma-separated class names) for this data set")
        from .demo_data import DEMO_LABELS

        return list(DEMO_LABELS)
    if "," in data_args.labels:
        return [name.strip() for name in data_args.labels.split(",") if name.strip()]
    from .labels import LABEL_SETS

    if data_args.labels not in LABEL_SETS:
        raise ValueError(f"unknown label set {data_args.labels!r}; use {sorted(LABEL_SETS)} or comma-separated names")
    return list(LABEL_SETS[data_args.labels])


# Options that shape the network: they build a preset, and cannot reshape a saved model.
ARCHITECTURE_OPTIONS = ("use_fam", "use_fsm", "use_point_rend", "neck_channels", "head_channels", "deformable_groups")


def build_model(
    model_args: ModelArguments, label_names: Sequence[str], ignore_index: int = 255
) -> FaPNForSemanticSegmentation:
    """A preset with overrides, or a saved FaPN re-headed for `label_names`; the loss ignores `ignore_index`.

    A saved model keeps its architecture: architecture options that differ from it raise a `ValueError` (they are
    never dropped silently); `freeze_backbone_norm` and `freeze_backbone_stages` apply to either."""
    id2label, label2id = label_maps(list(label_names))
    # Backbone freezing lives in the config (it travels with the weights); these arguments override it.
    freezing: dict[str, Any] = {"freeze_backbone_norm": model_args.freeze_backbone_norm}
    if model_args.freeze_backbone_stages is not None:
        freezing["freeze_backbone_stages"] = model_args.freeze_backbone_stages
    if model_args.model_name_or_path:
        return _load_model_to_fine_tune(model_args, id2label, label2id, ignore_index, freezing)
    overrides: dict[str, Any] = {"semantic_loss_ignore_index": ignore_index, **freezing}
    overrides |= {key: value for key in ARCHITECTURE_OPTIONS if (value := getattr(model_args, key)) is not None}
    if model_args.backbone:
        overrides["backbone"] = model_args.backbone
    config = preset_config(model_args.preset, list(label_names), **overrides)
    if model_args.pretrained_backbone:
        return FaPNForSemanticSegmentation.from_pretrained_backbone(config)
    return FaPNForSemanticSegmentation(config)


def _load_model_to_fine_tune(
    model_args: ModelArguments,
    id2label: dict[int, str],
    label2id: dict[str, int],
    ignore_index: int,
    freezing: dict[str, Any],
) -> FaPNForSemanticSegmentation:
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
    conflicts = [
        f"{key}={value!r} (the model has {getattr(config, key, None)!r})"
        for key in ARCHITECTURE_OPTIONS
        if (value := getattr(model_args, key)) is not None and value != getattr(config, key, None)
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
    for key, value in freezing.items():
        setattr(config, key, value)
    return AutoModelForSemanticSegmentation.from_pretrained(
        source, config=config, ignore_mismatched_sizes=True, trust_remote_code=model_args.trust_remote_code
    )


def build_image_processor(data_args: DataArguments) -> FaPNImageProcessor:
    """The processor saved with the model, the one place images become `pixel_values`: it rescales and normalises
    the training crops, and resizes (`eval_shortest_edge` / `eval_longest_edge`) the images of inference."""
    size = {"shortest_edge": data_args.eval_shortest_edge or 512}
    if data_args.eval_longest_edge:
        size["longest_edge"] = data_args.eval_longest_edge
    return FaPNImageProcessor(
        do_resize=data_args.eval_shortest_edge is not None, size=size, do_reduce_labels=data_args.reduce_labels
    )


__all__ = ["ARCHITECTURE_OPTIONS", "build_image_processor", "build_model", "resolve_labels"]
