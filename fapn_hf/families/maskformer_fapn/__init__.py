"""MaskFormer + FaPN: MaskFormer's mask classification (100 queries, a DETR decoder, Hungarian-matched losses) on
the FaPN pixel decoder (FAM, no FSM), or MaskFormer's own FPN decoder for the baselines. Shipped classes:
`fapn_hf.modeling.{configuration,modeling,image_processing}_maskformer_fapn`."""

from __future__ import annotations

from typing import Any

import torch

from ...modeling.configuration_maskformer_fapn import MASKFORMER_FAPN_CODE, MaskFormerFaPNConfig
from ...modeling.image_processing_maskformer_fapn import MaskFormerFaPNImageProcessor, mask_classification_scores
from ...modeling.modeling_maskformer_fapn import MaskFormerFaPNForSegmentationOutput
from ...tasks.semantic import TASK as SEMANTIC_SEGMENTATION
from ..base import ExportSpec, Family
from . import convert, options
from .presets import MASKFORMER_PRESETS, maskformer_preset_config, maskformer_preset_image_processor
from .targets import MaskClassificationCollator


def _semantic_scores(outputs: Any) -> torch.Tensor:
    """The original MaskFormer's semantic inference: `(N, K, h, w)` scores, not normalised over classes."""
    return torch.stack(mask_classification_scores(outputs))


def _wrap_onnx_outputs(outputs: dict[str, torch.Tensor], pixel_values: torch.Tensor, config: Any) -> Any:
    """The class and mask logits of the padded input, with a `pixel_mask` of ones over `pixel_values`' size (what
    the post-processing crops to)."""
    height, width = pixel_values.shape[-2:]
    pixel_mask = torch.ones(pixel_values.shape[0], height, width, dtype=torch.long)
    return MaskFormerFaPNForSegmentationOutput(**outputs, pixel_mask=pixel_mask)


FAMILY = Family(
    name="maskformer_fapn",
    display_name="MaskFormer + FaPN",
    model_type=MaskFormerFaPNConfig.model_type,
    task=SEMANTIC_SEGMENTATION,
    code=MASKFORMER_FAPN_CODE,
    # Registered where transformers puts MaskFormer; a saved folder also loads with AutoModelForSemanticSegmentation.
    head_auto_class="AutoModelForUniversalSegmentation",
    presets=MASKFORMER_PRESETS,
    preset_config=maskformer_preset_config,
    preset_image_processor=maskformer_preset_image_processor,
    options=options.OPTIONS,
    training_options=("drop_path_rate",),
    config_overrides=options.config_overrides,
    saved_options=options.saved_options,
    apply_freezing=options.apply_freezing,
    after_build=options.after_build,
    build_processor=lambda settings, ignore_index: MaskFormerFaPNImageProcessor(**settings, ignore_index=ignore_index),
    # Per-class binary masks and their classes; the ignore index belongs to no mask.
    train_collator=lambda num_labels, ignore_index: MaskClassificationCollator(num_labels, ignore_index),
    class_scores=_semantic_scores,
    scores_are_probabilities=True,
    describe=options.describe,
    card_summary=(
        "MaskFormer classifies masks instead of pixels: each of its queries predicts a class and a mask. FaPN "
        "(Feature-aligned Pyramid Network, ICCV 2021) replaces its pixel decoder's top-down path with feature "
        "alignment (FAM), a learnt deformable convolution that aligns upsampled features with the lateral ones."
    ),
    # The original MaskFormer decays biases (only norms and embeddings are exempt).
    decay_bias=True,
    # Its semantic scores are not logits: no cross-entropy on them.
    eval_loss=False,
    export=ExportSpec(output_names=("class_queries_logits", "masks_queries_logits"), wrap=_wrap_onnx_outputs),
    converter=convert.CONVERTER,
    original_models=convert.ORIGINAL_MODELS,
)

__all__ = ["FAMILY"]
