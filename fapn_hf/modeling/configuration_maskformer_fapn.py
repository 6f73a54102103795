"""MaskFormer + FaPN configuration: transformers' `MaskFormerConfig` plus the pixel decoder of SPEC 2.7."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import MaskFormerConfig

from .backbone_utils import check_pyramid_backbone
from .deform_conv import check_deform_conv_implementation, check_deformable_groups
from .label_checks import check_ignore_index
from .remote_code import CodeFamily

PIXEL_DECODERS = ("fapn", "fpn")


@strict
class MaskFormerFaPNConfig(MaskFormerConfig):
    r"""
    Configuration of MaskFormer with the FaPN pixel decoder (Huang et al., ICCV 2021, the paper's ADE20K and
    COCO-Stuff models). Everything of [`MaskFormerConfig`] applies (backbone, `decoder_config` of the transformer
    decoder, `num_labels`, loss weights); the fields below choose and shape the pixel decoder.

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

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._check_values()  # a plain ValueError naming the setting, as FaPNConfig raises

    def _check_values(self) -> None:
        """Raises `ValueError` naming the first inconsistent or out-of-range setting."""

        def require(condition: bool, message: str) -> None:
            if not condition:
                raise ValueError(f"MaskFormerFaPNConfig: {message}")

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
