"""Data augmentation for training FaPN on semantic segmentation, as in the paper's recipes (mmseg style), built on
`torchvision.transforms.v2`.

Images are `tv_tensors.Image` uint8 `(3, H, W)` RGB tensors and labels `tv_tensors.Mask` integer `(H, W)` maps of
class ids (any integer dtype; it is kept). Images are resized bilinearly (antialiased when shrinking), labels with
pixel-centre nearest neighbour, so no new label value appears and a label pixel and the image pixel at the same
index come from the same place in the source. Padding is 0 in the image and `ignore_index` in the label and always
goes at the bottom/right.

v2 provides the flip, the crop kernel and the padding kernel; what it lacks is written here as small `v2.Transform`
subclasses: `RandomScale` (a factor of the original size, with an exact nearest-neighbour label resize),
`CategoryCappedRandomCrop` (mmseg's category area constraint), `PadToSize` (bottom/right padding up to a size) and
`PhotometricDistortion` (mmseg's brightness / contrast / HSV saturation and hue).

Like every v2 transform these draw from torch's global random generator. `TrainAugmentation` seeds it from its
`seed` argument inside `torch.random.fork_rng`, so its output is a function of (image, label, seed) alone and the
caller's generator state is left as it was: seeding per sample with `(seed, epoch, index)` gives identical results
in any process or data loader worker, which makes resumed and distributed runs exact.

Evaluation has no transform here: the model's image processor resizes inference images, and labels are scored at
their original resolution (`fapn_hf.inference.evaluation`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = [
    "CategoryCappedRandomCrop",
    "PadToSize",
    "PhotometricDistortion",
    "RandomScale",
    "TrainAugmentation",
]


# ----------------------------------------------------------------------------------------------------------- checks


def _check_size(size: tuple[int, int], name: str = "size") -> tuple[int, int]:
    try:
        height, width = size
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (height, width) pair, got {size!r}") from None
    if not all(isinstance(side, (int, np.integer)) and not isinstance(side, bool) for side in (height, width)):
        raise ValueError(f"{name} must be a pair of integers (height, width), got {size!r}")
    if height <= 0 or width <= 0:
        raise ValueError(f"{name} must be positive (height, width), got {size!r}")
    return int(height), int(width)


def _check_positive_int(value: int, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_range(value_range: tuple[float, float], name: str, positive: bool) -> tuple[float, float]:
    try:
        low, high = (float(bound) for bound in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair of numbers, got {value_range!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low > high or (positive and low <= 0) or low < 0:
        requirement = "0 < low <= high" if positive else "0 <= low <= high"
        raise ValueError(f"{name} must be finite with {requirement}, got {value_range!r}")
    return low, high


def _check_probability(value: float, name: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def _check_image(image: Any) -> None:
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"image must be a (3, H, W) uint8 tensor (tv_tensors.Image), got {type(image).__name__}")
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(
            f"image must be a uint8 (3, H, W) RGB tensor, got dtype {image.dtype} and shape {tuple(image.shape)}"
        )
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"image must not be empty, got shape {tuple(image.shape)}")


def _check_pair(image: Any, label: Any, ignore_index: int) -> None:
    """Image (3, H, W) uint8, label (H, W) of an integer dtype that can hold `ignore_index`."""
    _check_image(image)
    if not isinstance(label, torch.Tensor):
        raise ValueError(f"label must be an (H, W) integer tensor (tv_tensors.Mask), got {type(label).__name__}")
    if label.dtype.is_floating_point or label.dtype.is_complex or label.dtype == torch.bool:
        raise ValueError(f"label must hold integer class ids, got dtype {label.dtype} (shape {tuple(label.shape)})")
    if tuple(label.shape) != tuple(image.shape[1:]):
        raise ValueError(
            f"label shape {tuple(label.shape)} does not match the image's (H, W) {tuple(image.shape[1:])} "
            f"(image shape {tuple(image.shape)})"
        )
    info = torch.iinfo(label.dtype)
    if not info.min <= ignore_index <= info.max:
        raise ValueError(f"ignore_index {ignore_index} does not fit the label dtype {label.dtype}")


# --------------------------------------------------------------------------------------------------------- geometry


def _scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def _nearest_indices(source: int, target: int) -> np.ndarray:
    # Source index under the centre of each target pixel, floor((i + 0.5) * source / target) in exact integer
    # arithmetic: the pixel-centre convention of bilinear resizing, so labels stay aligned with images.
    return (np.arange(target, dtype=np.int64) * 2 + 1) * source // (2 * target)


def _resize_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """CPU `(..., H, W)` -> `(..., height, width)` by pixel-centre nearest neighbour, exact for any integer dtype.

    v2's own `resize` of a `Mask` defaults to the legacy NEAREST mode (`floor(i * H / height)`, up to half a pixel
    off the image's bilinear grid) and goes through float32 (ids above 2**24 change); gathering rows and columns
    avoids both. NumPy's `take` does the gather 2-3 times faster than torch's `index_select` here.
    """
    rows = _nearest_indices(label.shape[-2], size[0])
    cols = _nearest_indices(label.shape[-1], size[1])
    values = label.numpy()
    # Whole rows copy fast and columns gather element by element: gathering columns over the smaller number of rows
    # (before the rows when enlarging, after them when shrinking) halves the work at scale 2. Exact either way.
    if size[0] > label.shape[-2]:
        return torch.from_numpy(values.take(cols, axis=-1).take(rows, axis=-2))
    return torch.from_numpy(values.take(rows, axis=-2).take(cols, axis=-1))


class RandomScale(v2.Transform):
    """Resizes image and label by one factor drawn uniformly from `scale_range` (aspect ratio kept, sides rounded,
    at least 1 px): mmseg's `Resize(ratio_range=...)` relative to the input's own size.

    Images are resized bilinearly (antialiased when shrinking), masks by exact pixel-centre nearest neighbour.
    Shapes: image (3, H, W) -> (3, round(s H), round(s W)); mask (H, W) -> (round(s H), round(s W)).
    Params: `{"size": (height, width)}`; `transform(inpt, {"size": ...})` resizes to a given size.
    """

    _transformed_types = (tv_tensors.Image, tv_tensors.Mask)

    def __init__(self, scale_range: tuple[float, float]) -> None:
        super().__init__()
        self.scale_range = _check_range(scale_range, "scale_range", positive=True)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        low, high = self.scale_range
        factor = low + (high - low) * float(torch.rand(()))
        return {"size": _scaled_size(*v2.query_size(flat_inputs), factor)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        size = params["size"]
        if tuple(inpt.shape[-2:]) == tuple(size):
            return inpt
        if isinstance(inpt, tv_tensors.Mask):
            return tv_tensors.wrap(_resize_label(inpt.as_subclass(torch.Tensor), size), like=inpt)
        return F.resize(inpt, list(size), interpolation=v2.InterpolationMode.BILINEAR, antialias=True)


def _class_counts(label: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Pixel counts of the classes present in `label`, ignored pixels left out (the order is unspecified)."""
    flat = label.reshape(-1)
    if flat.dtype == torch.uint8 and 0 <= ignore_index < 256:
        # 8-bit ids (the common case): one histogram, no mask or int64 copy (several times faster).
        counts = torch.bincount(flat, minlength=256)
        counts[ignore_index] = 0
        return counts[counts > 0]
    flat = flat[flat != ignore_index]
    if flat.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    # bincount is several times faster than unique, but needs small non-negative ids. (Python ints for the bounds: a
    # uint8 tensor compared with 1 << 16 would wrap it to 0.)
    low, high = (int(bound) for bound in torch.aminmax(flat))
    if low >= 0 and high < 1 << 16:
        counts = torch.bincount(flat.long())
        return counts[counts > 0]
    return torch.unique(flat, return_counts=True)[1]


