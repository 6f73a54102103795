"""Image processor for FaPN semantic segmentation models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers import SegformerImageProcessor


def as_rgb_tensor(image: Any) -> torch.Tensor:
    """Returns `image` as a `(3, H, W)` tensor (dtype kept): grayscale is repeated, an alpha channel dropped.

    PIL images are converted by PIL. NumPy arrays are `(H, W)` or channels-last `(H, W, C)`; tensors are `(H, W)` or
    channels-first `(C, H, W)`, the conventions of PIL/OpenCV and torchvision. Being explicit here avoids
    transformers' guess of the channel axis, which fails for tiny images such as 1x1 or 3x3.
    """
    if isinstance(image, PIL.Image.Image):
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
    if isinstance(image, np.ndarray):
        if image.ndim == 3:
            image = np.moveaxis(image, -1, 0)
        image = torch.from_numpy(np.array(image))  # a copy: arrays from PIL are often read-only
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"expected a PIL image, a NumPy array or a torch tensor, got {type(image).__name__}")
    if image.ndim == 2:
        image = image.unsqueeze(0)
    if image.ndim != 3:
        raise ValueError(f"an image must be (H, W) or have a channel axis, got shape {tuple(image.shape)}")
    channels = image.shape[0]
    if channels in (1, 2):  # gray, gray + alpha
        return image[:1].expand(3, -1, -1).contiguous()
    if channels in (3, 4):  # RGB, RGBA
        return image[:3].contiguous()
    raise ValueError(f"an image must have 1, 3 or 4 channels, got shape {tuple(image.shape)}")


def normalize(rgb: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """`(3, H, W)` RGB -> float `(x - mean) / std`, integer images scaled by 1/255 first (floats taken as [0, 1]).

    For integer images the 1/255 is folded into the statistics, `(x - 255 mean) / (255 std)`, the arithmetic of
    transformers' processors: both give the same float32 values, and for converted detectron2 models (mean
    `PIXEL_MEAN / 255`, std `1 / 255`) exactly detectron2's `x - PIXEL_MEAN`.
    """
    scale = 1.0 if torch.is_floating_point(rgb) else 255.0
    pixels = rgb.float()
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=pixels.device).view(3, 1, 1) * scale
    std_t = torch.as_tensor(std, dtype=torch.float32, device=pixels.device).view(3, 1, 1) * scale
    return (pixels - mean_t) / std_t


def _size_of(image: Any) -> tuple[int, int]:
    """(H, W) of a segmentation map (PIL, or a 2-D array/tensor)."""
    if isinstance(image, PIL.Image.Image):
        return image.height, image.width
    return tuple(image.shape[-2:])


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
        images = [as_rgb_tensor(image) for image in _as_list(images)]
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
                if tuple(image.shape[-2:]) != _size_of(segmentation_map):
                    raise ValueError(
                        f"segmentation map {index} has size {_size_of(segmentation_map)} (H, W) but its image has "
                        f"size {tuple(image.shape[-2:])}"
                    )
            segmentation_maps = maps
        kwargs["input_data_format"] = "channels_first"
        return super().preprocess(images, segmentation_maps, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        # Without `image_processor_type`, AutoImageProcessor resolves the class from the model config: the registered
        # class when fapn_hf is imported, the shipped remote code (config.json's auto_map) otherwise.
        output = super().to_dict()
        output.pop("image_processor_type", None)
        output.pop("auto_map", None)
        return output


__all__ = ["FaPNImageProcessor", "as_rgb_tensor", "normalize"]
