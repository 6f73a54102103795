"""FaPN (Feature-aligned Pyramid Network) for the Hugging Face ecosystem.

Importing the package registers the FaPN classes with transformers' Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForInstanceSegmentation,
    AutoModelForSemanticSegmentation,
    AutoModelForUniversalSegmentation,
)

from .configuration_fapn import FaPNConfig, timm_backbone_config
from .configuration_maskformer_fapn import MaskFormerFaPNConfig
from .deform_conv import ModulatedDeformConv2d, deform_conv2d
from .image_processing_fapn import FaPNImageProcessor, decode_image, open_image
from .image_processing_maskformer_fapn import MaskFormerFaPNImageProcessor
from .inference import SegmentationPredictor, TTAConfig
from .labels import ADE20K_LABELS, CITYSCAPES_LABELS, COCO_STUFF_LABELS, label_maps
from .mask_targets import MaskClassificationCollator, semantic_to_mask_targets
from .metrics import SegmentationMetrics
from .modeling_fapn import FaPNForSemanticSegmentation, FaPNModel, FaPNModelOutput, FaPNPreTrainedModel
from .modeling_maskformer_fapn import (
    MaskFormerFaPNForInstanceSegmentation,
    MaskFormerFaPNForSegmentationOutput,
    MaskFormerFaPNModel,
    MaskFormerFaPNPreTrainedModel,
)
from .presets import MASKFORMER_PRESETS, PRESETS, preset_config, preset_image_processor

__version__ = "0.1.0"

AutoConfig.register(FaPNConfig.model_type, FaPNConfig, exist_ok=True)
AutoModel.register(FaPNConfig, FaPNModel, exist_ok=True)
AutoModelForSemanticSegmentation.register(FaPNConfig, FaPNForSemanticSegmentation, exist_ok=True)
AutoImageProcessor.register(FaPNConfig, image_processor_classes={"torchvision": FaPNImageProcessor}, exist_ok=True)

# save_pretrained() then ships the modeling code with an `auto_map`, for `trust_remote_code=True` users.
FaPNConfig.register_for_auto_class()
FaPNModel.register_for_auto_class("AutoModel")
FaPNForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")

# MaskFormer + FaPN: one segmentation class (class and mask predictions, MaskFormer's universal head) registered
# where transformers puts MaskFormer (instance, universal) and where the image-segmentation pipeline loads semantic
# models from; its processor makes semantic output the pipeline's default.
AutoConfig.register(MaskFormerFaPNConfig.model_type, MaskFormerFaPNConfig, exist_ok=True)
AutoModel.register(MaskFormerFaPNConfig, MaskFormerFaPNModel, exist_ok=True)
for _segmentation_auto_class in (
    AutoModelForInstanceSegmentation,
    AutoModelForUniversalSegmentation,
    AutoModelForSemanticSegmentation,
):
    _segmentation_auto_class.register(MaskFormerFaPNConfig, MaskFormerFaPNForInstanceSegmentation, exist_ok=True)
AutoImageProcessor.register(
    MaskFormerFaPNConfig, image_processor_classes={"torchvision": MaskFormerFaPNImageProcessor}, exist_ok=True
)
MaskFormerFaPNConfig.register_for_auto_class()
MaskFormerFaPNModel.register_for_auto_class("AutoModel")
MaskFormerFaPNForInstanceSegmentation.register_for_auto_class("AutoModelForInstanceSegmentation")

__all__ = [
    "ADE20K_LABELS",
    "CITYSCAPES_LABELS",
    "COCO_STUFF_LABELS",
    "MASKFORMER_PRESETS",
    "PRESETS",
    "FaPNConfig",
    "FaPNForSemanticSegmentation",
    "FaPNImageProcessor",
    "FaPNModel",
    "FaPNModelOutput",
    "FaPNPreTrainedModel",
    "MaskClassificationCollator",
    "MaskFormerFaPNConfig",
    "MaskFormerFaPNForInstanceSegmentation",
    "MaskFormerFaPNForSegmentationOutput",
    "MaskFormerFaPNImageProcessor",
    "MaskFormerFaPNModel",
    "MaskFormerFaPNPreTrainedModel",
    "ModulatedDeformConv2d",
    "SegmentationMetrics",
    "SegmentationPredictor",
    "TTAConfig",
    "decode_image",
    "deform_conv2d",
    "label_maps",
    "open_image",
    "preset_config",
    "preset_image_processor",
    "semantic_to_mask_targets",
    "timm_backbone_config",
]