class CategoryCappedRandomCrop(v2.Transform):
    """Crops a random window of `size` = (height, width), or of the whole side where the input is smaller (no
    padding: `PadToSize` does that, last, as mmseg's `Pad`).

    With `cat_max_ratio < 1` (mmseg's "category area constraint"), draws up to `max_attempts` windows until the most
    frequent non-ignored class of the mask covers less than `cat_max_ratio` of the window's non-ignored pixels and
    the window holds more than one class; when none qualifies, the last one drawn is kept. With `cat_max_ratio=1.0`,
    or without a mask among the inputs, one window is drawn.

    Shapes: image (3, H, W) -> (3, min(H, height), min(W, width)); mask (H, W) -> (min(H, height), min(W, width)).
    Params: `{"top", "left", "height", "width"}` of the window and `"attempts"`, the number of windows drawn.
    """

    _transformed_types = (tv_tensors.Image, tv_tensors.Mask)

    def __init__(
        self, size: tuple[int, int], cat_max_ratio: float = 1.0, ignore_index: int = 255, max_attempts: int = 10
    ) -> None:
        super().__init__()
        self.size = _check_size(size)
        if not 0.0 < cat_max_ratio <= 1.0:
            raise ValueError(f"cat_max_ratio must be in (0, 1], got {cat_max_ratio!r}")
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = int(ignore_index)
        self.max_attempts = _check_positive_int(max_attempts, "max_attempts")

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        masks = [inpt for inpt in flat_inputs if isinstance(inpt, tv_tensors.Mask)]

        def window(top: int, left: int, height: int, width: int) -> torch.Tensor:
            return masks[0][..., top : top + height, left : left + width]

        return self.draw_window(v2.query_size(flat_inputs), window if masks else None)

    def draw_window(
        self, in_size: tuple[int, int], mask_window: Callable[[int, int, int, int], torch.Tensor] | None
    ) -> dict[str, Any]:
        """`make_params` for an input of `in_size` (H, W) whose mask's window `(top, left, height, width)` is
        `mask_window(top, left, height, width)` (None: no mask). The same draws from torch's generator either way."""
        in_height, in_width = in_size
        height, width = min(self.size[0], in_height), min(self.size[1], in_width)
        capped = self.cat_max_ratio < 1.0 and mask_window is not None
        attempts = 0
        while True:
            attempts += 1
            top = int(torch.randint(0, in_height - height + 1, ()))
            left = int(torch.randint(0, in_width - width + 1, ()))
            if not capped or attempts == self.max_attempts:
                break
            counts = _class_counts(mask_window(top, left, height, width), self.ignore_index)
            if counts.numel() > 1 and counts.max() < self.cat_max_ratio * counts.sum():
                break
        return {"top": top, "left": left, "height": height, "width": width, "attempts": attempts}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return F.crop(inpt, params["top"], params["left"], params["height"], params["width"])


