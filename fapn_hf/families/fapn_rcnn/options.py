"""How the run's model arguments shape, freeze and describe a FaPN detector."""

from __future__ import annotations

from typing import Any

from ...modeling.configuration_fapn_rcnn import FaPNRCNNConfig

# The ModelArguments fields that shape a detector network: they build a preset and cannot reshape a saved model.
OPTIONS = ("backbone", "use_fam", "use_fsm", "neck_channels", "deformable_groups")
# Argument name -> config field, where they differ (the pyramid width is `fpn_dim`, detectron2's FPN.OUT_CHANNELS).
_CONFIG_FIELDS = {"neck_channels": "fpn_dim"}

_ARCHITECTURE_NAMES = {"faster_rcnn": "Faster R-CNN", "mask_rcnn": "Mask R-CNN", "panoptic_fpn": "Panoptic FPN"}


def freezing(model_args: Any) -> dict[str, Any]:
    """The config's backbone freezing from the arguments (detectron2's FrozenBN and FREEZE_AT live in the config)."""
    settings: dict[str, Any] = {"freeze_backbone_norm": model_args.freeze_backbone_norm}
    if model_args.freeze_backbone_stages is not None:
        settings["freeze_backbone_stages"] = model_args.freeze_backbone_stages
    return settings


def config_overrides(model_args: Any, ignore_index: int) -> dict[str, Any]:
    """`preset_config` overrides from the model arguments: the semantic branch's ignore index (Panoptic FPN), the
    freezing and every given architecture option under its config name."""
    overrides = {"semantic_loss_ignore_index": ignore_index, **freezing(model_args)}
    for key in OPTIONS:
        value = getattr(model_args, key, None)
        if value is not None:
            overrides[_CONFIG_FIELDS.get(key, key)] = value
    return overrides


def saved_options(config: FaPNRCNNConfig) -> dict[str, Any]:
    """The architecture options a saved config fixes, under the argument names."""
    saved = {key: getattr(config, _CONFIG_FIELDS.get(key, key), None) for key in OPTIONS if key != "backbone"}
    return saved | {"backbone": getattr(config.backbone_config, "backbone", None)}


def apply_freezing(config: FaPNRCNNConfig, model_args: Any) -> None:
    for key, value in freezing(model_args).items():
        setattr(config, key, value)


def describe(config: FaPNRCNNConfig) -> str:
    """One line such as 'Mask R-CNN with the FaPN (FAM + FSM) neck on resnet50, 80 classes'."""
    if config.use_fam and config.use_fsm:
        neck = "FaPN (FAM + FSM)"
    elif config.use_fam or config.use_fsm:
        neck = "FPN + " + ("FAM" if config.use_fam else "FSM")
    else:
        neck = "FPN"
    backbone_config = config.backbone_config
    backbone = getattr(backbone_config, "backbone", None) or backbone_config.model_type
    if backbone_config.model_type == "resnet":  # transformers' ResNet: the MSRA trunk of converted models
        bottleneck = backbone_config.layer_type == "bottleneck"
        backbone = f"ResNet-{sum(backbone_config.depths) * (3 if bottleneck else 2) + 2}"
    classes = f"{config.num_labels} classes"
    if config.meta_architecture == "panoptic_fpn":
        classes = f"{config.num_thing_labels} thing and {config.num_labels - config.num_thing_labels} stuff classes"
    return f"{_ARCHITECTURE_NAMES[config.meta_architecture]} with the {neck} neck on {backbone}, {classes}"


__all__ = ["OPTIONS", "apply_freezing", "config_overrides", "describe", "freezing", "saved_options"]
