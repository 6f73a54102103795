"""Image processor of MaskFormer + FaPN: transformers' `MaskFormerImageProcessor` with the original's semantic
inference (mask logits upsampled to the padded input, padding cropped, then class x mask probabilities, then the
resize to the requested size) and semantic output as the `image-segmentation` pipeline's default."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.models.maskformer.image_processing_maskformer import (
    MaskFormerImageProcessor,
    MaskFormerImageProcessorKwargs,
)
from transformers.processing_utils import Unpack

from .image_decoding import DecodedImagesMixin, valid_size
from .remote_code import ProcessorCodeMixin


def mask_classification_scores(
    outputs: Any, target_sizes: Sequence[tuple[int, int]] | None = None
) -> list[torch.Tensor]:
    """The original MaskFormer's semantic inference (`sem_seg_postprocess` + `semantic_inference`): per image
    `(num_labels, H, W)` float32 class scores `sum_q softmax(class_q)[:-1] * sigmoid(mask_q)`.

    `outputs` holds `class_queries_logits` `(N, Q, num_labels + 1)` and `masks_queries_logits` `(N, Q, H' / 4,
    W' / 4)` of the input the model zero-padded to `(H', W')`, and optionally `pixel_mask` `(N, h, w)` (1 on each
    image's pixels). The mask logits are upsampled 4x (bilinear, `align_corners=False`) to the padded input, cropped
    to each image's region (from `pixel_mask`; the whole padded input without one), combined with the class
    probabilities, then resized to `target_sizes[i]` (bilinear, `align_corners=False`) when given. The scores lie in
    [0, Q] and are not normalised over classes.

    transformers' `MaskFormerImageProcessor.post_process_semantic_segmentation` instead combines the stride-4 masks
    and resizes the scores of the whole padded input to the target size: the padding is never cropped and the
    sigmoid comes before the upsampling.
    """
    class_logits, mask_logits = outputs.class_queries_logits.float(), outputs.masks_queries_logits.float()
    batch = class_logits.shape[0]
    if target_sizes is not None and len(target_sizes) != batch:
        raise ValueError(f"got {len(target_sizes)} target sizes for a batch of {batch}")
    height, width = mask_logits.shape[-2:]
    # The mask features are at stride 4 of the input the model padded: 4x is that padded size.
    masks = F.interpolate(mask_logits, size=(4 * height, 4 * width), mode="bilinear", align_corners=False)
    class_probs = class_logits.softmax(dim=-1)[..., :-1]
    pixel_mask = getattr(outputs, "pixel_mask", None)
    scores = []
    for index in range(batch):
        image_masks = masks[index]
        if pixel_mask is not None:
            image_h, image_w = valid_size(pixel_mask[index])
            image_masks = image_masks[:, :image_h, :image_w]
        score = torch.einsum("qc,qhw->chw", class_probs[index], image_masks.sigmoid())
        if target_sizes is not None:
            size = tuple(int(v) for v in target_sizes[index])
            score = F.interpolate(score[None], size=size, mode="bilinear", align_corners=False)[0]
        scores.append(score)
    return scores


class MaskFormerFaPNImageProcessorKwargs(MaskFormerImageProcessorKwargs, total=False):
    r"""
    semantic_only (`bool`, *optional*, defaults to `True`):
        Offer only `post_process_semantic_segmentation`: the `image-segmentation` pipeline then returns one mask per
        class present (it would otherwise prefer panoptic, then instance post-processing). `False` offers all three.
    """

    semantic_only: bool


class MaskFormerFaPNImageProcessor(ProcessorCodeMixin, DecodedImagesMixin, MaskFormerImageProcessor):
    r"""
    [`MaskFormerImageProcessor`] for MaskFormer + FaPN: resize (shorter side, longer side capped), rescale, ImageNet
    normalisation, batches padded at the bottom and right with a `pixel_mask`; `size_divisor` defaults to 0 (no
    rounding of the resized size: the model pads to a multiple of 32 itself, as the original does). Segmentation
    maps become `mask_labels` / `class_labels` as in MaskFormer.

    `post_process_semantic_segmentation(outputs, target_sizes)` follows the original `semantic_inference`: the mask
    logits are upsampled 4x to the padded input, each image's region (from `outputs.pixel_mask`) is cropped,
    `softmax(class)[..., :-1]` and `sigmoid(masks)` are combined per class, and the scores resized to the target size.
    """

    valid_kwargs = MaskFormerFaPNImageProcessorKwargs
    size_divisor = 0
    do_convert_rgb = True  # images decoded by FaPN's one rule (`decode_image`): gray, RGBA, 16-bit, EXIF-rotated
    semantic_only = True

    def __init__(self, **kwargs: Unpack[MaskFormerFaPNImageProcessorKwargs]) -> None:
        super().__init__(**kwargs)

    def _fuse_mean_std_and_rescale_factor(
        self,
        do_normalize: bool | None = None,
        image_mean: float | list[float] | None = None,
        image_std: float | list[float] | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        device: torch.device | None = None,
    ) -> tuple:
        """Folds the rescale into the statistics in float64 before rounding to float32, so that a 0..255 image is
        normalised with exactly the original's float32 PIXEL_MEAN / PIXEL_STD (`(x - 123.675) / 58.395`, not with
        `float32(123.675 / 255) * 255`), as detectron2's `(x - pixel_mean) / pixel_std`."""
        if do_rescale and do_normalize:
            mean = torch.tensor(image_mean, dtype=torch.float64) / rescale_factor
            std = torch.tensor(image_std, dtype=torch.float64) / rescale_factor
            return mean.to(device=device, dtype=torch.float32), std.to(device=device, dtype=torch.float32), False
        return super()._fuse_mean_std_and_rescale_factor(
            do_normalize, image_mean, image_std, do_rescale, rescale_factor, device
        )

    def _hidden_unless_universal(self, name: str) -> Any:
        if self.semantic_only:
            raise AttributeError(
                f"{type(self).__name__}.{name} is off for this semantic model (semantic_only=True); set "
                "`processor.semantic_only = False` to use MaskFormer's panoptic and instance post-processing"
            )
        return getattr(super(), name)

    @property
    def post_process_panoptic_segmentation(self):  # noqa: D401 - a bound method, or AttributeError
        return self._hidden_unless_universal("post_process_panoptic_segmentation")

    @property
    def post_process_instance_segmentation(self):
        return self._hidden_unless_universal("post_process_instance_segmentation")

    def post_process_semantic_segmentation(
        self, outputs: Any, target_sizes: list[tuple[int, int]] | None = None, return_segmentation_scores: bool = False
    ) -> list[torch.Tensor] | list[SemanticSegmentationPostProcessorOutput]:
        """One `(H, W)` map of class ids per image (at `target_sizes[i]`, else at the unpadded input size); with
        `return_segmentation_scores` a [`SemanticSegmentationPostProcessorOutput`] per image (`segmentation` and the
        `(num_labels, H, W)` `segmentation_scores`)."""
        scores = mask_classification_scores(outputs, target_sizes)
        maps = [score.argmax(dim=0) for score in scores]
        if return_segmentation_scores:
            return [
                SemanticSegmentationPostProcessorOutput(data={"segmentation": m, "segmentation_scores": s})
                for m, s in zip(maps, scores)
            ]
        return maps


__all__ = ["MaskFormerFaPNImageProcessor", "MaskFormerFaPNImageProcessorKwargs", "mask_classification_scores"]