class PadToSize(v2.Transform):
    """Pads at the bottom and right up to at least `size` = (height, width) with `fill[type]` (e.g.
    `{tv_tensors.Image: 0, tv_tensors.Mask: 255}`); larger sides are left as they are.

    Shapes: (..., H, W) -> (..., max(H, height), max(W, width)).
    """

    _transformed_types = (tv_tensors.Image, tv_tensors.Mask)

    def __init__(self, size: tuple[int, int], fill: dict[type, int]) -> None:
        super().__init__()
        self.size = _check_size(size)
        missing = [kind.__name__ for kind in self._transformed_types if kind not in fill]
        if missing:
            raise ValueError(f"fill must give a value for {missing}, got {fill!r}")
        self.fill = dict(fill)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        return {"padding": [0, 0, max(0, self.size[1] - width), max(0, self.size[0] - height)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not any(params["padding"]):
            return inpt
        return F.pad(inpt, params["padding"], fill=self.fill[type(inpt)])


# ------------------------------------------------------------------------------------------------------ photometric


# Pixels per row block of `PhotometricDistortion`: its float32 working set (about 7 planes of 128 kB) stays in the CPU
# cache (measured fastest between 2**15 and 2**16 on a 512x1024 crop).
_PHOTOMETRIC_BLOCK_PIXELS = 1 << 15


def _wrap(values: np.ndarray, period: float) -> np.ndarray:
    """`values` modulo `period`, in place; floor arithmetic is several times faster than np.mod or masked ops."""
    values -= period * np.floor(values * (1 / period))
    return values


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """float32 (3, H, W) planar RGB in [0, 255] -> float32 (3, H, W) HSV: hue in degrees on OpenCV's [0, 180) scale,
    saturation in [0, 1], value in [0, 255]."""
    # Branch-free arithmetic with preallocated outputs: masked ufuncs and np.where are an order of magnitude slower.
    red, green, blue = rgb
    hsv = np.empty_like(rgb)
    hue, saturation, value = hsv
    np.maximum(red, green, out=value)
    np.maximum(value, blue, out=value)
    chroma = np.minimum(red, green)
    np.minimum(chroma, blue, out=chroma)
    np.subtract(value, chroma, out=chroma)
    # Hue in sextants (units of 60 degrees) by the channel holding the maximum; red wins ties, then green.
    is_red = (value == red).astype(np.float32)
    is_green = (value == green).astype(np.float32)
    is_green -= is_red * is_green
    is_blue = 1 - is_red - is_green
    np.subtract(green, blue, out=hue)
    hue *= is_red
    hue += is_green * (blue - red + 2 * chroma)
    hue += is_blue * (red - green + 4 * chroma)
    # Grey pixels have chroma 0 and a zero numerator, so a tiny divisor gives them hue 0 without a mask.
    hue /= np.maximum(chroma, 1e-6)
    _wrap(hue, 6)
    hue *= 30
    np.divide(chroma, np.maximum(value, 1e-6), out=saturation)
    return hsv


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of `_rgb_to_hsv`, (3, H, W) planar: hue on the [0, 180) scale (taken modulo 180), saturation in
    [0, 1], value in [0, 255]."""
    hue, saturation, value = hsv
    sextant = hue * (1 / 30)
    chroma = value * saturation
    rgb = np.empty_like(hsv)
    k = np.empty_like(hue)
    weight = np.empty_like(hue)
    for channel, offset in enumerate((5, 3, 1)):  # red, green, blue
        np.add(sextant, offset, out=k)
        _wrap(k, 6)
        np.subtract(4, k, out=weight)
        np.minimum(weight, k, out=weight)
        np.clip(weight, 0, 1, out=weight)
        weight *= chroma
        np.subtract(value, weight, out=rgb[channel])
    return rgb


class PhotometricDistortion(v2.Transform):
    """mmseg's photometric distortion of images (masks pass through): each of brightness (add a value uniform in
    +-`brightness_delta`), contrast (multiply by a factor uniform in `contrast_range`, no pivot around the mean),
    saturation (multiply HSV saturation by a factor uniform in `saturation_range`) and hue (rotate by a shift uniform
    in +-`hue_delta`) is applied with probability 0.5, in that order except that contrast goes before or after the
    HSV ops at random. Hue is in degrees on OpenCV's [0, 180) scale like mmseg, so the default `hue_delta=18` is
    +-36 degrees of the colour circle. (`v2.ColorJitter` differs: contrast pivots on the mean grey, saturation
    blends with grey, hue is on a [-0.5, 0.5] turn scale.)

    Arithmetic is in float32 with values saturated to [0, 255] after each step; the result is rounded to uint8.
    Shapes: image (3, H, W) uint8 -> (3, H, W) uint8; only values change, never geometry.
    Params: `brightness`, `contrast`, `saturation`, `hue` (None when not applied) and `contrast_first`.
    """

    _transformed_types = (tv_tensors.Image,)

    def __init__(
        self,
        brightness_delta: float = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: float = 18,
    ) -> None:
        super().__init__()
        if not brightness_delta >= 0:
            raise ValueError(f"brightness_delta must be >= 0, got {brightness_delta!r}")
        if not hue_delta >= 0:
            raise ValueError(f"hue_delta must be >= 0, got {hue_delta!r}")
        self.brightness_delta = float(brightness_delta)
        self.contrast_range = _check_range(contrast_range, "contrast_range", positive=False)
        self.saturation_range = _check_range(saturation_range, "saturation_range", positive=False)
        self.hue_delta = float(hue_delta)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        # Every decision is drawn up front, so that `transform` can skip whatever is not applied.
        def maybe_uniform(low: float, high: float) -> float | None:
            return low + (high - low) * float(torch.rand(())) if float(torch.rand(())) < 0.5 else None

        return {
            "brightness": maybe_uniform(-self.brightness_delta, self.brightness_delta),
            "contrast_first": float(torch.rand(())) < 0.5,
            "contrast": maybe_uniform(*self.contrast_range),
            "saturation": maybe_uniform(*self.saturation_range),
            "hue": maybe_uniform(-self.hue_delta, self.hue_delta),
        }

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        _check_image(inpt)
        brightness, contrast, saturation, hue = (params[key] for key in ("brightness", "contrast", "saturation", "hue"))
        if brightness is None and contrast is None and saturation is None and hue is None:
            return inpt
        source = inpt.as_subclass(torch.Tensor).numpy()
        output = np.empty(source.shape, np.uint8)
        # Row blocks of about `_PHOTOMETRIC_BLOCK_PIXELS`: the ~40 elementwise passes then run on float32 planes that
        # stay in the CPU cache (about 3x faster than whole-image passes). Every pixel gets the same float32
        # operations either way: the result is bit for bit that of one block.
        rows = max(1, _PHOTOMETRIC_BLOCK_PIXELS // max(1, source.shape[2]))
        for top in range(0, source.shape[1], rows):
            block = source[:, top : top + rows]
            output[:, top : top + rows] = self._distort(block, brightness, contrast, saturation, hue, params)
        return tv_tensors.wrap(torch.from_numpy(output), like=inpt)

    @staticmethod
    def _distort(
        block: np.ndarray,
        brightness: float | None,
        contrast: float | None,
        saturation: float | None,
        hue: float | None,
        params: dict[str, Any],
    ) -> np.ndarray:
        """(3, h, W) uint8 -> (3, h, W) float32 holding whole numbers in [0, 255]: the distortion of a block."""
        # Planar (3, h, W) float32 (a resized image may be channels-last in memory): contiguous channels make the HSV
        # arithmetic several times faster.
        result = block.astype(np.float32, order="C")
        if brightness is not None:
            result += brightness
            np.clip(result, 0, 255, out=result)
        if contrast is not None and params["contrast_first"]:
            result *= contrast
            np.clip(result, 0, 255, out=result)
        if saturation is not None or hue is not None:
            hsv = _rgb_to_hsv(result)
            if saturation is not None:
                hsv[1] *= saturation
                np.clip(hsv[1], 0, 1, out=hsv[1])
            if hue is not None:
                hsv[0] += hue
            result = _hsv_to_rgb(hsv)
            np.clip(result, 0, 255, out=result)
        if contrast is not None and not params["contrast_first"]:
            result *= contrast
            np.clip(result, 0, 255, out=result)
        return np.rint(result, out=result)


# -------------------------------------------------------------------------------------------------------- pipelines


def _torch_seed(seed: int | Sequence[int]) -> int:
    """A seed for `torch.manual_seed` from an int or a sequence of non-negative ints such as (seed, epoch, index),
    mixed by NumPy's `SeedSequence` so that nearby tuples give unrelated streams."""
    entropy = list(seed) if isinstance(seed, (tuple, list)) else [seed]
    if not entropy or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in entropy):
        raise ValueError(f"seed must be a non-negative integer or a non-empty sequence of them, got {seed!r}")
    return int(np.random.SeedSequence([int(v) for v in entropy]).generate_state(1, np.uint64)[0])


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


