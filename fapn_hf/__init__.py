"""FaPN (Feature-aligned Pyramid Network) for the Hugging Face ecosystem.

Importing the package registers the FaPN classes with transformers' Auto classes.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForSemanticSegmentation

from .configuration_fapn import FaPNConfig, timm_backbone_config
from .deform_conv import ModulatedDeformConv2d, deform_conv2d
from .image_processing_fapn import FaPNImageProcessor, decode_image, open_image
from .inference import SegmentationPredictor, TTAConfig
from .labels import ADE20K_LABELS, CITYSCAPES_LABELS, label_maps
from .metrics import SegmentationMetrics
from .modeling_fapn import FaPNForSemanticSegmentation, FaPNModel, FaPNModelOutput, FaPNPreTrainedModel
from .presets import PRESETS, preset_config, preset_image_processor

__version__ = "0.1.0"

AutoConfig.register(FaPNConfig.model_type, FaPNConfig, exist_ok=True)
AutoModel.register(FaPNConfig, FaPNModel, exist_ok=True)
AutoModelForSemanticSegmentation.register(FaPNConfig, FaPNForSemanticSegmentation, exist_ok=True)
AutoImageProcessor.register(FaPNConfig, image_processor_classes={"torchvision": FaPNImageProcessor}, exist_ok=True)

# save_pretrained() then ships the modeling code with an `auto_map`, for `trust_remote_code=True` users.
FaPNConfig.register_for_auto_class()
FaPNModel.register_for_auto_class("AutoModel")
FaPNForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")

__all__ = [
    "ADE20K_LABELS",
    "CITYSCAPES_LABELS",
    "PRESETS",
    "FaPNConfig",
    "FaPNForSemanticSegmentation",
    "FaPNImageProcessor",
    "FaPNModel",
    "FaPNModelOutput",
    "FaPNPreTrainedModel",
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
    "timm_backbone_config",
]
