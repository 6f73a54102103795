"""Image processor of MaskFormer + FaPN: transformers' `MaskFormerImageProcessor` with the original's semantic
inference (mask logits upsampled to the padded input, padding cropped, then class x mask probabilities, then the
resize to the requested size) and semantic output as the `image-segmentation` pipeline's default."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_processing_utils import BatchFeature
from transformers.models.maskformer.image_processing_maskformer import (
    MaskFormerImageProcessor,
    MaskFormerImageProcessorKwargs,
)
from transformers.processing_utils import Unpack
from transformers.utils import logging

from .image_decoding import (
    DecodedImagesMixin,
    check_target_sizes,
    output_field,
    prepare_segmentation_maps,
    required_output_field,
    valid_size,
)
from .label_checks import REDUCE_LABELS_HINT, check_label_values
from .remote_code import ProcessorCodeMixin
from .shortest_edge_resize import resize_image, resize_label_map, shortest_edge_size

logger = logging.get_logger(__name__)


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
    method = "post_process_semantic_segmentation"
    class_logits = required_output_field(outputs, "class_queries_logits", method).float()
    target_sizes = check_target_sizes(target_sizes, class_logits.shape[0])
    class_probs = class_logits.softmax(dim=-1)[..., :-1]
    scores = []
    for index, image_masks in enumerate(cropped_mask_logits(outputs, method)):
        score = torch.einsum("qc,qhw->chw", class_probs[index], image_masks.sigmoid())
        if target_sizes is not None:
            score = F.interpolate(score[None], size=target_sizes[index], mode="bilinear", align_corners=False)[0]
        scores.append(score)
    return scores


def cropped_mask_logits(outputs: Any, method: str = "post-processing") -> list[torch.Tensor]:
    """Each image's mask logits at its own size: per image `(Q, h_i, w_i)` float32, the `masks_queries_logits`
    `(N, Q, H' / 4, W' / 4)` upsampled 4x (bilinear, `align_corners=False`) to the input the model padded, `(H', W')`,
    then cropped to the image's region (from `outputs.pixel_mask` `(N, h, w)`, 1 on each image's pixels; the whole
    padded input without one), as the original's `sem_seg_postprocess`. The padding, the model's and the
    processor's, never reaches a resized prediction: every post-processing (semantic, instance, panoptic) starts
    here."""
    mask_logits = required_output_field(outputs, "masks_queries_logits", method)
    pixel_mask = output_field(outputs, "pixel_mask", method)
    if pixel_mask is not None and pixel_mask.shape[0] != mask_logits.shape[0]:
        raise ValueError(
            f"pixel_mask of shape {tuple(pixel_mask.shape)} is not one mask per image of masks_queries_logits "
            f"{tuple(mask_logits.shape)}"
        )
    height, width = mask_logits.shape[-2:]
    cropped = []
    for index in range(mask_logits.shape[0]):
        # The mask features are at stride 4 of the input the model padded: 4x is that padded size. One image at a
        # time: Q full-size masks of the whole batch would be the largest tensor of inference.
        masks = F.interpolate(
            mask_logits[index : index + 1].float(), size=(4 * height, 4 * width), mode="bilinear", align_corners=False
        )[0]
        if pixel_mask is not None:
            image_h, image_w = valid_size(pixel_mask[index])
            masks = masks[:, :image_h, :image_w]
        cropped.append(masks)
    return cropped


class MaskFormerFaPNImageProcessorKwargs(MaskFormerImageProcessorKwargs, total=False):
    r"""
    semantic_only (`bool`, *optional*, defaults to `True`):
        Offer only `post_process_semantic_segmentation`: the `image-segmentation` pipeline then returns one mask per
        class present (it would otherwise prefer panoptic, then instance post-processing). `False` offers all three.
    detectron2_resize (`bool`, *optional*, defaults to `False`):
        Resize as the original (detectron2's `ResizeShortestEdge`, the kernel's `shortest_edge_resize`): sizes from
        `size["shortest_edge"]` / `size["longest_edge"]` rounded with `int(x + 0.5)`, uint8 images resized by PIL's
        bilinear filter, segmentation maps by PIL's nearest neighbour. The converted and preset processors set it;
        `False` keeps transformers' resize (sizes truncated with `int(x)`, torchvision's antialiased bilinear).
    """

    semantic_only: bool
    detectron2_resize: bool


class MaskFormerFaPNImageProcessor(ProcessorCodeMixin, DecodedImagesMixin, MaskFormerImageProcessor):
    r"""
    [`MaskFormerImageProcessor`] for MaskFormer + FaPN: resize (shorter side, longer side capped), rescale, ImageNet
    normalisation, batches padded at the bottom and right with a `pixel_mask`; `size_divisor` defaults to 0 (no
    rounding of the resized size: the model pads to a multiple of 32 itself, as the original does).

    Segmentation maps become `mask_labels` / `class_labels` as in MaskFormer, with FaPN's rules for maps: one 2-D
    map of class ids per image, of its image's size (`prepare_segmentation_maps`); `ignore_index` (default 255, the
    models' `semantic_loss_ignore_index`) belongs to no mask; `do_reduce_labels` turns 0 into `ignore_index` and
    lowers the other classes by one, keeping `ignore_index` pixels ignored; with `num_labels` set, class ids outside
    `[0, num_labels)` are refused. In a batch of different sizes the binary masks are padded with 0: the padding
    belongs to no mask (transformers' processor pads them with `ignore_index`, which the loss reads as mask values).

    `post_process_semantic_segmentation(outputs, target_sizes)` follows the original `semantic_inference`: the mask
    logits are upsampled 4x to the padded input, each image's region (from `outputs.pixel_mask`) is cropped,
    `softmax(class)[..., :-1]` and `sigmoid(masks)` are combined per class, and the scores resized to the target size.
    """

    valid_kwargs = MaskFormerFaPNImageProcessorKwargs
    size_divisor = 0
    do_convert_rgb = True  # images decoded by FaPN's one rule (`decode_image`): gray, RGBA, 16-bit, EXIF-rotated
    semantic_only = True
    detectron2_resize = False
    # The label of no class, as the models' `semantic_loss_ignore_index` (transformers' default None makes 255 a class).
    ignore_index = 255

    def __init__(self, **kwargs: Unpack[MaskFormerFaPNImageProcessorKwargs]) -> None:
        super().__init__(**kwargs)

    def _preprocess_image_like_inputs(
        self,
        images: Any,
        segmentation_maps: Any,
        instance_id_to_semantic_id: list[dict[int, int]] | dict[int, int] | None,
        do_convert_rgb: bool,
        input_data_format: Any,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        images = self._prepare_image_like_inputs(
            images=images, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format, device=device
        )
        if segmentation_maps is not None:
            segmentation_maps = prepare_segmentation_maps(segmentation_maps, images)
            if instance_id_to_semantic_id is None:  # semantic maps: class ids (instance maps go as transformers')
                segmentation_maps = [
                    self._semantic_classes(segmentation_map, index, kwargs)
                    for index, segmentation_map in enumerate(segmentation_maps)
                ]
                kwargs["do_reduce_labels"] = False  # done
        return self._preprocess(images, segmentation_maps, instance_id_to_semantic_id, **kwargs)

    def _preprocess(
        self,
        images: list[torch.Tensor],
        segmentation_maps: list[torch.Tensor] | None,
        instance_id_to_semantic_id: list[dict[int, int]] | dict[int, int] | None,
        **kwargs: Any,
    ) -> BatchFeature:
        """transformers' `_preprocess`, with the resize done here first when `detectron2_resize` is on."""
        if kwargs.get("detectron2_resize") and kwargs.get("do_resize"):
            images, segmentation_maps = self._detectron2_resize(
                images, segmentation_maps, kwargs["size"], kwargs.get("size_divisor") or 0
            )
            kwargs["do_resize"] = False
        return super()._preprocess(images, segmentation_maps, instance_id_to_semantic_id, **kwargs)

    @staticmethod
    def _detectron2_resize(
        images: list[torch.Tensor], segmentation_maps: list[torch.Tensor] | None, size: Any, size_divisor: int
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Each `(C, H, W)` image (and its `(1, H, W)` map) resized as the original's `ResizeShortestEdge`: the size
        by `shortest_edge_size(H, W, size.shortest_edge, size.longest_edge)` (or `size.height` x `size.width` when
        given, e.g. a test-time-augmentation view; rounded up to `size_divisor` when set, as transformers does), the
        pixels by `resize_image` (PIL bilinear on uint8), the map by `resize_label_map`."""
        fixed = (size.height, size.width) if getattr(size, "height", None) and getattr(size, "width", None) else None
        if fixed is None and not getattr(size, "shortest_edge", None):
            raise ValueError(
                f"detectron2_resize=True resizes the shorter side: size must be {{'shortest_edge': ..., "
                f"'longest_edge': ...}} (or {{'height': ..., 'width': ...}}), got {dict(size)}"
            )
        resized_images, resized_maps = [], None if segmentation_maps is None else []
        for index, image in enumerate(images):
            height, width = fixed or shortest_edge_size(*image.shape[-2:], size.shortest_edge, size.longest_edge)
            if size_divisor > 0:
                height, width = (-(-side // size_divisor) * size_divisor for side in (height, width))
            resized_images.append(resize_image(image, (height, width)))
            if segmentation_maps is not None:
                resized_maps.append(resize_label_map(segmentation_maps[index], (height, width)))
        return resized_images, resized_maps

    @staticmethod
    def _semantic_classes(segmentation_map: torch.Tensor, index: int, settings: dict[str, Any]) -> torch.Tensor:
        """A `(1, H, W)` semantic map as int64 class ids (reduced with `do_reduce_labels`: 0 -> `ignore_index`,
        `ignore_index` kept, others minus 1), checked: no negative ids, and ids below `num_labels` when it is set.
        transformers reduces in the map's own dtype and turns `ignore_index` 255 into 254, a class."""
        ignore_index, num_labels = settings.get("ignore_index"), settings.get("num_labels")
        classes = segmentation_map.long()
        if settings.get("do_reduce_labels"):
            if ignore_index is None:
                raise ValueError(
                    "do_reduce_labels=True turns class 0 into ignore_index, which is None; set ignore_index (255)"
                )
            keep = (classes == 0) | (classes == ignore_index)
            classes = torch.where(keep, torch.full_like(classes, ignore_index), classes - 1)
        upper = num_labels if num_labels is not None else max(int(classes.max()) + 1, 1)
        hint = REDUCE_LABELS_HINT if num_labels is not None and not settings.get("do_reduce_labels") else ""
        check_label_values(classes, upper, ignore_index, name=f"segmentation map {index}", hint=hint)
        return classes

    def pad(
        self,
        images: torch.Tensor,
        padded_size: tuple[int, int],
        segmentation_maps: list[torch.Tensor] | None = None,
        fill: int = 0,
        ignore_index: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor] | None]:
        """transformers' padding of a group of images and their binary masks, with the masks padded with 0: the
        padding belongs to no mask, as in the original and `MaskClassificationCollator`. transformers fills them with
        `ignore_index` (255), which the loss takes as mask values (a loss of -7e9 for a batch of two sizes)."""
        return super().pad(images, padded_size, segmentation_maps, fill=fill, ignore_index=0)

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
        return getattr(self, f"_{name}")

    @property
    def post_process_panoptic_segmentation(self):  # noqa: D401 - a bound method, or AttributeError
        return self._hidden_unless_universal("post_process_panoptic_segmentation")

    @property
    def post_process_instance_segmentation(self):
        return self._hidden_unless_universal("post_process_instance_segmentation")

    def _per_image(self, method: str, outputs: Any, target_sizes: Any, **settings: Any) -> list[dict[str, Any]]:
        """transformers' `method` of `MaskFormerImageProcessor`, one image at a time on its cropped mask logits
        (`cropped_mask_logits`): transformers resizes the mask logits of the whole padded input to the target size,
        which stretches the padding into the image (a boundary at row 20 of a 48-row image in a 64-row batch,
        resized to 96 rows, lands at row 30 instead of 40)."""
        class_logits = required_output_field(outputs, "class_queries_logits", method)
        target_sizes = check_target_sizes(target_sizes, class_logits.shape[0])
        results = []
        for index, masks in enumerate(cropped_mask_logits(outputs, method)):
            image = SimpleNamespace(
                class_queries_logits=class_logits[index : index + 1].float(), masks_queries_logits=masks[None]
            )
            sizes = None if target_sizes is None else [target_sizes[index]]
            results.extend(getattr(MaskFormerImageProcessor, method)(self, image, target_sizes=sizes, **settings))
        return results

    def _post_process_instance_segmentation(
        self, outputs: Any, target_sizes: Any = None, **settings: Any
    ) -> list[dict[str, Any]]:
        """transformers' `post_process_instance_segmentation` (same settings and result) on each image's own region:
        the segmentation is at `target_sizes[i]`, else at the image's size in the processed batch."""
        return self._per_image("post_process_instance_segmentation", outputs, target_sizes, **settings)

    def _post_process_panoptic_segmentation(
        self, outputs: Any, target_sizes: Any = None, label_ids_to_fuse: set[int] | None = None, **settings: Any
    ) -> list[dict[str, Any]]:
        """transformers' `post_process_panoptic_segmentation` (same settings and result) on each image's own region:
        the segmentation is at `target_sizes[i]`, else at the image's size in the processed batch."""
        if label_ids_to_fuse is None:
            logger.warning_once("`label_ids_to_fuse` unset. No instance will be fused.")  # transformers' note, once
            label_ids_to_fuse = set()
        return self._per_image(
            "post_process_panoptic_segmentation",
            outputs,
            target_sizes,
            label_ids_to_fuse=label_ids_to_fuse,
            **settings,
        )

    def post_process_semantic_segmentation(
        self, outputs: Any, target_sizes: list[tuple[int, int]] | None = None, return_segmentation_scores: bool = False
    ) -> list[torch.Tensor] | list[SemanticSegmentationPostProcessorOutput]:
        """One `(H, W)` map of class ids per image (at `target_sizes[i]`, else at the unpadded input size); with
        `return_segmentation_scores` a [`SemanticSegmentationPostProcessorOutput`] per image (`segmentation` and the
        `(num_labels, H, W)` `segmentation_scores`). `outputs` is the model's output object (not the tuple of
        `return_dict=False`); `target_sizes` one `(height, width)` of positive ints per image."""
        scores = mask_classification_scores(outputs, target_sizes)
        maps = [score.argmax(dim=0) for score in scores]
        if return_segmentation_scores:
            return [
                SemanticSegmentationPostProcessorOutput(data={"segmentation": m, "segmentation_scores": s})
                for m, s in zip(maps, scores)
            ]
        return maps


__all__ = [
    "MaskFormerFaPNImageProcessor",
    "MaskFormerFaPNImageProcessorKwargs",
    "cropped_mask_logits",
    "mask_classification_scores",
]
