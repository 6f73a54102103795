"""Image processor for FaPN semantic segmentation models.

The decoding rule and the image helpers are the kernel's (`image_decoding`); the names that lived here before
(`decode_image`, `open_image`, `upright`, ...) are re-exported, as the package and its users import them from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as tvF
from transformers import SegformerImageProcessor
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import ChannelDimension, SizeDict
from transformers.processing_utils import ImagesKwargs, Unpack

from .image_decoding import (
    TRANSPARENT_BACKGROUND,
    DecodedImagesMixin,
    as_rgb_tensor,
    check_target_sizes,
    decode_image,
    open_image,
    output_field,
    prepare_segmentation_maps,
    required_output_field,
    to_channels_first,
    upright,
    valid_size,
)
from .remote_code import ProcessorCodeMixin
from .shortest_edge_resize import resize_image, resize_label_map, shortest_edge_size

# Label value of the padding the processor adds around segmentation maps (and of `do_reduce_labels`' background).
LABEL_PADDING = 255


class FaPNImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    do_reduce_labels (`bool`, *optional*, defaults to `self.do_reduce_labels`):
        Whether to reduce every label of the segmentation maps by 1 and turn 0 (background, e.g. in ADE20K) into
        255, the label the loss ignores.
    detectron2_resize (`bool`, *optional*, defaults to `False`):
        Resize as the original (detectron2's `ResizeShortestEdge`, the kernel's `shortest_edge_resize`): sizes rounded
        with `int(x + 0.5)`, uint8 images resized by PIL's bilinear filter, segmentation maps by PIL's nearest
        neighbour. The converted processors set it; `False` keeps transformers' resize.
    """

    do_reduce_labels: bool
    detectron2_resize: bool


