"""FaPN (Feature-aligned Pyramid Network) for the Hugging Face ecosystem.

Importing the package registers the FaPN classes with transformers' Auto classes.
"""

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
from .remote_code import CODE_FAMILIES, register_family

__version__ = "0.1.0"

# Both model families with transformers' Auto classes; save_pretrained() then ships their code with an `auto_map`,
# for `trust_remote_code=True` users (remote_code.py owns which classes and how).
for _family in CODE_FAMILIES:
    register_family(_family, __name__)

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
