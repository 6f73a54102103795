"""Image processor for FaPN semantic segmentation models."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as tvF
from transformers import SegformerImageProcessor
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import ChannelDimension, SizeDict
from transformers.processing_utils import ImagesKwargs, Unpack


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


# Label value of the padding the processor adds around segmentation maps (and of `do_reduce_labels`' background).
LABEL_PADDING = 255
# Channel counts an image may have: gray, gray + alpha, RGB, RGBA.
IMAGE_CHANNELS = (1, 2, 3, 4)


def to_channels_first(
    image: np.ndarray | torch.Tensor, input_data_format: str | ChannelDimension | None
) -> torch.Tensor:
    """An `(H, W)` or 3-D array/tensor as a `(C, H, W)` tensor (a copy for arrays, which PIL often makes read-only).

    `input_data_format` (`"channels_first"` / `"channels_last"`) is followed when given. Otherwise the channel axis is
    the one end of the shape that can hold an image's channels (1 to 4); when both ends can (e.g. `(3, 5, 4)`, or a
    1x1 RGB image), the usual convention decides: NumPy arrays are channels-last (PIL, OpenCV), tensors channels-first
    (torchvision).
    """
    is_array = isinstance(image, np.ndarray)
    tensor = torch.from_numpy(np.array(image)) if is_array else image
    if tensor.ndim == 2:
        return tensor.unsqueeze(0)
    if tensor.ndim != 3:
        raise ValueError(f"an image must be (H, W) or have a channel axis, got shape {tuple(tensor.shape)}")
    if input_data_format is not None:
        channels_last = ChannelDimension(input_data_format) == ChannelDimension.LAST
    else:
        first, last = tensor.shape[0] in IMAGE_CHANNELS, tensor.shape[-1] in IMAGE_CHANNELS
        channels_last = last and (not first or is_array)
    return tensor.permute(2, 0, 1) if channels_last else tensor


def _size_of(image: Any) -> tuple[int, int]:
    """(H, W) of a segmentation map (PIL, or a 2-D array/tensor)."""
    if isinstance(image, PIL.Image.Image):
        return image.height, image.width
    return tuple(image.shape[-2:])


def _flat_list(items: Any) -> list:
    """One image (PIL, 2-D or 3-D array/tensor), a 4-D batch, or a (nested) list of them, as a flat list."""
    if isinstance(items, (list, tuple)):
        return [image for item in items for image in _flat_list(item)]
    if isinstance(items, (np.ndarray, torch.Tensor)) and items.ndim == 4:
        return list(items)
    return [items]


def valid_size(pixel_mask: torch.Tensor) -> tuple[int, int]:
    """(H, W) of the image inside a `(H', W')` mask that pads it at the bottom and right."""
    return int(pixel_mask.any(dim=1).sum()), int(pixel_mask.any(dim=0).sum())


class FaPNImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    do_reduce_labels (`bool`, *optional*, defaults to `self.do_reduce_labels`):
        Whether to reduce every label of the segmentation maps by 1 and turn 0 (background, e.g. in ADE20K) into
        255, the label the loss ignores.
    """

    do_reduce_labels: bool


