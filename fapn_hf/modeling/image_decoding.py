"""Images as every family's processor (and the package's data, predictor and scripts) reads them: one decoding rule
(`decode_image`: EXIF orientation, bit depth, transparency, animation), channel layouts, flat batches, and the size of
an image inside a padded batch.

Part of the shipped kernel: imports nothing of the package (see `remote_code.KERNEL_MODULES`).
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from transformers.image_utils import ChannelDimension

try:  # optional: libspng decodes PNG files about 1.5x faster than PIL; without it PIL reads them, to the same pixels
    import pyspng
except ImportError:
    pyspng = None

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


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks after which PIL's pixels are not the plain stored samples: transparency (a colour key or palette alpha),
# animation (PIL reads the first frame), EXIF data (orientation).
_PNG_PIL_CHUNKS = frozenset({b"tRNS", b"acTL", b"eXIf"})
_PNG_TEXT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt"})
# Text keywords PIL also reads an EXIF orientation from (ImageMagick's raw EXIF profile, XMP).
_PNG_ORIENTATION_KEYWORDS = frozenset({b"Raw profile type exif", b"XML:com.adobe.xmp"})
# (colour type, bit depth) pyspng decodes to PIL's pixels: gray, RGB and RGBA at 8 and 16 bits (PIL keeps 16-bit
# gray, and the high byte of 16-bit colour). Palette, gray + alpha (pyspng has no format for it) and 1/2/4-bit
# files: PIL.
_PNG_SPNG_KINDS = frozenset({(0, 8), (2, 8), (6, 8), (0, 16), (2, 16), (6, 16)})


def _png_plain_kind(data: bytes) -> tuple[int, int] | None:
    """(colour type, bit depth) of a PNG file whose pixels are its plain stored samples, as PIL would give them;
    None for anything PIL must read: not a PNG, a chunk structure that PIL would refuse (bad checksum before the image
    data), transparency, animation, EXIF orientation, or more pixels than PIL's decompression-bomb limit."""
    if not data.startswith(_PNG_SIGNATURE) or len(data) < 33:
        return None
    position, end, kind, seen_data = 8, len(data), None, False
    while position + 12 <= end:
        length, chunk = struct.unpack_from(">I4s", data, position)
        body = position + 8
        if body + length + 4 > end:
            return None  # truncated: PIL says so
        if chunk in _PNG_PIL_CHUNKS:
            return None
        if chunk in _PNG_TEXT_CHUNKS and bytes(data[body : body + min(length, 80)]).split(b"\0", 1)[0] in (
            _PNG_ORIENTATION_KEYWORDS
        ):
            return None
        if chunk == b"IDAT":
            seen_data = True
        elif not seen_data:
            # PIL checks the checksum of every chunk before the image data and refuses the file on a mismatch.
            (stored,) = struct.unpack_from(">I", data, body + length)
            if zlib.crc32(data[position + 4 : body + length]) != stored:
                return None
        if position == 8:
            if chunk != b"IHDR" or length != 13:
                return None
            width, height, depth, colour, compression, filtering, interlace = struct.unpack_from(">IIBBBBB", data, body)
            limit = PIL.Image.MAX_IMAGE_PIXELS
            if (colour, depth) not in _PNG_SPNG_KINDS or compression or filtering or interlace > 1:
                return None
            if width == 0 or height == 0 or (limit is not None and width * height > limit):
                return None
            kind = colour, depth
        if chunk == b"IEND":
            break
        position = body + length + 4
    return kind if seen_data else None


def png_pixels(data: bytes) -> np.ndarray | None:
    """The pixels of a PNG file's bytes as PIL gives them (`np.asarray(PIL.Image.open(file))`), decoded by libspng
    (`pyspng`, about 1.5x faster): gray `(H, W)` uint8 (mode L) or uint16 (16-bit, mode I;16), RGB `(H, W, 3)` or
    RGBA `(H, W, 4)` uint8 (the high byte of 16-bit colour, as PIL keeps it).

    Returns None where PIL must read the file (same pixels, PIL's rules and errors): pyspng not installed, not a
    PNG, palette, gray + alpha or 1/2/4-bit files, transparency (tRNS), animation, EXIF or XMP orientation
    data, a bad checksum before the image data, more pixels than `PIL.Image.MAX_IMAGE_PIXELS`, or any file libspng
    cannot decode.
    """
    if pyspng is None:
        return None
    kind = _png_plain_kind(data)
    if kind is None:
        return None
    colour, depth = kind
    try:
        pixels = pyspng.load(data)
    except Exception:  # noqa: BLE001 - whatever libspng refuses, PIL reads or reports
        return None
    if depth == 16:
        # pyspng gives 16-bit gray as gray + alpha, 16-bit RGB as RGBA (alpha opaque), both host-endian.
        if colour == 0:
            return pixels[:, :, 0]
        high = (pixels >> 8).astype(np.uint8)
        return high[:, :, :3] if colour == 2 else high
    return pixels