@dataclass
class TrainAugmentation:
    """The training augmentation of the paper's recipes, a `v2.Compose` of `RandomScale`, `CategoryCappedRandomCrop`,
    `v2.RandomHorizontalFlip`, `PhotometricDistortion` (when `photometric`) and `PadToSize` (0 in the image,
    `ignore_index` in the label).

    `aug(image, label, seed)` maps an image (3, H, W) uint8 and a label (H, W) of integer class ids (tensors or
    `tv_tensors`) to a new `tv_tensors.Image` (3, *crop_size) uint8 and `tv_tensors.Mask` `crop_size` (the label's
    dtype), which share no memory with the inputs. Where the scaled image is smaller than `crop_size`, the output is
    padded at the bottom/right; padding comes last, so flipping and the photometric distortion never touch it (as in
    mmseg, whose `Pad` comes last).

    `seed` (an int, or a sequence of ints such as `(seed, epoch, index)`) seeds torch's generator inside
    `torch.random.fork_rng`: the output depends on (image, label, seed) only, and the caller's global torch random
    state is unchanged.
    """

    crop_size: tuple[int, int] = (512, 1024)
    scale_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    hflip_probability: float = 0.5
    photometric: bool = True
    ignore_index: int = 255
    pipeline: v2.Compose = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.crop_size = _check_size(self.crop_size, "crop_size")
        self.scale_range = _check_range(self.scale_range, "scale_range", positive=True)
        _check_probability(self.hflip_probability, "hflip_probability")
        steps = [
            RandomScale(self.scale_range),
            CategoryCappedRandomCrop(self.crop_size, self.cat_max_ratio, self.ignore_index, max_attempts=10),
            v2.RandomHorizontalFlip(self.hflip_probability),
            *([PhotometricDistortion()] if self.photometric else []),
            PadToSize(self.crop_size, fill={tv_tensors.Image: 0, tv_tensors.Mask: self.ignore_index}),
        ]
        self.pipeline = v2.Compose(steps)
        self._after_crop = v2.Compose(steps[2:])

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor, seed: int | Sequence[int]
    ) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        _check_pair(image, label, self.ignore_index)
        torch_seed = _torch_seed(seed)
        # Class ids nearly always fit in uint8: the label is then augmented as uint8, which resizes several times
        # faster than int64 (memory-bound), and only the crop is cast back to the label's dtype.
        low, high = (int(bound) for bound in torch.aminmax(label))
        compact = label.dtype != torch.uint8 and 0 <= min(low, self.ignore_index) and max(high, self.ignore_index) < 256
        work_label = label.to(torch.uint8) if compact else label
        with torch.random.fork_rng(devices=[]):
            # The CPU generator alone (what the transforms draw from): `torch.manual_seed` would also seed, and leave
            # changed, the accelerators' generators, and costs a stack trace per call to queue that lazily.
            torch.default_generator.manual_seed(torch_seed)
            out_image, out_label = self._scale_and_crop(tv_tensors.Image(image), tv_tensors.Mask(work_label))
            out_image, out_label = self._after_crop(out_image, out_label)
        # Fresh tensors whatever was skipped, so that callers (and collate functions) may write into the outputs.
        out_image = out_image.clone() if _shares_memory(out_image, image) else out_image.contiguous()
        out_label = out_label.to(
            label.dtype, memory_format=torch.contiguous_format, copy=_shares_memory(out_label, label)
        )
        return tv_tensors.Image(out_image), tv_tensors.Mask(out_label)

    def _scale_and_crop(
        self, image: tv_tensors.Image, label: tv_tensors.Mask
    ) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """`RandomScale` then `CategoryCappedRandomCrop` (the pipeline's first two steps, the same draws), except that
        the label is never resized whole: each window the crop looks at is gathered from the source label by the
        nearest-neighbour indices of the resize (`_resize_label`'s), which gives the resized label's window exactly
        and spares resizing up to 4x the pixels the crop keeps."""
        scale, crop = self.pipeline.transforms[:2]
        size = scale.make_params([image, label])["size"]
        scaled = scale.transform(image, {"size": size})
        rows = _nearest_indices(label.shape[-2], size[0])
        cols = _nearest_indices(label.shape[-1], size[1])
        values = label.as_subclass(torch.Tensor).numpy()
        windows: dict[tuple[int, int, int, int], torch.Tensor] = {}

        def window(top: int, left: int, height: int, width: int) -> torch.Tensor:
            if (top, left, height, width) not in windows:
                windows.clear()  # only the last window is kept: the one the crop takes
                gathered = values.take(rows[top : top + height], axis=-2).take(cols[left : left + width], axis=-1)
                windows[top, left, height, width] = torch.from_numpy(gathered)
            return windows[top, left, height, width]

        params = crop.draw_window(tuple(size), window)
        box = params["top"], params["left"], params["height"], params["width"]
        return tv_tensors.wrap(crop.transform(scaled, params), like=image), tv_tensors.wrap(window(*box), like=label)