class FaPNImageProcessor(ProcessorCodeMixin, DecodedImagesMixin, SegformerImageProcessor):
    r"""
    Prepares images (and segmentation maps) for FaPN: optional aspect-preserving resize, rescale to [0, 1] and
    normalisation; labels can be reduced by one (`do_reduce_labels`, 0 -> 255). Grayscale and RGBA images,
    PIL, NumPy or PyTorch, channels first or last, are turned into RGB first (`do_convert_rgb`).

    Images of different sizes are batched by zero-padding them at the bottom and right to the batch's largest size
    (`do_pad`, or to a fixed `pad_size`); `pixel_mask` marks each image's own pixels with 1, and segmentation maps
    are padded with 255 (ignored). The model pads to a multiple of 32 itself, so any size works.

    Every image is first decoded by `decode_image`, the rule all FaPN paths share: file paths, PIL images, NumPy
    arrays and tensors become 8-bit RGB. EXIF orientation is applied to files and PIL images; uint16 / 16-bit images
    are scaled by 255 / 65535, 32-bit integer PIL images (mode `I`) are taken as 16-bit, float pixels as [0, 1]
    (values outside are refused); transparent pixels are composited over white; animated images give their first
    frame (with a warning). Other integer types are refused. With `do_convert_rgb=False` images keep their channels
    and dtype (arrays and tensors only).

    The defaults resize the shorter side to 512 (capping the longer at 2048) like the ADE20K recipes; the
    Cityscapes presets use `size={"shortest_edge": 1024, "longest_edge": 2048}`, i.e. full resolution.

    `post_process_semantic_segmentation(outputs, target_sizes)` crops each image's region out of the padded logits
    (from `outputs.pixel_mask`, which the model returns when it is given one) and returns one `(H, W)` tensor of
    class ids per image.
    """

    valid_kwargs = FaPNImageProcessorKwargs
    model_input_names = ["pixel_values", "pixel_mask"]
    size = {"shortest_edge": 512, "longest_edge": 2048}
    default_to_square = False
    do_convert_rgb = True
    do_pad = True
    detectron2_resize = False

    def __init__(self, **kwargs: Unpack[FaPNImageProcessorKwargs]) -> None:
        super().__init__(**kwargs)

    def preprocess(
        self, images: Any, segmentation_maps: Any | None = None, **kwargs: Unpack[FaPNImageProcessorKwargs]
    ) -> BatchFeature:
        r"""
        images (`ImageInput`):
            One image or a batch: PIL images, `(H, W)`, `(H, W, C)` or `(C, H, W)` NumPy arrays and tensors, or
            `(N, ...)` stacks of them.
        segmentation_maps (`ImageInput`, *optional*):
            One `(H, W)` class-id map per image (PIL, NumPy or PyTorch), of the size of its image.

        Returns:
            [`BatchFeature`] with `pixel_values` `(N, 3, H, W)`, `pixel_mask` `(N, H, W)` (1 on the image, 0 on the
            padding) and, with segmentation maps, `labels` `(N, H, W)` (int64, padding 255).
        """
        return super().preprocess(images, segmentation_maps, **kwargs)

    def _preprocess_image_like_inputs(
        self,
        images: Any,
        segmentation_maps: Any | None,
        do_convert_rgb: bool,
        input_data_format: str | ChannelDimension | None,
        return_tensors: str | None,
        do_pad: bool | None = None,
        pad_size: SizeDict | None = None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        images = self._prepare_image_like_inputs(
            images=images, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format, device=device
        )
        if kwargs.get("do_normalize") and any(image.shape[0] != len(kwargs["image_mean"]) for image in images):
            counts = sorted({image.shape[0] for image in images})
            raise ValueError(
                f"images with {counts} channels cannot be normalised with the {len(kwargs['image_mean'])} values of "
                "image_mean; with do_convert_rgb=False the images must already have that many channels"
            )
        maps = None if segmentation_maps is None else prepare_segmentation_maps(segmentation_maps, images)
        if kwargs.pop("detectron2_resize", False) and kwargs.get("do_resize"):
            images, maps = self._detectron2_resize(images, maps, kwargs["size"])
            kwargs["do_resize"] = False
        pixel_values = self._preprocess(images, **{**kwargs, "do_reduce_labels": False})
        labels = None
        if maps is not None:
            label_kwargs = {**kwargs, "do_normalize": False, "do_rescale": False}
            labels = self._preprocess(maps, **{**label_kwargs, "resample": tvF.InterpolationMode.NEAREST_EXACT})
            labels = [label.squeeze(0).to(torch.int64) for label in labels]

        sizes = [tuple(image.shape[-2:]) for image in pixel_values]
        if do_pad:
            target = (pad_size.height, pad_size.width) if pad_size is not None else tuple(map(max, zip(*sizes)))
            too_large = [index for index, size in enumerate(sizes) if size[0] > target[0] or size[1] > target[1]]
            if too_large:
                raise ValueError(
                    f"images {too_large} are larger than pad_size {target} (H, W) after resizing: {sizes[too_large[0]]}"
                )
            pixel_values = [self._pad_to(image, target, 0) for image in pixel_values]
            if labels is not None:
                labels = [self._pad_to(label, target, LABEL_PADDING) for label in labels]
        elif return_tensors is not None and len(set(sizes)) > 1:
            raise ValueError(
                f"images of sizes {sorted(set(sizes))} (H, W) cannot be stacked with do_pad=False; pad them "
                "(do_pad=True), resize them to one size, or pass return_tensors=None for a list"
            )
        pixel_mask = [self._pad_to(torch.ones(size, dtype=torch.int64, device=image.device), image.shape[-2:], 0)
                      for size, image in zip(sizes, pixel_values)]  # fmt: skip
        data = {"pixel_values": pixel_values, "pixel_mask": pixel_mask}
        if labels is not None:
            data["labels"] = labels
        return BatchFeature(data=data, tensor_type=return_tensors)

    @staticmethod
    def _detectron2_resize(
        images: list[torch.Tensor], maps: list[torch.Tensor] | None, size: SizeDict
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Images (`resize_image`) and their `(1, H, W)` maps (`resize_label_map`) at detectron2's size
        (`shortest_edge_size(H, W, size.shortest_edge, size.longest_edge)`, or `size.height` x `size.width` when
        given, e.g. a test-time-augmentation view)."""
        fixed = (size.height, size.width) if size.height and size.width else None
        if fixed is None and not size.shortest_edge:
            raise ValueError(
                f"detectron2_resize=True resizes the shorter side: size must be {{'shortest_edge': ..., "
                f"'longest_edge': ...}} (or {{'height': ..., 'width': ...}}), got {dict(size)}"
            )
        sizes = [
            fixed or shortest_edge_size(*image.shape[-2:], size.shortest_edge, size.longest_edge) for image in images
        ]
        images = [resize_image(image, new_size) for image, new_size in zip(images, sizes)]
        if maps is not None:
            maps = [resize_label_map(label_map, new_size) for label_map, new_size in zip(maps, sizes)]
        return images, maps

    @staticmethod
    def _pad_to(image: torch.Tensor, size: Sequence[int], value: float) -> torch.Tensor:
        """Pads `(..., h, w)` at the bottom and right to `size` with `value`."""
        height, width = image.shape[-2:]
        return F.pad(image, (0, size[1] - width, 0, size[0] - height), value=value)

    def post_process_semantic_segmentation(
        self,
        outputs: Any,
        target_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None,
        return_segmentation_scores: bool = False,
        pixel_mask: torch.Tensor | None = None,
    ) -> list[torch.Tensor] | list[SemanticSegmentationPostProcessorOutput]:
        """Class maps from the model's logits `(N, K, H, W)`.

        Each image's own region is cropped out of the padded batch first (from `pixel_mask`, by default
        `outputs.pixel_mask`), then its scores are resized (bilinear) to `target_sizes[i]` when given.

        Args:
            outputs: the model's output object (not the tuple of `return_dict=False`), with `logits` and optionally
                `pixel_mask` `(N, H, W)`.
            target_sizes: one `(height, width)` per image, e.g. the original image sizes: a list of pairs or an
                `(N, 2)` tensor of positive ints (`check_target_sizes`).
            return_segmentation_scores: also return the (cropped, resized) scores `(K, height, width)`.
            pixel_mask: overrides `outputs.pixel_mask`.

        Returns:
            One `(height, width)` int64 tensor of class ids per image or, with `return_segmentation_scores`, one
            [`SemanticSegmentationPostProcessorOutput`] (`segmentation`, `segmentation_scores`) per image.
        """
        method = "post_process_semantic_segmentation"
        logits = required_output_field(outputs, "logits", method)
        if pixel_mask is None:
            pixel_mask = output_field(outputs, "pixel_mask", method)
        if pixel_mask is not None and tuple(pixel_mask.shape) != (logits.shape[0], *logits.shape[-2:]):
            raise ValueError(
                f"pixel_mask of shape {tuple(pixel_mask.shape)} does not match logits of shape {tuple(logits.shape)}"
            )
        target_sizes = check_target_sizes(target_sizes, len(logits))
        results = []
        for index, scores in enumerate(logits):
            if pixel_mask is not None:
                height, width = valid_size(pixel_mask[index])
                scores = scores[:, :height, :width]
            if target_sizes is not None:
                size = target_sizes[index]
                scores = F.interpolate(scores.unsqueeze(0), size=size, mode="bilinear", align_corners=False)[0]
            segmentation = scores.argmax(dim=0)
            if return_segmentation_scores:
                segmentation = SemanticSegmentationPostProcessorOutput(
                    data={"segmentation": segmentation, "segmentation_scores": scores}
                )
            results.append(segmentation)
        return results


__all__ = [
    "TRANSPARENT_BACKGROUND",
    "DecodedImagesMixin",
    "FaPNImageProcessor",
    "FaPNImageProcessorKwargs",
    "as_rgb_tensor",
    "decode_image",
    "open_image",
    "to_channels_first",
    "upright",
    "valid_size",
]
