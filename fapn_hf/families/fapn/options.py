"""How the run's model arguments shape, freeze and describe a FaPN semantic model."""

from __future__ import annotations

from typing import Any

from ...modeling.configuration_fapn import FaPNConfig

# The ModelArguments fields that shape a FaPN network: they build a preset, and cannot reshape a saved model.
OPTIONS = ("backbone", "use_fam", "use_fsm", "use_point_rend", "neck_channels", "head_channels", "deformable_groups")


def freezing(model_args: Any) -> dict[str, Any]:
    """The config's backbone freezing from the arguments (it lives in the config and travels with the weights)."""
    settings: dict[str, Any] = {"freeze_backbone_norm": model_args.freeze_backbone_norm}
    if model_args.freeze_backbone_stages is not None:
        settings["freeze_backbone_stages"] = model_args.freeze_backbone_stages
    return settings


def config_overrides(model_args: Any, ignore_index: int) -> dict[str, Any]:
    """`preset_config` overrides from the model arguments: the loss's ignore index, the freezing and every given
    architecture option (under its own name: they are `FaPNConfig` fields)."""
    overrides = {"semantic_loss_ignore_index": ignore_index, **freezing(model_args)}
    return overrides | {key: value for key in OPTIONS if (value := getattr(model_args, key, None)) is not None}


def saved_options(config: FaPNConfig) -> dict[str, Any]:
    """The architecture options a saved config fixes, under the argument names."""
    saved = {key: getattr(config, key, None) for key in OPTIONS if key != "backbone"}
    return saved | {"backbone": getattr(config.backbone_config, "backbone", None)}


def apply_freezing(config: FaPNConfig, model_args: Any) -> None:
    for key, value in freezing(model_args).items():
        setattr(config, key, value)


def describe(config: FaPNConfig) -> str:
    """One line such as 'FaPN (FAM + FSM) on resnet50, semantic FPN head + PointRend, 19 classes'."""
    if config.use_fam and config.use_fsm:
        neck = "FaPN (FAM + FSM)"
    elif config.use_fam:
        neck = "FPN + FAM"
    elif config.use_fsm:
        neck = "FPN + FSM"
    else:
        neck = "FPN"
    backbone_config = config.backbone_config
    backbone = getattr(backbone_config, "backbone", None) or backbone_config.model_type
    if backbone_config.model_type == "resnet":  # a transformers ResNet, e.g. the MSRA trunk of converted models
        bottleneck = backbone_config.layer_type == "bottleneck"
        backbone = f"ResNet-{sum(backbone_config.depths) * (3 if bottleneck else 2) + 2}"
        if bottleneck and backbone_config.downsample_in_bottleneck:
            backbone += " (MSRA, stride in the 1x1 conv)"
    head = "semantic FPN head" + (" + PointRend" if config.use_point_rend else "")
    return f"{neck} on {backbone}, {head}, {config.num_labels} classes"


__all__ = ["OPTIONS", "apply_freezing", "config_overrides", "describe", "freezing", "saved_options"]
