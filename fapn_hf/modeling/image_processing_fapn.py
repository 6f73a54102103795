"""Image processor for FaPN semantic segmentation models."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as tvF
from transformers import SegformerImageProcessor
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import ChannelDimension, SizeDict
from transformers.processing_utils import ImagesKwargs, Unpack

from .remote_code import ProcessorCodeMixin

# Transparent pixels are composited over this colour (white, as image viewers show them), never revealed.
TRANSPARENT_BACKGROUND: tuple[int, int, int] = (255, 255, 255)
_EXIF_ORIENTATION = 0x0112
# Float images are taken as [0, 1]; a value counts as inside when it rounds into 0..255 on 8 bits.
_FLOAT_LOW, _FLOAT_HIGH = -0.5 / 255, 1 + 0.5 / 255
_UINT16_MAX = 65535


def upright(image: PIL.Image.Image) -> PIL.Image.Image:
    """`image` turned by its EXIF orientation tag (`ImageOps.exif_transpose`); the image itself when it has none."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        return image if orientation in (None, 0, 1) else PIL.ImageOps.exif_transpose(image)
    except Exception:  # malformed EXIF data: the pixels as stored
        return image


def _decode_pil(image: PIL.Image.Image, name: str) -> np.ndarray:
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        warnings.warn(f"{name} is animated ({frames} frames): FaPN segments its first frame", stacklevel=3)
        image.seek(0)
    image = upright(image)
    if image.mode.startswith("I;16"):  # 16-bit PNG / TIFF: uint16 values
        return _decode_array(np.asarray(image), name)
    if image.mode == "I":  # 32-bit integers; PIL's mode for many 16-bit files: taken as 16-bit
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > _UINT16_MAX):
            raise ValueError(
                f"{name}: a 32-bit integer (mode I) image is taken as 16-bit, but its values span "
                f"[{values.min()}, {values.max()}], outside [0, {_UINT16_MAX}]"
            )
        return _decode_array(values.astype(np.uint16), name)
    if image.mode == "F":
        return _decode_array(np.asarray(image), name)
    if image.has_transparency_data:  # alpha band, or a transparent palette entry / colour key
        return _decode_array(np.asarray(image.convert("RGBA")), name)
    return np.array(image if image.mode == "RGB" else image.convert("RGB"))


def _unit_range(values: np.ndarray, name: str) -> np.ndarray:
    """uint8 / uint16 / float values as float32 in [0, 1], by the range of their type."""
    if values.dtype == np.uint8:
        return values.astype(np.float32) / 255
    if values.dtype.kind == "u" and values.dtype.itemsize == 2:  # either byte order (PIL's I;16B is big-endian)
        return values.astype(np.float32) / _UINT16_MAX
    if values.dtype.kind == "f":
        values = values.astype(np.float32)
        if not np.isfinite(values).all():
            raise ValueError(f"{name} holds NaN or infinite values")
        low, high = float(values.min()), float(values.max())
        if low < _FLOAT_LOW or high >= _FLOAT_HIGH:
            raise ValueError(
                f"{name}: float pixels are taken as [0, 1], but these span [{low:.4g}, {high:.4g}]; divide "
                "0..255 data by 255, or pass it as uint8"
            )
        return np.clip(values, 0, 1)
    kind = "boolean" if values.dtype == np.bool_ else str(values.dtype)
    raise ValueError(
        f"{name}: {kind} pixels have no defined value range; pass uint8 (0..255), uint16 (0..65535) or float "
        "(0..1) pixels, e.g. `image.astype(np.uint8)`"
    )


def _decode_array(values: np.ndarray, name: str) -> np.ndarray:
    """`(H, W)` or channels-last `(H, W, C)` pixels -> RGB `(H, W, 3)` uint8."""
    if values.ndim == 2:
        values = values[:, :, None]
    if values.ndim != 3:
        raise ValueError(f"{name} must be (H, W) or have a channel axis, got shape {values.shape}")
    height, width, channels = values.shape
    if channels not in (1, 2, 3, 4):
        raise ValueError(
            f"{name} must have 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA) channels, got shape {values.shape}"
        )
    if height == 0 or width == 0:
        raise ValueError(f"{name} is empty ({height}x{width} pixels)")
    if values.dtype == np.uint8 and channels in (1, 3):  # the common case, without a float round trip
        return np.array(np.broadcast_to(values, (height, width, 3)))
    units = _unit_range(values, name)
    if channels in (2, 4):  # straight (not premultiplied) alpha, composited over the background
        alpha = units[:, :, -1:]
        background = np.asarray(TRANSPARENT_BACKGROUND, dtype=np.float32) / 255
        units = units[:, :, :-1] * alpha + background * (1 - alpha)
    return np.rint(np.broadcast_to(units, (height, width, 3)) * 255).astype(np.uint8)