class FaPNImageProcessor(SegformerImageProcessor):
    r"""
    Prepares images (and segmentation maps) for FaPN: optional aspect-preserving resize, rescale to [0, 1] and
    normalisation; labels can be reduced by one (`do_reduce_labels`, 0 -> 255). Grayscale and RGBA images,
    PIL, NumPy or PyTorch, channels first or last, are turned into RGB first (`do_convert_rgb`).

    Images of different sizes are batched by zero-padding them at the bottom and right to the batch's largest size
    (`do_pad`, or to a fixed `pad_size`); `pixel_mask` marks each image's own pixels with 1, and segmentation maps
    are padded with 255 (ignored). The model pads to a multiple of 32 itself, so any size works.

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

    def _prepare_images_structure(self, images: Any, expected_ndims: int = 3) -> list:
        return _flat_list(self.fetch_images(images))

    def process_image(
        self,
        image: Any,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """One image as a `(C, H, W)` tensor of its dtype: RGB with `do_convert_rgb`, its own channels otherwise."""
        if isinstance(image, PIL.Image.Image):
            image = as_rgb_tensor(image) if do_convert_rgb else to_channels_first(np.array(image), "channels_last")
        elif isinstance(image, (np.ndarray, torch.Tensor)):
            image = to_channels_first(image, input_data_format)
            if do_convert_rgb:
                image = as_rgb_tensor(image)
        else:
            raise ValueError(f"expected a PIL image, a NumPy array or a torch tensor, got {type(image).__name__}")
        image = image.contiguous()
        return image if device is None else image.to(device)

    def _prepare_segmentation_maps(self, segmentation_maps: Any, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Checks the maps against their images and returns them as `(1, H, W)` tensors."""
        if isinstance(segmentation_maps, (np.ndarray, torch.Tensor)) and segmentation_maps.ndim == 3:
            # An (N, H, W) stack for N images; anything else 3-D is a malformed single map.
            maps = list(segmentation_maps) if len(segmentation_maps) == len(images) else [segmentation_maps]
        else:
            maps = _flat_list(segmentation_maps)
        if len(maps) != len(images):
            raise ValueError(f"got {len(images)} images but {len(maps)} segmentation maps")
        prepared = []
        for index, (image, segmentation_map) in enumerate(zip(images, maps)):
            array = np.asarray(segmentation_map)
            if array.ndim != 2:
                raise ValueError(
                    f"segmentation map {index} must be 2-D (height, width) class ids, got shape {array.shape}"
                )
            if tuple(image.shape[-2:]) != _size_of(segmentation_map):
                raise ValueError(
                    f"segmentation map {index} has size {_size_of(segmentation_map)} (H, W) but its image has "
                    f"size {tuple(image.shape[-2:])}"
                )
            prepared.append(torch.from_numpy(np.array(array)).unsqueeze(0).to(image.device))
        return prepared

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
        maps = None if segmentation_maps is None else self._prepare_segmentation_maps(segmentation_maps, images)
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
            outputs: the model's output, with `logits` and optionally `pixel_mask` `(N, H, W)`.
            target_sizes: one `(height, width)` per image, e.g. the original image sizes.
            return_segmentation_scores: also return the (cropped, resized) scores `(K, height, width)`.
            pixel_mask: overrides `outputs.pixel_mask`.

        Returns:
            One `(height, width)` int64 tensor of class ids per image or, with `return_segmentation_scores`, one
            [`SemanticSegmentationPostProcessorOutput`] (`segmentation`, `segmentation_scores`) per image.
        """
        logits = outputs.logits
        if pixel_mask is None:
            pixel_mask = getattr(outputs, "pixel_mask", None)
        if pixel_mask is not None and tuple(pixel_mask.shape) != (logits.shape[0], *logits.shape[-2:]):
            raise ValueError(
                f"pixel_mask of shape {tuple(pixel_mask.shape)} does not match logits of shape {tuple(logits.shape)}"
            )
        if target_sizes is not None and len(target_sizes) != len(logits):
            raise ValueError(f"got {len(target_sizes)} target sizes for a batch of {len(logits)} images")
        results = []
        for index, scores in enumerate(logits):
            if pixel_mask is not None:
                height, width = valid_size(pixel_mask[index])
                scores = scores[:, :height, :width]
            if target_sizes is not None:
                size = tuple(int(side) for side in target_sizes[index])
                scores = F.interpolate(scores.unsqueeze(0), size=size, mode="bilinear", align_corners=False)[0]
            segmentation = scores.argmax(dim=0)
            if return_segmentation_scores:
                segmentation = SemanticSegmentationPostProcessorOutput(
                    data={"segmentation": segmentation, "segmentation_scores": scores}
                )
            results.append(segmentation)
        return results

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> list[str]:
        saved = super().save_pretrained(save_directory, *args, **kwargs)
        defer_processor_class_to_model_config(save_directory)
        return saved

    def to_dict(self) -> dict[str, Any]:
        # An `auto_map` in preprocessor_config.json would make transformers' pipeline look for a remote video
        # processor and prompt about remote code even with fapn_hf imported; the model's config.json carries it.
        output = super().to_dict()
        output.pop("auto_map", None)
        return output


def defer_processor_class_to_model_config(folder: str | Path) -> None:
    """In a model folder that ships FaPN's code (its config.json maps `AutoImageProcessor`), drops
    `image_processor_type` from preprocessor_config.json so that `AutoImageProcessor` takes the class from the model
    config: the registered class with fapn_hf imported, the shipped code with `trust_remote_code=True` otherwise. A
    processor saved on its own keeps its type and reloads with `AutoImageProcessor` directly."""
    folder = Path(folder)
    config_file, processor_file = folder / "config.json", folder / "preprocessor_config.json"
    if not (config_file.is_file() and processor_file.is_file()):
        return
    auto_map = json.loads(config_file.read_text()).get("auto_map") or {}
    processor_config = json.loads(processor_file.read_text())
    if "AutoImageProcessor" in auto_map and processor_config.pop("image_processor_type", None) is not None:
        processor_file.write_text(json.dumps(processor_config, indent=2, sort_keys=True) + "\n")


__all__ = [
    "FaPNImageProcessor",
    "FaPNImageProcessorKwargs",
    "as_rgb_tensor",
    "defer_processor_class_to_model_config",
    "normalize",
    "to_channels_first",
]
