"""Image processor for FaPN semantic segmentation models."""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers import SegformerImageProcessor


def _as_rgb_image(image: Any) -> Any:
    """Returns `image` with 3 channels: grayscale (2-D, or one channel) is repeated, an alpha channel dropped.

    PIL images are converted by PIL; arrays and tensors may be channels-last `(H, W[, C])` or, for tensors,
    channels-first `(C, H, W)`.
    """
    if isinstance(image, PIL.Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, (np.ndarray, torch.Tensor)):
        channels_first = isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] in (1, 2, 3, 4)
        if image.ndim == 2:
            image = image[..., None] if isinstance(image, np.ndarray) else image[None]
            channels_first = isinstance(image, torch.Tensor)
        if image.ndim != 3:
            raise ValueError(f"an image must be 2-D (H, W) or 3-D with channels, got shape {tuple(image.shape)}")
        axis = 0 if channels_first else 2
        channels = image.shape[axis]
        if channels in (1, 2):  # gray, gray + alpha
            index = [slice(None)] * 3
            index[axis] = slice(0, 1)
            gray = image[tuple(index)]
            repeats = [1, 1, 1]
            repeats[axis] = 3
            return np.tile(gray, repeats) if isinstance(image, np.ndarray) else gray.repeat(*repeats)
        if channels == 4:  # RGBA
            return image[:3] if channels_first else image[..., :3]
        if channels != 3:
            raise ValueError(f"an image must have 1, 3 or 4 channels, got shape {tuple(image.shape)}")
    return image


def _size_of(image: Any) -> tuple[int, int]:
    if isinstance(image, PIL.Image.Image):
        return image.height, image.width
    shape = tuple(image.shape)
    if isinstance(image, torch.Tensor) and len(shape) == 3 and shape[0] in (1, 3):
        return shape[1], shape[2]
    return shape[0], shape[1]


def _as_list(items: Any) -> list:
    return list(items) if isinstance(items, (list, tuple)) else [items]


class FaPNImageProcessor(SegformerImageProcessor):
    r"""
    Prepares images (and segmentation maps) for FaPN: optional aspect-preserving resize, rescale to [0, 1] and
    normalisation; labels can be reduced by one (`do_reduce_labels`, 0 -> 255). Grayscale and RGBA images,
    PIL, NumPy or PyTorch, are turned into RGB first. Images of any size work: the model pads them itself.

    The defaults resize the shorter side to 512 (capping the longer at 2048) like the ADE20K recipes; the
    Cityscapes presets use `size={"shortest_edge": 1024, "longest_edge": 2048}`, i.e. full resolution.

    `post_process_semantic_segmentation(outputs, target_sizes)` returns one `(H, W)` tensor of class ids per image.
    """

    model_input_names = ["pixel_values"]
    size = {"shortest_edge": 512, "longest_edge": 2048}
    default_to_square = False
    do_convert_rgb = True

    def preprocess(self, images: Any, segmentation_maps: Any | None = None, **kwargs: Any):
        if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
            images = list(images)
        images = [_as_rgb_image(image) for image in _as_list(images)]
        if segmentation_maps is not None:
            maps = _as_list(segmentation_maps)
            if len(maps) != len(images):
                raise ValueError(f"got {len(images)} images but {len(maps)} segmentation maps")
            for index, (image, segmentation_map) in enumerate(zip(images, maps)):
                if np.asarray(segmentation_map).ndim != 2:
                    raise ValueError(
                        f"segmentation map {index} must be 2-D (height, width) class ids, got shape "
                        f"{np.asarray(segmentation_map).shape}"
                    )
                if _size_of(image) != _size_of(segmentation_map):
                    raise ValueError(
                        f"segmentation map {index} has size {_size_of(segmentation_map)} (H, W) but its image has "
                        f"size {_size_of(image)}"
                    )
            segmentation_maps = maps
        return super().preprocess(images, segmentation_maps, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        # Without `image_processor_type`, AutoImageProcessor resolves the class from the model config: the registered
        # class when fapn_hf is imported, the shipped remote code (config.json's auto_map) otherwise.
        output = super().to_dict()
        output.pop("image_processor_type", None)
        output.pop("auto_map", None)
        return output


__all__ = ["FaPNImageProcessor"]