def decode_image(image: Any, name: str | None = None) -> np.ndarray:
    """Any image FaPN accepts as RGB `(H, W, 3)` uint8: the one decoding rule of every path (processor, predictor,
    training and evaluation data, scripts, Space).

    Sources: a file path (`str` / `os.PathLike`), a PIL image, a NumPy array `(H, W)` or channels-last `(H, W, C)`,
    or a torch tensor `(H, W)` or channels-first `(C, H, W)`, with C = 1 (gray), 2 (gray + alpha), 3 (RGB) or
    4 (RGBA). Rules:

    - Orientation: files and PIL images are turned upright by their EXIF orientation tag, as transformers'
      `load_image` and `datasets` do; arrays and tensors are taken as they are.
    - Bit depth, by the range of the type: uint8 as it is; uint16 and 16-bit PIL images (`I;16*`) scaled by
      255 / 65535; 32-bit integer PIL images (mode `I`, what PIL makes of many 16-bit files) taken as 16-bit, values
      outside [0, 65535] refused; float pixels (mode `F`, float arrays and tensors) taken as [0, 1], values outside
      (beyond half an 8-bit step), NaN and infinity refused. Other integer types and booleans are refused: their
      range is a guess. Everything is rounded to 8 bits, the depth FaPN models are trained on.
    - Transparency: RGBA, gray + alpha, and palette or colour-key transparency are composited over
      `TRANSPARENT_BACKGROUND` (white): transparent pixels are white, never the colour stored under them.
    - Animation: animated GIF / PNG / WebP and multi-page TIFF files give their first frame, with a warning.
    - Other PIL modes (1, L, P, CMYK, YCbCr, LAB, HSV) are converted by PIL.

    Raises `ValueError` (`FileNotFoundError` for a missing file) naming the problem and the file; `name` is how
    messages call the image (default: its path, or "the image").
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is a folder, not an image file" if path.is_dir() else f"image file not found: {path}"
            )
        try:
            with PIL.Image.open(path) as opened:
                opened.load()
                return _decode_pil(opened, name or str(path))
        except (OSError, SyntaxError, PIL.Image.DecompressionBombError) as error:
            raise ValueError(f"{path} is not an image that can be read ({error})") from error
    if isinstance(image, PIL.Image.Image):
        return _decode_pil(image, name or "the image")
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.ndim == 3:
            if tensor.shape[0] not in (1, 2, 3, 4):
                raise ValueError(
                    f"{name or 'the image'}: a tensor image is (H, W) or channels-first (C, H, W) with C = 1 (gray), "
                    f"2 (gray + alpha), 3 (RGB) or 4 (RGBA), got shape {tuple(tensor.shape)}"
                )
            tensor = tensor.permute(1, 2, 0)  # (C, H, W) -> (H, W, C)
        if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16
            tensor = tensor.float()
        return _decode_array(tensor.numpy(), name or "the image")
    if isinstance(image, np.ndarray):
        return _decode_array(image, name or "the image")
    raise ValueError(
        f"expected an image: a file path, a PIL image, a NumPy array or a torch tensor, got {type(image).__name__}"
    )


def open_image(image: Any) -> PIL.Image.Image:
    """`decode_image(image)` as a PIL RGB image: hand it to transformers' `pipeline`, whose own file reading keeps
    8 bits only and drops transparency without compositing."""
    return PIL.Image.fromarray(decode_image(image))


def as_rgb_tensor(image: Any) -> torch.Tensor:
    """`decode_image(image)` as a `(3, H, W)` uint8 tensor: what the processor resizes and normalises."""
    return torch.from_numpy(decode_image(image)).permute(2, 0, 1)


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
        if not (first or last):
            raise ValueError(
                f"an image must have 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA) channels on its first or last "
                f"axis, got shape {tuple(tensor.shape)}; pass input_data_format for other channel counts"
            )
        channels_last = last and (not first or is_array)
    return tensor.permute(2, 0, 1) if channels_last else tensor


def _size_of(image: Any) -> tuple[int, int]:
    """(H, W) of a segmentation map (PIL, or a 2-D array/tensor)."""
    if isinstance(image, PIL.Image.Image):
        return image.height, image.width
    return tuple(image.shape[-2:])


def _is_local_file(image: Any) -> bool:
    return isinstance(image, os.PathLike) or (isinstance(image, str) and not image.startswith(("http://", "https://")))


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


class DecodedImagesMixin:
    """Image decoding of every FaPN processor (mixed into transformers' torchvision-backend processors): local files,
    PIL images, arrays and tensors go through `decode_image` (EXIF orientation, 16-bit depth, transparency) when
    `do_convert_rgb` is on; URLs are left to transformers' reader. With `do_convert_rgb=False` arrays and tensors keep
    their channels and dtype."""

    def _prepare_images_structure(self, images: Any, expected_ndims: int = 3) -> list:
        # Local files are read by `decode_image` (in `process_image`), which keeps 16-bit depth and transparency;
        # transformers' own reader is left the URLs.
        images = [image if _is_local_file(image) else self.fetch_images(image) for image in _flat_list(images)]
        if not images:
            raise ValueError("no images to process (an empty batch)")
        return images

    def process_image(
        self,
        image: Any,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """One image as a `(C, H, W)` tensor of its dtype: RGB with `do_convert_rgb`, its own channels otherwise."""
        if _is_local_file(image):
            image = as_rgb_tensor(image)
        elif isinstance(image, PIL.Image.Image):
            image = (
                as_rgb_tensor(image) if do_convert_rgb else to_channels_first(np.array(upright(image)), "channels_last")
            )
        elif isinstance(image, (np.ndarray, torch.Tensor)):
            image = to_channels_first(image, input_data_format)
            if do_convert_rgb:
                image = as_rgb_tensor(image)
        else:
            raise ValueError(
                f"expected an image file path, a PIL image, a NumPy array or a torch tensor, got {type(image).__name__}"
            )
        image = image.contiguous()
        return image if device is None else image.to(device)


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
            if isinstance(segmentation_map, PIL.Image.Image):  # class ids, turned upright like their image
                segmentation_map = upright(segmentation_map)
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
]
