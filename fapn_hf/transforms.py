"""Data augmentation for training FaPN on semantic segmentation, as in the paper's recipes (mmseg/detectron2 style).

Every transform takes NumPy arrays: `image` is uint8 `(H, W, 3)` RGB and `label` an integer `(H, W)` map of class ids
(any integer dtype; it is kept). Labels are resized with nearest-neighbour interpolation, images bilinearly; padding is
0 in the image and `ignore_index` in the label and always goes at the bottom/right. Images and labels stay
pixel-aligned: a label pixel and the image pixel at the same index come from the same place in the source.

Randomness comes only from the `numpy.random.Generator` passed in, never from global state, so seeding one generator
per sample, e.g. `np.random.default_rng((seed, epoch, index))`, gives identical results in any process or worker.

Inputs are never modified in place, but the functions' outputs may be views of them (a crop) or the inputs themselves
(a transform with nothing to do); `TrainAugmentation` always returns new arrays.

Evaluation has no transform here: the model's image processor resizes inference images, and labels are scored at
their original resolution (`fapn_hf.evaluation`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import PIL.Image

__all__ = [
    "TrainAugmentation",
    "pad_to",
    "photometric_distortion",
    "random_crop",
    "random_horizontal_flip",
    "random_scale",
    "resize",
]


# ----------------------------------------------------------------------------------------------------------- checks


def parse_size(text: str) -> tuple[int, int]:
    """`"512x1024"` -> `(512, 1024)` (height, width); raises `ValueError` for anything else."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except (ValueError, AttributeError) as error:
        raise ValueError(f"expected a size HxW such as 512x1024, got {text!r}") from error
    return _check_size((height, width))


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a NumPy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be a uint8 (H, W, 3) RGB array, got dtype {image.dtype} and shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must not be empty, got shape {image.shape}")


def _check_pair(image: np.ndarray, label: np.ndarray | None) -> None:
    _check_image(image)
    if label is None:
        return
    if not isinstance(label, np.ndarray):
        raise ValueError(f"label must be a NumPy array or None, got {type(label).__name__}")
    if not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"label must hold integer class ids, got dtype {label.dtype} (shape {label.shape})")
    if label.shape != image.shape[:2]:
        raise ValueError(
            f"label shape {label.shape} does not match the image's (H, W) {image.shape[:2]} (image shape {image.shape})"
        )


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


def _check_ignore_index(label: np.ndarray | None, ignore_index: int) -> None:
    if label is None:
        return
    info = np.iinfo(label.dtype)
    if not info.min <= ignore_index <= info.max:
        raise ValueError(f"ignore_index {ignore_index} does not fit the label dtype {label.dtype}")


# --------------------------------------------------------------------------------------------------------- geometry


def _scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def _nearest_indices(source: int, target: int) -> np.ndarray:
    # Source index under the centre of each target pixel, floor((i + 0.5) * source / target) in exact integer
    # arithmetic: the same pixel-centre convention as PIL's bilinear resize, so labels stay aligned with images.
    return (np.arange(target, dtype=np.int64) * 2 + 1) * source // (2 * target)


