"""FaPN semantic segmentation: a backbone, the FaPN (or FPN) neck and the semantic FPN head, optionally refined by
PointRend (the paper's Cityscapes models). Shipped classes: `fapn_hf.modeling.{configuration,modeling,
image_processing}_fapn`."""

from __future__ import annotations

from typing import Any

import torch

from ...modeling.configuration_fapn import FAPN_CODE, FaPNConfig
from ...modeling.image_processing_fapn import FaPNImageProcessor
from ...modeling.modeling_fapn import FaPNSemanticSegmenterOutput
from ...tasks.semantic import TASK as SEMANTIC_SEGMENTATION
from ..base import ExportSpec, Family
from . import convert, options
from .presets import PRESETS, fapn_preset_config, fapn_preset_image_processor


def _logits(outputs: Any) -> torch.Tensor:
    return outputs.logits


def _wrap_onnx_outputs(outputs: dict[str, torch.Tensor], pixel_values: torch.Tensor, config: FaPNConfig) -> Any:
    """The exported graph's logits of the padded input, cropped back to `pixel_values`' size."""
    height, width = pixel_values.shape[-2:]
    return FaPNSemanticSegmenterOutput(logits=outputs["logits"][:, :, :height, :width].contiguous())


FAMILY = Family(
    name="fapn",
    display_name="FaPN",
    model_type=FaPNConfig.model_type,
    task=SEMANTIC_SEGMENTATION,
    code=FAPN_CODE,
    head_auto_class="AutoModelForSemanticSegmentation",
    presets=PRESETS,
    preset_config=fapn_preset_config,
    preset_image_processor=fapn_preset_image_processor,
    options=options.OPTIONS,
    training_options=("freeze_backbone_stages",),
    config_overrides=options.config_overrides,
    saved_options=options.saved_options,
    apply_freezing=options.apply_freezing,
    build_processor=lambda settings, ignore_index: FaPNImageProcessor(**settings),
    # The task's batches: per-sample sizes kept for evaluation, labels padded with the ignore index.
    train_collator=lambda num_labels, ignore_index: SEMANTIC_SEGMENTATION.eval_collator(ignore_index),
    class_scores=_logits,
    describe=options.describe,
    card_summary=(
        "FaPN (Feature-aligned Pyramid Network, ICCV 2021) aligns upsampled features with a learnt deformable "
        "convolution (FAM) and re-weights lateral features (FSM) in the top-down path of an FPN."
    ),
    # This project's convention for the semantic models: no weight decay on biases.
    decay_bias=False,
    eval_loss=True,
    export=ExportSpec(output_names=("logits",), wrap=_wrap_onnx_outputs),
    converter=convert.CONVERTER,
    original_models=convert.ORIGINAL_MODELS,
)

__all__ = ["FAMILY"]
