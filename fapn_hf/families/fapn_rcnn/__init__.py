"""FaPN detectors: Faster R-CNN, Mask R-CNN and Panoptic FPN (detectron2's, with the paper's FaPN neck or the FPN
baseline) on torchvision's detection parts. One config, the meta-architecture a field; its task follows from it
(boxes, instance masks, or a panoptic map). Shipped classes: `fapn_hf.modeling.{configuration,modeling,
image_processing}_fapn_rcnn`."""

from __future__ import annotations

from typing import Any

from ...modeling.configuration_fapn_rcnn import FAPN_RCNN_CODE, FaPNRCNNConfig
from ...modeling.image_processing_fapn_rcnn import IMAGENET_NORMALISATION, FaPNRCNNImageProcessor
from ...tasks.base import Task
from ...tasks.detection import INSTANCE_SEGMENTATION, OBJECT_DETECTION, PANOPTIC_SEGMENTATION
from ..base import Family
from . import convert, options
from .presets import RCNN_PRESETS, rcnn_preset_config

_TASKS = {
    "faster_rcnn": OBJECT_DETECTION,
    "mask_rcnn": INSTANCE_SEGMENTATION,
    "panoptic_fpn": PANOPTIC_SEGMENTATION,
}


def _task_of(config: FaPNRCNNConfig) -> Task:
    return _TASKS[config.meta_architecture]


def _processor_settings(config: FaPNRCNNConfig) -> dict[str, Any]:
    # timm's ImageNet trunks take RGB in [0, 1] with ImageNet's mean and std; converted MSRA trunks get detectron2's
    # BGR 0..255 input from their converter (`convert.CONVERTER`).
    return {
        **IMAGENET_NORMALISATION,
        "meta_architecture": config.meta_architecture,
        "num_thing_labels": config.num_thing_labels,
    }


def rcnn_preset_image_processor(
    name: str, labels: str | list[str] | tuple[str, ...] | None = None, **overrides: Any
) -> FaPNRCNNImageProcessor:
    """The processor of preset `name`: detectron2's test resize (shorter side 800, longer at most 1333) and the
    normalisation of its backbone, with the label set's things/stuff split for panoptic post-processing."""
    config = rcnn_preset_config(name, labels)
    return FaPNRCNNImageProcessor(**{**_processor_settings(config), **overrides})


def _build_processor(settings: dict[str, Any], ignore_index: int) -> FaPNRCNNImageProcessor:
    return FaPNRCNNImageProcessor(**settings)


FAMILY = Family(
    name="fapn_rcnn",
    display_name="FaPN detector",
    model_type=FaPNRCNNConfig.model_type,
    task=OBJECT_DETECTION,
    task_of=_task_of,
    code=FAPN_RCNN_CODE,
    head_auto_class="AutoModelForObjectDetection",
    presets=RCNN_PRESETS,
    preset_config=rcnn_preset_config,
    preset_image_processor=rcnn_preset_image_processor,
    options=options.OPTIONS,
    training_options=("freeze_backbone_stages",),
    config_overrides=options.config_overrides,
    saved_options=options.saved_options,
    apply_freezing=options.apply_freezing,
    build_processor=_build_processor,
    describe=options.describe,
    card_summary=(
        "FaPN (Feature-aligned Pyramid Network, ICCV 2021) aligns upsampled features with a learnt deformable "
        "convolution (FAM) and re-weights lateral features (FSM) in the top-down path of the FPN that detectron2's "
        "Faster R-CNN, Mask R-CNN and Panoptic FPN are built on; the rest of each detector is detectron2's."
    ),
    # detectron2's SGD decays biases as well (WEIGHT_DECAY_BIAS defaults to WEIGHT_DECAY); norms are frozen.
    decay_bias=True,
    # The detectors' variable-size outputs (proposals, NMS) have no ONNX export here (`fapn_hf.export.onnx` says so).
    export=None,
    converter=convert.CONVERTER,
    original_models=convert.ORIGINAL_MODELS,
)

__all__ = ["FAMILY", "rcnn_preset_image_processor"]