def resize(image: np.ndarray, label: np.ndarray | None, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Resizes to `size` = (height, width): the image bilinearly (PIL, antialiased when shrinking), the label with
    nearest neighbour (exact for any integer dtype, no new values).

    Shapes: image (H, W, 3) uint8 -> (height, width, 3) uint8; label (H, W) or None -> (height, width) or None.
    """
    _check_pair(image, label)
    height, width = _check_size(size)
    if image.shape[:2] == (height, width):
        return image, label
    return _resize_window(image, label, (height, width), (0, 0, height, width))


def _resize_window(
    image: np.ndarray, label: np.ndarray | None, size: tuple[int, int], window: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """The `window` = (top, left, height, width) of `image` and `label` resized to `size`, computing only that window.

    The pixel-centre mapping is the one of resizing everything and cropping afterwards (labels identical, images
    within rounding), at the cost of the window alone: a 2x upscale of a 1024x2048 image for a 512x1024 crop is 16
    times less work.
    """
    in_height, in_width = image.shape[:2]
    out_height, out_width = size
    top, left, height, width = window
    if (out_height, out_width) == (in_height, in_width):
        image = image[top : top + height, left : left + width]
        return image, None if label is None else label[top : top + height, left : left + width]
    # Integer products before the division keep the far edges exact, as PIL rejects a box past the image border.
    box = (
        left * in_width / out_width,
        top * in_height / out_height,
        (left + width) * in_width / out_width,
        (top + height) * in_height / out_height,
    )
    resized = PIL.Image.fromarray(np.ascontiguousarray(image)).resize((width, height), PIL.Image.BILINEAR, box=box)
    image = np.array(resized)  # a writable copy: PIL's buffer is read-only, which torch.from_numpy warns about
    if label is not None:
        rows = _nearest_indices(in_height, out_height)[top : top + height]
        cols = _nearest_indices(in_width, out_width)[left : left + width]
        label = label.take(rows, axis=0).take(cols, axis=1)
    return image, label


def random_scale(
    image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator, scale_range: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resizes both sides by one factor drawn uniformly from `scale_range` (aspect ratio kept, at least 1 px).

    Shapes: image (H, W, 3) -> (round(s H), round(s W), 3); label (H, W) or None -> same (H', W') or None.
    """
    _check_pair(image, label)
    low, high = _check_range(scale_range, "scale_range", positive=True)
    factor = rng.uniform(low, high)
    return resize(image, label, _scaled_size(*image.shape[:2], factor))


def pad_to(
    image: np.ndarray, label: np.ndarray | None, size: tuple[int, int], ignore_index: int = 255
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pads at the bottom and right up to at least `size` = (height, width): 0 in the image, `ignore_index` in the
    label. Larger sides are left as they are.

    Shapes: image (H, W, 3) -> (max(H, height), max(W, width), 3); label (H, W) or None -> (max(H, height), ...).
    """
    _check_pair(image, label)
    height, width = _check_size(size)
    _check_ignore_index(label, ignore_index)
    in_height, in_width = image.shape[:2]
    out_height, out_width = max(in_height, height), max(in_width, width)
    if (out_height, out_width) == (in_height, in_width):
        return image, label
    padded = np.zeros((out_height, out_width, 3), dtype=np.uint8)
    padded[:in_height, :in_width] = image
    if label is not None:
        padded_label = np.full((out_height, out_width), ignore_index, dtype=label.dtype)
        padded_label[:in_height, :in_width] = label
        label = padded_label
    return padded, label


def _class_counts(label: np.ndarray, ignore_index: int) -> np.ndarray:
    """Pixel counts of the classes present in `label`, ignored pixels left out (the order is unspecified)."""
    flat = label.ravel()
    if flat.size == 0:
        return np.zeros(0, dtype=np.int64)
    # bincount is several times faster than unique, but needs small non-negative ids.
    if flat.min() >= 0 and flat.max() < 1 << 16:
        counts = np.bincount(flat)
        if 0 <= ignore_index < counts.size:
            counts[ignore_index] = 0
        return counts[counts > 0]
    values, counts = np.unique(flat, return_counts=True)
    return counts[values != ignore_index]


def _window(array: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    return array[top : top + height, left : left + width]


def _crop_window(
    label_window: Callable[[int, int, int, int], np.ndarray] | None,
    image_size: tuple[int, int],
    rng: np.random.Generator,
    size: tuple[int, int],
    cat_max_ratio: float,
    ignore_index: int,
    max_attempts: int,
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random window of at most `size` inside `image_size`, with the category area
    constraint of `random_crop`; `label_window(top, left, height, width)` gives the label inside a window."""
    height, width = min(size[0], image_size[0]), min(size[1], image_size[1])
    attempts = max_attempts if cat_max_ratio < 1.0 and label_window is not None else 1
    for _ in range(attempts):
        top, left = rng.integers(0, (image_size[0] - height + 1, image_size[1] - width + 1))
        if attempts == 1:
            break
        counts = _class_counts(label_window(top, left, height, width), ignore_index)
        if counts.size > 1 and counts.max() < cat_max_ratio * counts.sum():
            break
    return int(top), int(left), height, width


def _check_crop_arguments(cat_max_ratio: float, max_attempts: int) -> None:
    if not 0.0 < cat_max_ratio <= 1.0:
        raise ValueError(f"cat_max_ratio must be in (0, 1], got {cat_max_ratio!r}")
    _check_positive_int(max_attempts, "max_attempts")


def random_crop(
    image: np.ndarray,
    label: np.ndarray | None,
    rng: np.random.Generator,
    size: tuple[int, int],
    cat_max_ratio: float = 1.0,
    ignore_index: int = 255,
    max_attempts: int = 10,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Crops a random `size` = (height, width) window, padding first (bottom/right, see `pad_to`) where the image is
    smaller than `size`.

    With `cat_max_ratio < 1` (the "category area constraint" of mmseg/detectron2), draws up to `max_attempts` windows
    until the most frequent non-ignored class covers less than `cat_max_ratio` of the window's non-ignored pixels
    and the window holds more than one class; when none qualifies, the last one drawn is kept. With
    `cat_max_ratio=1.0` one window is drawn.

    Shapes: image (H, W, 3) -> (height, width, 3); label (H, W) or None -> (height, width) or None.
    """
    _check_pair(image, label)
    size = _check_size(size)
    _check_crop_arguments(cat_max_ratio, max_attempts)
    image, label = pad_to(image, label, size, ignore_index)
    label_window = None if label is None else functools.partial(_window, label)
    top, left, height, width = _crop_window(
        label_window, image.shape[:2], rng, size, cat_max_ratio, ignore_index, max_attempts
    )
    image = _window(image, top, left, height, width)
    if label is not None:
        label = _window(label, top, left, height, width)
    return image, label


def random_horizontal_flip(
    image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator, probability: float = 0.5
) -> tuple[np.ndarray, np.ndarray | None]:
    """Mirrors image and label left-right with `probability`. Shapes are unchanged: (H, W, 3) and (H, W) or None.

    The outputs are contiguous copies when flipped (negative strides would trip `torch.from_numpy`).
    """
    _check_pair(image, label)
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {probability!r}")
    if rng.random() < probability:
        image = np.ascontiguousarray(image[:, ::-1])
        if label is not None:
            label = np.ascontiguousarray(label[:, ::-1])
    return image, label


# ------------------------------------------------------------------------------------------------------ photometric


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


def _adjust_brightness(image: np.ndarray, delta: float) -> np.ndarray:
    """Adds `delta` to a float image in place, saturating at 0 and 255."""
    image += delta
    return np.clip(image, 0, 255, out=image)


def _adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Multiplies a float image by `factor` in place, saturating at 255 (mmseg's contrast: no pivot around the
    mean)."""
    image *= factor
    return np.clip(image, 0, 255, out=image)


def photometric_distortion(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness_delta: float = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: float = 18,
) -> np.ndarray:
    """mmseg's photometric distortion: each of brightness (add a value uniform in +-`brightness_delta`), contrast
    (multiply by a factor uniform in `contrast_range`), saturation (multiply HSV saturation by a factor uniform in
    `saturation_range`) and hue (rotate by a shift uniform in +-`hue_delta`) is applied with probability 0.5, in that
    order except that contrast goes before or after the HSV ops at random. Hue is in degrees on OpenCV's [0, 180)
    scale like mmseg, so the default `hue_delta=18` is +-36 degrees of the colour circle.

    Arithmetic is in float32 with values saturated to [0, 255] after each step; the result is rounded to uint8.
    Shapes: image (H, W, 3) uint8 -> (H, W, 3) uint8; only values change, never geometry.
    """
    _check_image(image)
    if brightness_delta < 0:
        raise ValueError(f"brightness_delta must be >= 0, got {brightness_delta!r}")
    contrast_low, contrast_high = _check_range(contrast_range, "contrast_range", positive=False)
    saturation_low, saturation_high = _check_range(saturation_range, "saturation_range", positive=False)
    if hue_delta < 0:
        raise ValueError(f"hue_delta must be >= 0, got {hue_delta!r}")

    # Draw every decision up front, so the work below can skip whatever is not applied.
    brightness = rng.uniform(-brightness_delta, brightness_delta) if rng.random() < 0.5 else None
    contrast_first = rng.random() < 0.5
    contrast = rng.uniform(contrast_low, contrast_high) if rng.random() < 0.5 else None
    saturation = rng.uniform(saturation_low, saturation_high) if rng.random() < 0.5 else None
    hue = rng.uniform(-hue_delta, hue_delta) if rng.random() < 0.5 else None
    if brightness is None and contrast is None and saturation is None and hue is None:
        return image

    # Planar (3, H, W) float32: contiguous channels make the HSV arithmetic several times faster.
    result = np.moveaxis(image, -1, 0).astype(np.float32, order="C")
    if brightness is not None:
        result = _adjust_brightness(result, brightness)
    if contrast is not None and contrast_first:
        result = _adjust_contrast(result, contrast)
    if saturation is not None or hue is not None:
        hsv = _rgb_to_hsv(result)
        if saturation is not None:
            hsv[1] *= saturation
            np.clip(hsv[1], 0, 1, out=hsv[1])
        if hue is not None:
            hsv[0] += hue
        result = _hsv_to_rgb(hsv)
        np.clip(result, 0, 255, out=result)
    if contrast is not None and not contrast_first:
        result = _adjust_contrast(result, contrast)
    return np.ascontiguousarray(np.moveaxis(np.rint(result, out=result).astype(np.uint8), 0, -1))


# -------------------------------------------------------------------------------------------------------- pipelines


@dataclass
class TrainAugmentation:
    """The training augmentation of the paper's recipes: random scale, random crop with the category area
    constraint, horizontal flip and photometric distortion.

    `aug(image, label, rng)` maps image (H, W, 3) uint8 and label (H, W) to new contiguous arrays: image
    `crop_size + (3,)` uint8 and label `crop_size` (dtype kept). Where the scaled image is smaller than `crop_size`,
    the output is padded at the bottom/right with 0 and `ignore_index`; padding is added last, so flipping and the
    photometric distortion never touch it (as in mmseg, whose `Pad` comes last).
    """

    crop_size: tuple[int, int] = (512, 1024)
    scale_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    hflip_probability: float = 0.5
    photometric: bool = True
    ignore_index: int = 255

    def __post_init__(self) -> None:
        self.crop_size = _check_size(self.crop_size, "crop_size")
        self.scale_range = _check_range(self.scale_range, "scale_range", positive=True)
        _check_crop_arguments(self.cat_max_ratio, 1)
        if not 0.0 <= self.hflip_probability <= 1.0:
            raise ValueError(f"hflip_probability must be in [0, 1], got {self.hflip_probability!r}")

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        source_image, source_label = image, label
        _check_pair(image, label)
        if label is None:
            raise ValueError("TrainAugmentation needs a label map")
        _check_ignore_index(label, self.ignore_index)
        # random_scale then random_crop, fused: the crop window is chosen on the scaled label (read through index
        # arrays, never materialised) and only the window is resized; same random draws, same window, same label.
        # Padding comes last, so it stays at the bottom/right and exactly 0/ignore_index through flip and
        # photometric distortion; it leaves a crop no room to move, so the window is the one random_crop picks.
        in_height, in_width = image.shape[:2]
        scaled_size = _scaled_size(in_height, in_width, rng.uniform(*self.scale_range))
        rows = _nearest_indices(in_height, scaled_size[0])
        cols = _nearest_indices(in_width, scaled_size[1])

        def label_window(top: int, left: int, height: int, width: int) -> np.ndarray:
            return label.take(rows[top : top + height], axis=0).take(cols[left : left + width], axis=1)

        window = _crop_window(
            label_window, scaled_size, rng, self.crop_size, self.cat_max_ratio, self.ignore_index, max_attempts=10
        )
        image, label = _resize_window(image, label, scaled_size, window)
        image, label = random_horizontal_flip(image, label, rng, self.hflip_probability)
        if self.photometric:
            image = photometric_distortion(image, rng)
        image, label = pad_to(image, label, self.crop_size, self.ignore_index)
        # Fresh arrays whatever was skipped, so that callers (and collate functions) may write into the outputs.
        image = np.ascontiguousarray(image)
        label = np.ascontiguousarray(label)
        if np.may_share_memory(image, source_image):
            image = image.copy()
        if np.may_share_memory(label, source_label):
            label = label.copy()
        return image, label
