"""FaPN (Feature-aligned Pyramid Network) for the Hugging Face ecosystem.

Importing the package registers every model family (`fapn_hf.families`) with transformers' Auto classes, so that
`save_pretrained` ships each family's code with an `auto_map` for `trust_remote_code=True` users.
"""

from ._version import __version__
from .families import FAMILIES, family_of, preset_config, preset_image_processor
from .families.fapn.presets import PRESETS
from .families.fapn_rcnn.presets import RCNN_PRESETS
from .families.maskformer_fapn.presets import MASKFORMER_PRESETS
from .families.maskformer_fapn.targets import MaskClassificationCollator, semantic_to_mask_targets
from .inference.detection import DetectionPredictor, Detections, load_predictor
from .inference.predictor import SegmentationPredictor, TTAConfig
from .labels import ADE20K_LABELS, CITYSCAPES_LABELS, COCO_STUFF_LABELS, label_maps
from .modeling.configuration_fapn import FaPNConfig, timm_backbone_config
from .modeling.configuration_fapn_rcnn import FaPNRCNNConfig
from .modeling.configuration_maskformer_fapn import MaskFormerFaPNConfig
from .modeling.deform_conv import ModulatedDeformConv2d, deform_conv2d
from .modeling.image_decoding import decode_image, open_image
from .modeling.image_processing_fapn import FaPNImageProcessor
from .modeling.image_processing_fapn_rcnn import FaPNRCNNImageProcessor
from .modeling.image_processing_maskformer_fapn import MaskFormerFaPNImageProcessor
from .modeling.modeling_fapn import FaPNForSemanticSegmentation, FaPNModel, FaPNModelOutput, FaPNPreTrainedModel
from .modeling.modeling_fapn_rcnn import (
    FaPNRCNNForObjectDetection,
    FaPNRCNNModel,
    FaPNRCNNModelOutput,
    FaPNRCNNOutput,
    FaPNRCNNPreTrainedModel,
)
from .modeling.modeling_maskformer_fapn import (
    MaskFormerFaPNForInstanceSegmentation,
    MaskFormerFaPNForSegmentationOutput,
    MaskFormerFaPNModel,
    MaskFormerFaPNPreTrainedModel,
)
from .tasks.semantic.metrics import SegmentationMetrics

__all__ = [
    "FAMILIES",
    "__version__",
    "ADE20K_LABELS",
    "CITYSCAPES_LABELS",
    "COCO_STUFF_LABELS",
    "MASKFORMER_PRESETS",
    "PRESETS",
    "RCNN_PRESETS",
    "DetectionPredictor",
    "Detections",
    "FaPNConfig",
    "FaPNForSemanticSegmentation",
    "FaPNImageProcessor",
    "FaPNModel",
    "FaPNModelOutput",
    "FaPNPreTrainedModel",
    "FaPNRCNNConfig",
    "FaPNRCNNForObjectDetection",
    "FaPNRCNNImageProcessor",
    "FaPNRCNNModel",
    "FaPNRCNNModelOutput",
    "FaPNRCNNOutput",
    "FaPNRCNNPreTrainedModel",
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
    "family_of",
    "label_maps",
    "load_predictor",
    "open_image",
    "preset_config",
    "preset_image_processor",
    "semantic_to_mask_targets",
    "timm_backbone_config",
]