def _decode_png(data: bytes, name: str) -> np.ndarray | None:
    """`decode_image`'s RGB `(H, W, 3)` uint8 of PNG bytes read by `png_pixels`; None where PIL must read them."""
    pixels = png_pixels(data)
    if pixels is None:
        return None
    if pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.flags.c_contiguous:
        return pixels  # already RGB and a fresh array of its own: no copy
    return _decode_array(pixels, name)


def decode_image_bytes(data: bytes, name: str = "the image") -> np.ndarray:
    """The bytes of an image file (PNG, JPEG, ... anything PIL reads) as RGB `(H, W, 3)` uint8 by `decode_image`'s
    rules: what `decode_image(path)` gives for the file holding them. PNG files go through `png_pixels` (libspng)
    where it gives PIL's pixels, the others through PIL.

    Raises `ValueError` naming `name` for bytes that are no image PIL can read.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name}: expected the bytes of an image file, got {type(data).__name__}")
    data = bytes(data)
    decoded = _decode_png(data, name)
    if decoded is not None:
        return decoded
    try:
        with PIL.Image.open(io.BytesIO(data)) as opened:
            opened.load()
            return _decode_pil(opened, name)
    except (OSError, SyntaxError, PIL.Image.DecompressionBombError) as error:
        raise ValueError(f"{name} is not an image that can be read ({error})") from error


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
        if pyspng is not None:
            with path.open("rb") as file:
                is_png = file.read(len(_PNG_SIGNATURE)) == _PNG_SIGNATURE
            decoded = _decode_png(path.read_bytes(), name or str(path)) if is_png else None
            if decoded is not None:
                return decoded
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


def size_of(image: Any) -> tuple[int, int]:
    """(H, W) of a segmentation map (PIL, or a 2-D array/tensor)."""
    if isinstance(image, PIL.Image.Image):
        return image.height, image.width
    return tuple(image.shape[-2:])


def is_local_file(image: Any) -> bool:
    """Whether `image` names a local file (a path, or a string that is not an http(s) URL): `decode_image` reads
    those; URLs are left to transformers' reader."""
    return isinstance(image, os.PathLike) or (isinstance(image, str) and not image.startswith(("http://", "https://")))


def flat_list(items: Any) -> list:
    """One image (PIL, 2-D or 3-D array/tensor), a 4-D batch, or a (nested) list of them, as a flat list."""
    if isinstance(items, (list, tuple)):
        return [image for item in items for image in flat_list(item)]
    if isinstance(items, (np.ndarray, torch.Tensor)) and items.ndim == 4:
        return list(items)
    return [items]


def valid_size(pixel_mask: torch.Tensor) -> tuple[int, int]:
    """(H, W) of the image inside a `(H', W')` mask that pads it at the bottom and right."""
    return int(pixel_mask.any(dim=1).sum()), int(pixel_mask.any(dim=0).sum())


