"""Image processor for FaPN semantic segmentation models."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from transformers import SegformerImageProcessor

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
    normalisation; labels can be reduced by one (`do_reduce_labels`, 0 -> 255). Images of any size work: the model
    pads them itself.

    Every image is first decoded by `decode_image`, the rule all FaPN paths share: file paths, PIL images, NumPy
    arrays `(H, W[, C])` and tensors `([C,] H, W)` become 8-bit RGB. EXIF orientation is applied to files and PIL
    images; uint16 / 16-bit images are scaled by 255 / 65535, 32-bit integer PIL images (mode `I`) are taken as
    16-bit, float pixels as [0, 1] (values outside are refused); transparent pixels are composited over white;
    animated images give their first frame (with a warning). Other integer types are refused.

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
        if not images:
            raise ValueError("no images to process (an empty batch)")
        if segmentation_maps is not None:
            # Label maps are class ids, never rescaled; PIL ones are turned upright like their images.
            maps = [upright(m) if isinstance(m, PIL.Image.Image) else m for m in _as_list(segmentation_maps)]
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


__all__ = ["TRANSPARENT_BACKGROUND", "FaPNImageProcessor", "as_rgb_tensor", "decode_image", "open_image", "upright"]
