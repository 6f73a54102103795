"""FaPN model configuration."""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .backbone_utils import PYRAMID_STRIDES, backbone_config_from_name, check_pyramid_backbone, timm_backbone_config
from .config_checks import check_field_types, own_settings, warn_about_misspelt_keys
from .deform_conv import check_deform_conv_implementation, check_deformable_groups
from .label_checks import (
    check_id2label,
    check_ignore_index,
    check_label2id,
    check_num_labels_argument,
    reheaded_config_dict,
)
from .remote_code import CodeFamily, check_pretrained_source

NECK_NORMS = ("", "GN", "BN")


@strict
class FaPNConfig(PreTrainedConfig):
    r"""
    Configuration of a FaPN (Feature-aligned Pyramid Network, Huang et al., ICCV 2021) semantic segmentation model.

    The defaults build FaPN-R50 with the semantic FPN head of the paper (D = 256, 8 deformable groups, no neck norm).

    Args:
        backbone_config (`PreTrainedConfig` or `dict`, *optional*):
            The backbone, through transformers' backbone API: a `TimmBackboneConfig` (e.g. `resnet50`,
            `swin_large_patch4_window12_384`) or a transformers backbone config (`ResNetConfig`, `SwinConfig`) whose
            four outputs are the stride 4, 8, 16 and 32 maps. Defaults to timm's `resnet50`.
        backbone (`str`, *optional*):
            Shortcut: a timm model name, turned into `backbone_config` without network access. Not stored.
        use_pretrained_backbone (`bool`, *optional*, defaults to `False`):
            Whether the backbone started from timm's pretrained weights: set by `from_pretrained_backbone(config)` /
            `load_pretrained_backbone()`, the explicit steps that load them, and saved with the model. A constructor
            never loads weights (no network access while building, as in transformers 5, whose `load_backbone`
            ignores this flag); it only warns when this is True on a fresh build. Timm backbones only.
        use_fam (`bool`, *optional*, defaults to `True`):
            Align the upsampled coarse map with the feature alignment module. With `use_fam=False` the top-down
            path is the plain FPN one (nearest upsample and add).
        use_fsm (`bool`, *optional*, defaults to `True`):
            Use the feature selection module as lateral connection instead of a plain 1x1 convolution.
            `use_fam=False, use_fsm=False` is the standard FPN baseline.
        neck_channels (`int`, *optional*, defaults to 256):
            Width `D` of the pyramid.
        deformable_groups (`int`, *optional*, defaults to 8):
            Deformable groups of the modulated deformable convolution in every FAM.
        neck_norm (`str`, *optional*, defaults to `""`):
            Normalisation in the neck: `""` (none, as the Cityscapes models), `"GN"` (32 groups) or `"BN"`.
        deform_conv_implementation (`str`, *optional*, defaults to `"auto"`):
            `"torch"` (pure PyTorch, any device, ONNX-exportable), `"torchvision"`, or `"auto"` (torchvision on
            CUDA, pure PyTorch elsewhere).
        head_channels (`int`, *optional*, defaults to 128):
            Width of the semantic FPN head.
        size_divisibility (`int`, *optional*, defaults to 32):
            Inputs are zero-padded (after normalisation) to a multiple of this, as detectron2 does; outputs are
            cropped back to the input size.
        semantic_loss_ignore_index (`int`, *optional*, defaults to 255):
            Label value ignored by the loss and the metrics.
        use_point_rend (`bool`, *optional*, defaults to `False`):
            Refine the coarse logits with a PointRend point head (the paper's Cityscapes models).
        point_head_channels (`int`, *optional*, defaults to 256):
            Width of the point head's hidden layers.
        point_head_num_layers (`int`, *optional*, defaults to 3):
            Number of hidden layers (1x1 `Conv1d` + ReLU) of the point head.
        point_head_coarse_pred_each_layer (`bool`, *optional*, defaults to `False`):
            Also append the coarse prediction to the input of every hidden point-head layer (detectron2's
            `StandardPointHead` option). Off, the head is `D + K -> 256 -> 256 -> 256 -> K`, which reproduces the
            paper's parameter counts.
        point_rend_train_num_points (`int`, *optional*, defaults to 2048):
            Points per image supervised during training.
        point_rend_oversample_ratio (`float`, *optional*, defaults to 3.0):
            Candidates drawn per training point before picking the most uncertain ones.
        point_rend_importance_sample_ratio (`float`, *optional*, defaults to 0.75):
            Share of training points picked by uncertainty; the rest are uniformly random.
        point_rend_subdivision_steps (`int`, *optional*, defaults to 2):
            Inference refinement steps, each upsampling the logits 2x.
        point_rend_subdivision_num_points (`int`, *optional*, defaults to 8192):
            Points re-predicted in each subdivision step.
        freeze_backbone_norm (`bool`, *optional*, defaults to `False`):
            Keep the backbone's BatchNorm layers frozen in training: they normalise with their running statistics,
            never update them, and their affine parameters get no gradient (detectron2's `FrozenBN`, the norm of
            the authors' ResNets). Timm and transformers backbones alike.
        freeze_backbone_stages (`int`, *optional*, defaults to 0):
            detectron2's `FREEZE_AT`: 0 trains the whole backbone, 1 freezes the stem, 2 the stem and the stride-4
            stage (res2), and so on up to 5 (everything). Frozen layers get no gradient and their BatchNorm layers
            stay in inference mode.

    Example:

    ```python
    >>> import fapn_hf
    >>> from fapn_hf import FaPNConfig, FaPNForSemanticSegmentation
    >>> config = FaPNConfig(backbone="resnet18", num_labels=19)
    >>> model = FaPNForSemanticSegmentation(config)
    ```
    """

    model_type = "fapn"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="timm_backbone",
            init_kwargs={"backbone": "resnet50", "out_indices": [1, 2, 3, 4]},
        ),
    }

    backbone_config: dict | PreTrainedConfig | None = None
    use_pretrained_backbone: bool = False
    use_fam: bool = True
    use_fsm: bool = True
    neck_channels: int = 256
    deformable_groups: int = 8
    neck_norm: str = ""
    deform_conv_implementation: str = "auto"
    head_channels: int = 128
    size_divisibility: int = 32
    semantic_loss_ignore_index: int = 255
    use_point_rend: bool = False
    point_head_channels: int = 256
    point_head_num_layers: int = 3
    point_head_coarse_pred_each_layer: bool = False
    point_rend_train_num_points: int = 2048
    point_rend_oversample_ratio: float | int = 3.0
    point_rend_importance_sample_ratio: float | int = 0.75
    point_rend_subdivision_steps: int = 2
    point_rend_subdivision_num_points: int = 8192
    # Stored in the config so that they travel with the weights: fine-tuning a converted model, by any training
    # loop, keeps the backbone frozen the way the authors trained it.
    freeze_backbone_norm: bool = False
    freeze_backbone_stages: int = 0

    def __post_init__(self, **kwargs):
        self.backbone_config = backbone_config_from_name(kwargs, self.backbone_config, "FaPNConfig")
        check_num_labels_argument(kwargs.get("num_labels"), self.id2label, "FaPNConfig")
        given_label2id = self.label2id
        warn_about_misspelt_keys(kwargs, own_settings(type(self), PreTrainedConfig), "FaPNConfig")
        super().__post_init__(**kwargs)
        check_label2id(given_label2id, self.id2label, "FaPNConfig")
        if self.id2label is not None and self.label2id is None:
            self.label2id = {name: index for index, name in self.id2label.items()}
        self._check_values()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> FaPNConfig:
        """transformers' `from_pretrained`; a mistyped local folder is named with the closest saved one
        (`check_pretrained_source`) instead of transformers' "Repo id must be in the form ..."."""
        check_pretrained_source(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> FaPNConfig:
        """transformers' `from_dict`, where `num_labels` alone re-heads a saved config as it does for in-tree models
        (`from_pretrained(folder, num_labels=150, ignore_mismatched_sizes=True)`): the saved class names, which no
        longer fit, give way to LABEL_0..LABEL_{num_labels - 1}. A config built directly with a conflicting
        `num_labels` and `id2label` is still refused."""
        return super().from_dict(reheaded_config_dict(config_dict, kwargs), **kwargs)

    def _check_types(self) -> None:
        """Raises `ValueError` for a setting of the wrong type (the kernel's `check_field_types`) or class ids with
        gaps or repeated names (`check_id2label`)."""
        check_field_types(self, FaPNConfig.__annotations__, "FaPNConfig")
        check_id2label(self.id2label, "FaPNConfig")

    @property
    def is_timm_backbone(self) -> bool:
        return getattr(self.backbone_config, "model_type", None) == "timm_backbone"

    def _check_values(self) -> None:
        """Raises `ValueError` naming the first inconsistent or out-of-range setting."""

        def require(condition: bool, message: str) -> None:
            if not condition:
                raise ValueError(f"FaPNConfig: {message}")

        self._check_types()
        check_pyramid_backbone(self.backbone_config, "FaPNConfig")
        require(self.neck_norm in NECK_NORMS, f"neck_norm must be one of {NECK_NORMS}, got {self.neck_norm!r}")
        check_deform_conv_implementation(self.deform_conv_implementation, "FaPNConfig")
        require(self.neck_channels > 0, f"neck_channels must be positive, got {self.neck_channels}")
        require(self.head_channels > 0, f"head_channels must be positive, got {self.head_channels}")
        # GroupNorm(32) needs 2+ channels per group: with one, a single image's 1x1 top level cannot be normalised.
        require(
            self.head_channels % 32 == 0 and self.head_channels >= 64,
            f"head_channels ({self.head_channels}) must be a multiple of 32 and at least 64 (the head uses "
            "GroupNorm(32))",
        )
        if self.neck_norm == "GN":
            require(
                self.neck_channels % 32 == 0 and self.neck_channels >= 64,
                f"neck_norm='GN' uses 32 groups, so neck_channels ({self.neck_channels}) must be a multiple of 32 "
                "and at least 64",
            )
        if self.use_fam:
            check_deformable_groups(self.neck_channels, self.deformable_groups, "FaPNConfig", "neck_channels")
        require(self.size_divisibility >= 1, f"size_divisibility must be >= 1, got {self.size_divisibility}")
        require(
            self.num_labels >= 2, f"semantic segmentation needs at least 2 labels, got num_labels={self.num_labels}"
        )
        check_ignore_index(self.semantic_loss_ignore_index, self.num_labels, "FaPNConfig")
        if self.use_point_rend:
            require(self.point_head_channels > 0, "point_head_channels must be positive")
            require(self.point_head_num_layers >= 1, "point_head_num_layers must be >= 1")
            require(self.point_rend_train_num_points >= 1, "point_rend_train_num_points must be >= 1")
            require(
                self.point_rend_oversample_ratio >= 1,
                f"point_rend_oversample_ratio must be >= 1, got {self.point_rend_oversample_ratio}",
            )
            require(
                0 <= self.point_rend_importance_sample_ratio <= 1,
                f"point_rend_importance_sample_ratio must lie in [0, 1], got {self.point_rend_importance_sample_ratio}",
            )
            require(self.point_rend_subdivision_steps >= 0, "point_rend_subdivision_steps must be >= 0")
            require(self.point_rend_subdivision_num_points >= 1, "point_rend_subdivision_num_points must be >= 1")
        require(
            0 <= self.freeze_backbone_stages <= 5,
            f"freeze_backbone_stages must lie in [0, 5] (detectron2's FREEZE_AT), got {self.freeze_backbone_stages}",
        )
        if self.use_pretrained_backbone:
            require(
                self.is_timm_backbone,
                "use_pretrained_backbone loads timm weights and needs a timm backbone; for a transformers backbone "
                "load it with `AutoBackbone.from_pretrained` and assign it to `model.fapn.backbone`",
            )

    def validate_fapn(self) -> None:
        self._check_values()


# What a saved FaPN folder ships and `import fapn_hf` registers: the config, the two heads and the image processor
# (remote_code.py turns this into Auto-class registrations and config.json's `auto_map`).
FAPN_CODE = CodeFamily(
    config="configuration_fapn.FaPNConfig",
    models={
        "AutoModel": "modeling_fapn.FaPNModel",
        "AutoModelForSemanticSegmentation": "modeling_fapn.FaPNForSemanticSegmentation",
    },
    processor="image_processing_fapn.FaPNImageProcessor",
)


# `timm_backbone_config` and `PYRAMID_STRIDES` are the kernel's (backbone_utils), re-exported: the package and its
# users import them from here.
__all__ = ["FAPN_CODE", "NECK_NORMS", "PYRAMID_STRIDES", "FaPNConfig", "timm_backbone_config"]