def prepare_segmentation_maps(segmentation_maps: Any, images: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every family processor's segmentation maps, checked against their images: one `(H, W)` map of class ids per
    image (PIL, NumPy or PyTorch; a list, or an `(N, H, W)` stack), of its image's size. PIL maps are turned upright
    by their EXIF orientation, like their images.

    Args:
        segmentation_maps: what the processor was given.
        images: the decoded `(C, H, W)` images, before resizing.

    Returns:
        One `(1, H, W)` tensor per image, on its image's device, of the map's own integer dtype (boolean maps as
        uint8 0 / 1, floats holding whole numbers as int64).

    Raises `ValueError` naming the map for a count that differs from the images', a map that is not 2-D, of another
    size than its image, or holding values that are no class ids (fractions, NaN, complex numbers, objects).
    """
    if isinstance(segmentation_maps, (np.ndarray, torch.Tensor)) and segmentation_maps.ndim == 3:
        # An (N, H, W) stack for N images; anything else 3-D is a malformed single map.
        maps = list(segmentation_maps) if len(segmentation_maps) == len(images) else [segmentation_maps]
    else:
        maps = flat_list(segmentation_maps)
    if len(maps) != len(images):
        raise ValueError(f"got {len(images)} images but {len(maps)} segmentation maps")
    prepared = []
    for index, (image, segmentation_map) in enumerate(zip(images, maps)):
        if isinstance(segmentation_map, PIL.Image.Image):  # class ids, turned upright like their image
            segmentation_map = upright(segmentation_map)
        elif not isinstance(segmentation_map, (np.ndarray, torch.Tensor)):
            raise ValueError(
                f"segmentation map {index} must be a PIL image, a NumPy array or a torch tensor of class ids, got "
                f"{type(segmentation_map).__name__}"
            )
        if isinstance(segmentation_map, torch.Tensor):
            tensor = segmentation_map.detach().cpu()
            array = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()  # NumPy has no bfloat16
        else:
            array = np.asarray(segmentation_map)
        if array.ndim != 2:
            raise ValueError(f"segmentation map {index} must be 2-D (height, width) class ids, got shape {array.shape}")
        if array.dtype.kind == "b":  # a two-class map: False / True are the class ids 0 / 1
            array = array.astype(np.uint8)
        elif array.dtype.kind == "f":
            if not (np.isfinite(array).all() and (array == np.round(array)).all()):
                raise ValueError(
                    f"segmentation map {index} must hold integer class ids, got {array.dtype} values that are not "
                    "whole numbers (or NaN / infinite); a label map is never interpolated"
                )
            array = array.astype(np.int64)
        elif array.dtype.kind not in "iu":
            raise ValueError(f"segmentation map {index} must hold integer class ids, got dtype {array.dtype}")
        if tuple(image.shape[-2:]) != array.shape:
            raise ValueError(
                f"segmentation map {index} has size {array.shape} (H, W) but its image has size "
                f"{tuple(image.shape[-2:])}"
            )
        prepared.append(torch.from_numpy(np.array(array)).unsqueeze(0).to(image.device))
    return prepared


# ---------------------------------------------------------------------------------------------------------------------
# Post-processing arguments, the same for every family's processor
# ---------------------------------------------------------------------------------------------------------------------


def _whole_number(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return float(value).is_integer()


def check_target_sizes(target_sizes: Any, batch: int) -> list[tuple[int, int]] | None:
    """`target_sizes` of a `post_process_*` call as one `(height, width)` pair of positive ints per image (None
    stays None). Takes a list or tuple of pairs, or an `(N, 2)` tensor or array (what transformers' examples build).

    Raises `ValueError` naming `target_sizes` for one bare `(height, width)` pair (it takes one per image), a count
    that is not the batch's, an entry that is not a pair of whole numbers, or a side that is zero or negative.
    """
    if target_sizes is None:
        return None
    if isinstance(target_sizes, (torch.Tensor, np.ndarray)):
        sizes = target_sizes.tolist()
    elif isinstance(target_sizes, (list, tuple)):
        sizes = list(target_sizes)
    else:
        raise ValueError(
            f"target_sizes must be one (height, width) per image (a list, or an (N, 2) tensor), got "
            f"{type(target_sizes).__name__}"
        )
    if not isinstance(sizes, list):  # a 0-d tensor or array
        sizes = [sizes]
    if sizes and all(_whole_number(value) for value in sizes):
        example = "[(height, width)]" if batch == 1 else f"[(height, width)] * {batch}, or a list of {batch} pairs"
        raise ValueError(
            f"target_sizes takes one (height, width) per image, got {tuple(sizes)} for a batch of {batch} image(s); "
            f"pass {example}"
        )
    if len(sizes) != batch:
        raise ValueError(
            f"got {len(sizes)} target sizes for a batch of {batch} images; target_sizes takes one (height, width) per "
            "image"
        )
    checked = []
    for index, size in enumerate(sizes):
        pair = (
            tuple(size.tolist() if isinstance(size, (torch.Tensor, np.ndarray)) else size)
            if isinstance(size, (list, tuple, torch.Tensor, np.ndarray))
            else (size,)
        )
        if len(pair) != 2 or not all(_whole_number(side) for side in pair):
            raise ValueError(f"target_sizes[{index}] must be a (height, width) pair of whole numbers, got {size!r}")
        height, width = (int(float(side)) for side in pair)
        if height < 1 or width < 1:
            raise ValueError(
                f"target_sizes[{index}] is ({height}, {width}): a target size must be at least 1x1 (height, width)"
            )
        checked.append((height, width))
    return checked


def output_field(outputs: Any, name: str, method: str) -> Any:
    """`outputs.<name>` of a model output (a `ModelOutput`, or any object or mapping with it) for `method`; None when
    it has no such field.

    A tuple, what a model returns with `return_dict=False`, holds its fields by position and drops those that are
    None, so which tensor is which cannot be read back: it raises `ValueError` saying what `method` needs instead.
    """
    if isinstance(outputs, (tuple, list)):
        raise ValueError(
            f"{method} takes the model's output object (with `.{name}`), got a {type(outputs).__name__}, which the "
            "model returns with return_dict=False; call the model with return_dict=True (the default)"
        )
    if isinstance(outputs, Mapping):
        return outputs.get(name)
    return getattr(outputs, name, None)


def required_output_field(outputs: Any, name: str, method: str) -> torch.Tensor:
    """`output_field(outputs, name, method)`, raising `ValueError` when the field is missing."""
    value = output_field(outputs, name, method)
    if value is None:
        raise ValueError(
            f"{method} needs the model output's `{name}`, which {type(outputs).__name__} does not have (None); pass "
            "the output of this family's model"
        )
    return value


class DecodedImagesMixin:
    """Image decoding of every FaPN processor (mixed into transformers' torchvision-backend processors): local files,
    PIL images, arrays and tensors go through `decode_image` (EXIF orientation, 16-bit depth, transparency) when
    `do_convert_rgb` is on; URLs are left to transformers' reader. With `do_convert_rgb=False` arrays and tensors keep
    their channels and dtype."""

    def _prepare_images_structure(self, images: Any, expected_ndims: int = 3) -> list:
        # Local files are read by `decode_image` (in `process_image`), which keeps 16-bit depth and transparency;
        # transformers' own reader is left the URLs.
        images = flat_list(images)
        if not images:
            raise ValueError("no images to process (an empty batch)")
        prepared = []
        for index, image in enumerate(images):
            if isinstance(image, str) and not is_local_file(image):  # an http(s) URL
                image = self.fetch_images(image)
            elif not (is_local_file(image) or isinstance(image, (PIL.Image.Image, np.ndarray, torch.Tensor))):
                # transformers' reader would say "only a single or a list of entries is supported"
                where = f" (image {index} of {len(images)})" if len(images) > 1 else ""
                raise ValueError(
                    f"expected an image file path, a PIL image, a NumPy array or a torch tensor, got "
                    f"{type(image).__name__}{where}"
                )
            prepared.append(image)
        return prepared

    def resize(self, image: torch.Tensor, size: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The processor's own resize, except that a uint8 image whose output PyTorch cannot make in uint8 is resized
        in float32 and rounded back to uint8: torch 2.x's uint8 resize fails with an INTERNAL ASSERT on a 1x1 output
        (a test-time scale of 0.01, `size={"height": 1, "width": 1}`). Every other resize is PyTorch's uint8 one,
        bit for bit."""
        try:
            return super().resize(image, size, *args, **kwargs)
        except RuntimeError:
            if image.dtype != torch.uint8:
                raise
        resized = super().resize(image.float(), size, *args, **kwargs)
        return resized.round().clamp(0, 255).to(torch.uint8)

    def process_image(
        self,
        image: Any,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """One image as a `(C, H, W)` tensor of its dtype: RGB with `do_convert_rgb`, its own channels otherwise."""
        if is_local_file(image):
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


__all__ = [
    "IMAGE_CHANNELS",
    "TRANSPARENT_BACKGROUND",
    "DecodedImagesMixin",
    "as_rgb_tensor",
    "check_target_sizes",
    "decode_image",
    "decode_image_bytes",
    "flat_list",
    "is_local_file",
    "open_image",
    "output_field",
    "png_pixels",
    "prepare_segmentation_maps",
    "required_output_field",
    "size_of",
    "to_channels_first",
    "upright",
    "valid_size",
]
