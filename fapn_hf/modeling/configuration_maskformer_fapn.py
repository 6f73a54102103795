"""MaskFormer + FaPN configuration: transformers' `MaskFormerConfig` plus the pixel decoder of SPEC 2.7."""

from __future__ import annotations

import math
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import MaskFormerConfig, PreTrainedConfig

from .backbone_utils import backbone_config_from_name, check_pyramid_backbone
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

PIXEL_DECODERS = ("fapn", "fpn")


@strict
class MaskFormerFaPNConfig(MaskFormerConfig):
    r"""
    Configuration of MaskFormer with the FaPN pixel decoder (Huang et al., ICCV 2021, the paper's ADE20K and
    COCO-Stuff models). Everything of [`MaskFormerConfig`] applies (backbone, `decoder_config` of the transformer
    decoder, `num_labels`, loss weights); the fields below choose and shape the pixel decoder.

    As `FaPNConfig`, it checks what it is given: `backbone="resnet18"` is a timm model name (no network access),
    `id2label` numbers its classes 0..K-1 without gaps or repeated names, a given `label2id` is its inverse, and the
    loss weights are finite and >= 0.

    Args:
        pixel_decoder (`str`, *optional*, defaults to `"fapn"`):
            `"fapn"`: lateral 1x1 + GroupNorm, feature alignment (FAM, no FSM) whose offset conv shares the GroupNorm
            of the level's 3x3 output conv, the top level a 3x3 conv on C5, then a 3x3 `mask_features` conv.
            `"fpn"`: MaskFormer's own FPN pixel decoder (transformers' `MaskFormerPixelDecoder`), for the ablation.
        deformable_groups (`int`, *optional*, defaults to 8):
            Deformable groups of each FAM's modulated deformable convolution.
        deform_conv_implementation (`str`, *optional*, defaults to `"auto"`):
            `"torch"`, `"torchvision"` or `"auto"` (torchvision on CUDA), as in `FaPNConfig`.
        backbone_output_norms (`bool`, *optional*, defaults to `False`):
            A LayerNorm on each of the four backbone outputs, as detectron2's Swin applies (`norm0`..`norm3`) and
            timm's `features_only` Swin lacks. transformers' `MaskFormerSwin` has its own; leave it off there.
        size_divisibility (`int`, *optional*, defaults to 32):
            Inputs are zero-padded (after normalisation, at the bottom and right) to a multiple of this, as the
            original's `ImageList`; the mask logits cover the padded input.
        semantic_loss_ignore_index (`int`, *optional*, defaults to 255):
            Label value of semantic maps that belongs to no class: no mask target is made for it
            (`fapn_hf.families.maskformer_fapn.targets`), and the metrics skip it, as `FaPNConfig`'s.

    Example:

    ```python
    >>> import fapn_hf
    >>> from fapn_hf import preset_config, MaskFormerFaPNForInstanceSegmentation
    >>> model = MaskFormerFaPNForInstanceSegmentation(preset_config("maskformer-fapn-r101-cocostuff"))
    ```
    """

    model_type = "maskformer_fapn"
    # Backbones these models are built and tested with (MaskFormerConfig only warns about others).
    backbones_supported = ["resnet", "swin", "maskformer-swin", "timm_backbone"]

    pixel_decoder: str = "fapn"
    deformable_groups: int = 8
    deform_conv_implementation: str = "auto"
    backbone_output_norms: bool = False
    size_divisibility: int = 32
    semantic_loss_ignore_index: int = 255

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # MaskFormerConfig's fields are type-checked as they are set, by huggingface_hub's strict dataclass, whose
        # error is no ValueError (`StrictDataclassFieldValidationError`, "expected int, got str"): checked here
        # first, with FaPNConfig's message.
        check_field_types(kwargs, MaskFormerConfig.__annotations__, "MaskFormerFaPNConfig")
        super().__init__(*args, **kwargs)

    def __post_init__(self, **kwargs):
        # `backbone="resnet18"` is a timm name, built without network access (transformers would ask the Hub first).
        self.backbone_config = backbone_config_from_name(kwargs, self.backbone_config, "MaskFormerFaPNConfig")
        check_num_labels_argument(kwargs.get("num_labels"), self.id2label, "MaskFormerFaPNConfig")
        given_label2id = self.label2id
        warn_about_misspelt_keys(kwargs, own_settings(type(self), PreTrainedConfig), "MaskFormerFaPNConfig")
        super().__post_init__(**kwargs)
        check_label2id(given_label2id, self.id2label, "MaskFormerFaPNConfig")
        if self.id2label is not None and self.label2id is None:
            self.label2id = {name: index for index, name in self.id2label.items()}
        self._check_values()  # a plain ValueError naming the setting, as FaPNConfig raises

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> MaskFormerFaPNConfig:
        """transformers' `from_pretrained`; a mistyped local folder is named with the closest saved one
        (`check_pretrained_source`) instead of transformers' "Repo id must be in the form ..."."""
        check_pretrained_source(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> MaskFormerFaPNConfig:
        """transformers' `from_dict`, where `num_labels` alone re-heads a saved config (`reheaded_config_dict`)."""
        return super().from_dict(reheaded_config_dict(config_dict, kwargs), **kwargs)

    def _check_values(self) -> None:
        """Raises `ValueError` naming the first inconsistent or out-of-range setting."""

        def require(condition: bool, message: str) -> None:
            if not condition:
                raise ValueError(f"MaskFormerFaPNConfig: {message}")

        # MaskFormerConfig's fields are type-checked as they are set (huggingface_hub's strict dataclass); these are
        # this class's own.
        check_field_types(self, MaskFormerFaPNConfig.__annotations__, "MaskFormerFaPNConfig")
        check_id2label(self.id2label, "MaskFormerFaPNConfig")
        require(self.num_labels >= 1, f"mask classification needs at least 1 label, got num_labels={self.num_labels}")
        for name in ("cross_entropy_weight", "mask_weight", "dice_weight", "no_object_weight"):
            weight = getattr(self, name)
            # A negative weight turns its loss term into a reward: training would maximise the error.
            require(
                isinstance(weight, (int, float))
                and not isinstance(weight, bool)
                and math.isfinite(weight)
                and weight >= 0,
                f"{name} must be a finite number >= 0, got {weight!r}",
            )

        require(
            self.pixel_decoder in PIXEL_DECODERS,
            f"pixel_decoder must be one of {PIXEL_DECODERS}, got {self.pixel_decoder!r}",
        )
        check_deform_conv_implementation(self.deform_conv_implementation, "MaskFormerFaPNConfig")
        require(
            self.fpn_feature_size % 32 == 0 and self.fpn_feature_size >= 64,
            f"fpn_feature_size ({self.fpn_feature_size}) must be a multiple of 32 and at least 64 (GroupNorm(32))",
        )
        if self.pixel_decoder == "fapn":
            check_deformable_groups(
                self.fpn_feature_size, self.deformable_groups, "MaskFormerFaPNConfig", "fpn_feature_size"
            )
        require(self.size_divisibility >= 1, f"size_divisibility must be >= 1, got {self.size_divisibility}")
        check_ignore_index(self.semantic_loss_ignore_index, self.num_labels, "MaskFormerFaPNConfig")
        check_pyramid_backbone(self.backbone_config, "MaskFormerFaPNConfig")


# What a saved MaskFormer + FaPN folder ships and `import fapn_hf` registers. One segmentation class (class and mask
# predictions, MaskFormer's universal head) registered where transformers puts MaskFormer (instance, universal) and
# where the image-segmentation pipeline loads semantic models from; its processor makes semantic output the
# pipeline's default.
_SEGMENTATION_HEAD = "modeling_maskformer_fapn.MaskFormerFaPNForInstanceSegmentation"
MASKFORMER_FAPN_CODE = CodeFamily(
    config="configuration_maskformer_fapn.MaskFormerFaPNConfig",
    models={
        "AutoModel": "modeling_maskformer_fapn.MaskFormerFaPNModel",
        "AutoModelForInstanceSegmentation": _SEGMENTATION_HEAD,
        "AutoModelForUniversalSegmentation": _SEGMENTATION_HEAD,
        "AutoModelForSemanticSegmentation": _SEGMENTATION_HEAD,
    },
    processor="image_processing_maskformer_fapn.MaskFormerFaPNImageProcessor",
)


__all__ = ["MASKFORMER_FAPN_CODE", "PIXEL_DECODERS", "MaskFormerFaPNConfig"]
