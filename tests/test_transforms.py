"""Augmentations: label-map invariants, image/label alignment, the category area constraint and determinism."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from fapn_hf import transforms as T
from fapn_hf.transforms import (
    TrainAugmentation,
    pad_to,
    photometric_distortion,
    random_crop,
    random_horizontal_flip,
    random_scale,
    resize,
)

IGNORE = 255
# Distinct, far-apart colours, one per class; black marks ignored pixels (and is what padding adds).
PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180]], dtype=np.uint8
)


def scene(height: int = 120, width: int = 160, dtype: type = np.uint8) -> tuple[np.ndarray, np.ndarray]:
    """A label map of rectangles, discs and an ignored patch at 120x160 proportions, and the image painting each class
    in its palette colour (ignored pixels black)."""
    rows = np.arange(height)[:, None] * (120 / height)
    cols = np.arange(width)[None, :] * (160 / width)
    label = np.zeros((height, width), dtype=dtype)
    label[(rows >= 10) & (rows < 50) & (cols >= 20) & (cols < 90)] = 1
    label[(rows - 80) ** 2 + (cols - 110) ** 2 < 25**2] = 2
    label[(rows >= 60) & (rows < 110) & (cols >= 10) & (cols < 40)] = 3
    label[(rows >= 4) & (rows < 10) & (cols >= 100) & (cols < 150)] = 4
    label[(rows - 30) ** 2 + (cols - 135) ** 2 < 15**2] = 5
    label[(rows >= 100) & (cols >= 60) & (cols < 90)] = IGNORE
    return paint(label), label


def paint(label: np.ndarray) -> np.ndarray:
    image = np.zeros(label.shape + (3,), dtype=np.uint8)
    known = label != IGNORE
    image[known] = PALETTE[label[known]]
    return image


def decode(image: np.ndarray) -> np.ndarray:
    """The class whose colour is nearest each pixel (IGNORE for black)."""
    colours = np.concatenate([PALETTE, np.zeros((1, 3), np.uint8)]).astype(np.int32)
    distances = ((image[..., None, :].astype(np.int32) - colours) ** 2).sum(-1)
    return np.append(np.arange(len(PALETTE)), IGNORE)[distances.argmin(-1)]


def interior(label: np.ndarray, radius: int = 2) -> np.ndarray:
    """Pixels whose (2 radius + 1)^2 neighbourhood in `label` holds one value: away from class edges, including those
    just outside a crop (so the outer `radius` pixels are left out)."""
    windows = sliding_window_view(np.pad(label, radius, mode="edge"), (2 * radius + 1,) * 2)
    mask = (windows == label[..., None, None]).all(axis=(-2, -1))
    mask[:radius] = mask[-radius:] = False
    mask[:, :radius] = mask[:, -radius:] = False
    return mask


def assert_aligned(image: np.ndarray, label: np.ndarray, min_fraction: float = 0.3) -> None:
    """Away from class edges, the colour of every pixel decodes to its label."""
    mask = interior(label)
    assert mask.mean() >= min_fraction, "too few interior pixels for the check to mean anything"
    mismatched = (decode(image) != label) & mask
    assert not mismatched.any(), f"{mismatched.sum()} interior pixels misaligned, e.g. at {np.argwhere(mismatched)[0]}"


def assert_labels_subset(output: np.ndarray, source: np.ndarray, ignore_index: int = IGNORE) -> None:
    new = set(np.unique(output).tolist()) - set(np.unique(source).tolist()) - {ignore_index}
    assert not new, f"new label values appeared: {sorted(new)[:10]}"


def assert_padding_bottom_right(image: np.ndarray, label: np.ndarray, ignore_index: int = IGNORE) -> bool:
    """For a label whose source held no ignored pixels: ignored pixels form the bottom/right band, which is 0 in the
    image. Returns whether there was padding."""
    valid = label != ignore_index
    height, width = valid.any(axis=1).sum(), valid.any(axis=0).sum()
    assert valid[:height, :width].all() and not valid[height:].any() and not valid[:, width:].any()
    assert (image[~valid] == 0).all()
    return not valid.all()


RAMP_HEIGHT, RAMP_WIDTH, RAMP_SLOPE = 48, 64, 4


def ramp() -> tuple[np.ndarray, np.ndarray]:
    """An image whose red/green channels are 4 x each pixel's column/row and an int32 label holding
    row * 64 + column: any geometric transform can be read back from both, from the image to a quarter pixel."""
    rows, cols = np.mgrid[:RAMP_HEIGHT, :RAMP_WIDTH]
    image = np.stack([cols * RAMP_SLOPE, rows * RAMP_SLOPE, np.zeros_like(rows)], axis=-1).astype(np.uint8)
    return image, (rows * RAMP_WIDTH + cols).astype(np.int32)


def assert_ramp_aligned(image: np.ndarray, label: np.ndarray, margin: int = 3) -> None:
    """Nearest neighbour takes the source pixel under a target pixel's centre and bilinear interpolation samples that
    centre: at most half a pixel apart (2 grey levels here), plus half a grey level of rounding. A label taken from
    the wrong neighbour (half-pixel conventions) breaks the bound. Source pixels within `margin` of the border (where
    interpolation filters are cut) and padding are skipped."""
    source_row, source_col = label // RAMP_WIDTH, label % RAMP_WIDTH
    valid = (label >= 0) & (source_row >= margin) & (source_row < RAMP_HEIGHT - margin)
    valid &= (source_col >= margin) & (source_col < RAMP_WIDTH - margin)
    assert valid.mean() > 0.2
    assert np.abs(image[..., 0].astype(int) - RAMP_SLOPE * source_col)[valid].max() <= RAMP_SLOPE // 2
    assert np.abs(image[..., 1].astype(int) - RAMP_SLOPE * source_row)[valid].max() <= RAMP_SLOPE // 2


class CountingGenerator(np.random.Generator):
    """Records the windows drawn by `integers`, to count crop attempts."""

    def __init__(self, seed: int) -> None:
        super().__init__(np.random.PCG64(seed))
        self.draws: list[tuple[int, ...]] = []

    def integers(self, *args, **kwargs):
        result = super().integers(*args, **kwargs)
        self.draws.append(tuple(np.atleast_1d(result).tolist()))
        return result


class ForcedGenerator(np.random.Generator):
    """Every coin flip comes up "apply" (`random()` is 0) and every `uniform` returns its upper bound, or, with
    `apply=False`, nothing is applied."""

    def __init__(self, apply: bool = True) -> None:
        super().__init__(np.random.PCG64(0))
        self.apply = apply

    def random(self, *args, **kwargs):
        return 0.0 if self.apply else 0.999

    def uniform(self, low=0.0, high=1.0, size=None):
        return float(high)


# ------------------------------------------------------------------------------------------------------- resize


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64])
@pytest.mark.parametrize("size", [(60, 80), (240, 320), (90, 250), (37, 211)])
def test_resize_keeps_labels_and_alignment(dtype, size):
    image, label = scene(dtype=dtype)
    out_image, out_label = resize(image, label, size)
    assert out_image.shape == size + (3,) and out_image.dtype == np.uint8
    assert out_label.shape == size and out_label.dtype == dtype
    assert out_image.flags.writeable
    assert_labels_subset(out_label, label)
    assert_aligned(out_image, out_label)


@pytest.mark.parametrize("size", [(24, 32), (35, 50), (64, 90), (96, 128), (100, 203), (31, 150)])
def test_resize_subpixel_alignment(size):
    out_image, out_label = resize(*ramp(), size)
    assert_ramp_aligned(out_image, out_label)


def test_resize_tiny_sizes_and_large_label_values():
    image, label = scene(dtype=np.int64)
    label = np.where(label == IGNORE, IGNORE, label + 2**40)  # ids a narrower PIL mode would corrupt
    for size in [(1, 1), (1, 7), (5, 1), (2, 3)]:
        out_image, out_label = resize(image, label, size)
        assert out_image.shape == size + (3,) and out_label.shape == size
        assert_labels_subset(out_label, label)
    one_image, one_label = resize(np.full((1, 1, 3), 7, np.uint8), np.full((1, 1), 3, np.int32), (4, 6))
    assert (one_image == 7).all() and (one_label == 3).all()


def test_resize_without_label_and_same_size():
    image, label = scene()
    out_image, out_label = resize(image, None, (30, 40))
    assert out_image.shape == (30, 40, 3) and out_label is None
    same_image, same_label = resize(image, label, image.shape[:2])
    assert same_image is image and same_label is label


def test_random_scale_range_alignment_and_minimum_size():
    image, label = scene()
    for seed in range(6):
        out_image, out_label = random_scale(image, label, np.random.default_rng(seed), (0.5, 2.0))
        height, width = out_label.shape
        assert 60 <= height <= 240 and 80 <= width <= 320
        assert abs(height / width - 120 / 160) < 1 / min(height, width)  # one factor for both sides
        assert_labels_subset(out_label, label)
        assert_aligned(out_image, out_label)
    assert [a.shape[:2] for a in random_scale(image, label, np.random.default_rng(0), (0.001, 0.001))] == [(1, 1)] * 2


# --------------------------------------------------------------------------------------------------- pad / crop


@pytest.mark.parametrize("dtype", [np.uint8, np.int64])
def test_pad_to_fills_bottom_right(dtype):
    image, label = scene(30, 40, dtype=dtype)
    out_image, out_label = pad_to(image, label, (50, 35))
    assert out_image.shape == (50, 40, 3) and out_label.shape == (50, 40) and out_label.dtype == dtype
    assert (out_image[:30] == image).all() and (out_label[:30] == label).all()
    assert (out_image[30:] == 0).all() and (out_label[30:] == IGNORE).all()
    same_image, same_label = pad_to(image, label, (10, 10))
    assert same_image is image and same_label is label


def test_pad_to_custom_ignore_index():
    label = np.zeros((2, 2), np.int32)
    _, out_label = pad_to(np.zeros((2, 2, 3), np.uint8), label, (3, 4), ignore_index=-1)
    assert (out_label[2:] == -1).all() and (out_label[:, 2:] == -1).all() and (out_label[:2, :2] == 0).all()


def test_random_crop_is_an_exact_window():
    image, label = ramp()
    for seed in range(5):
        out_image, out_label = random_crop(image, label, np.random.default_rng(seed), (30, 40))
        assert out_image.shape == (30, 40, 3) and out_label.shape == (30, 40)
        top, left = divmod(int(out_label[0, 0]), RAMP_WIDTH)
        assert (out_label == label[top : top + 30, left : left + 40]).all()
        assert (out_image == image[top : top + 30, left : left + 40]).all()


def test_random_crop_pads_small_images():
    _, label = scene(30, 40)
    label[label == IGNORE] = 0  # so that every ignored output pixel is padding
    image = paint(label)
    for seed in range(5):
        out_image, out_label = random_crop(image, label, np.random.default_rng(seed), (50, 30))
        assert out_image.shape == (50, 30, 3) and out_label.shape == (50, 30)
        assert assert_padding_bottom_right(out_image, out_label)
        assert (out_label[30:] == IGNORE).all() and (out_image[30:] == 0).all()
        assert_labels_subset(out_label, label)
        assert_aligned(out_image[:30], out_label[:30], min_fraction=0.2)


def _meets_constraint(label: np.ndarray, ratio: float) -> bool:
    counts = np.bincount(label[label != IGNORE].ravel())
    counts = counts[counts > 0]
    return counts.size > 1 and counts.max() < ratio * counts.sum()


def test_random_crop_category_area_constraint():
    # One 40x40 block of class 1 in a 200x200 field of class 0: 9% of the 40x40 windows meet the constraint.
    label = np.zeros((200, 200), np.uint8)
    label[80:120, 80:120] = 1
    image = paint(label)
    unconstrained = [random_crop(image, label, np.random.default_rng(seed), (40, 40))[1] for seed in range(40)]
    assert sum(_meets_constraint(crop, 0.75) for crop in unconstrained) <= 12
    for seed in range(40):
        rng = CountingGenerator(seed)
        out_image, out_label = random_crop(image, label, rng, (40, 40), cat_max_ratio=0.75, max_attempts=100)
        assert _meets_constraint(out_label, 0.75)
        assert (out_image == paint(out_label)).all()
    rng = CountingGenerator(0)
    random_crop(image, label, rng, (40, 40), cat_max_ratio=1.0, max_attempts=100)
    assert len(rng.draws) == 1


def test_random_crop_keeps_last_attempt_when_impossible():
    image, label = ramp()
    single_class = np.zeros_like(label)  # no window can hold two classes
    rng = CountingGenerator(3)
    out_image, out_label = random_crop(image, single_class, rng, (20, 30), cat_max_ratio=0.75, max_attempts=7)
    assert len(rng.draws) == 7 and len(set(rng.draws)) > 1
    top, left = rng.draws[-1]
    assert (out_image == image[top : top + 20, left : left + 30]).all()


@pytest.mark.parametrize(
    ("class_rows", "attempts"),
    [
        ({0: (0, 2), 1: (2, 4)}, 1),  # 80% ignored, the rest half and half: meets the constraint at once
        ({0: (0, 2), 1: (2, 3)}, 1),  # 40 against 20 pixels: the major class holds 2/3 < 0.75
        ({0: (0, 4), 1: (4, 5)}, 5),  # 80 against 20: 0.8, never met
        ({0: (0, 4)}, 5),  # one class, never met
    ],
)
def test_random_crop_constraint_ignores_ignored_pixels(class_rows, attempts):
    label = np.full((20, 20), IGNORE, np.uint8)
    for value, (start, stop) in class_rows.items():
        label[start:stop] = value
    rng = CountingGenerator(0)
    random_crop(paint(label), label, rng, (20, 20), cat_max_ratio=0.75, max_attempts=5)
    assert len(rng.draws) == attempts


# ---------------------------------------------------------------------------------------------------------- flip


def test_horizontal_flip_is_an_exact_mirror():
    image, label = scene(dtype=np.int32)
    flipped_image, flipped_label = random_horizontal_flip(image, label, np.random.default_rng(0), probability=1.0)
    assert (flipped_image == image[:, ::-1]).all() and (flipped_label == label[:, ::-1]).all()
    assert flipped_image.flags.c_contiguous and flipped_label.flags.c_contiguous
    assert (decode(flipped_image) == flipped_label).all()  # a pure permutation: exact everywhere, edges included
    kept_image, kept_label = random_horizontal_flip(image, label, np.random.default_rng(0), probability=0.0)
    assert (kept_image == image).all() and (kept_label == label).all()
    outcomes = {random_horizontal_flip(image, None, np.random.default_rng(seed))[0][0, 0, 0] for seed in range(20)}
    assert outcomes == {image[0, 0, 0], image[0, -1, 0]}


# --------------------------------------------------------------------------------------------------- photometric


def test_photometric_changes_values_not_geometry():
    image, label = scene()
    for seed in range(8):
        out = photometric_distortion(image, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.uint8 and out.flags.c_contiguous
        # A pixel-wise colour map: equal input colours give equal output colours.
        for value in np.unique(label):
            region = out[label == value]
            assert (region == region[0]).all()
    outputs = [photometric_distortion(image, np.random.default_rng(seed)) for seed in range(8)]
    assert any((out != image).any() for out in outputs)


def test_photometric_brightness_shifts_the_mean():
    image = np.random.default_rng(0).integers(60, 190, (16, 24, 3), dtype=np.uint8)
    only_brightness = dict(brightness_delta=32, contrast_range=(1, 1), saturation_range=(1, 1), hue_delta=0)
    brighter = photometric_distortion(image, ForcedGenerator(), **only_brightness)
    assert brighter.astype(float).mean() - image.astype(float).mean() == pytest.approx(32, abs=0.5)
    unchanged = photometric_distortion(image, ForcedGenerator(apply=False))
    assert (unchanged == image).all()


def test_photometric_contrast_saturation_and_hue():
    neutral = dict(brightness_delta=0, contrast_range=(1, 1), saturation_range=(1, 1), hue_delta=0)
    image = np.array([[[255, 0, 0], [40, 80, 120], [100, 100, 100]]], np.uint8)
    contrast = photometric_distortion(image, ForcedGenerator(), **{**neutral, "contrast_range": (1.5, 1.5)})
    assert (contrast == np.clip(np.rint(image * 1.5), 0, 255)).all()
    grey = photometric_distortion(image, ForcedGenerator(), **{**neutral, "saturation_range": (0, 0)})
    assert (grey == image.max(axis=-1, keepdims=True)).all()  # no saturation: every channel at the value
    # Hue on the 0-180 scale: +60 turns red into green; +180 is a full turn.
    shifted = photometric_distortion(image, ForcedGenerator(), **{**neutral, "hue_delta": 60})
    assert shifted[0, 0].tolist() == [0, 255, 0] and shifted[0, 2].tolist() == [100, 100, 100]
    full_turn = photometric_distortion(image, ForcedGenerator(), **{**neutral, "hue_delta": 180})
    assert (np.abs(full_turn.astype(int) - image) <= 1).all()


def test_hsv_conversion_round_trips():
    colours = np.random.default_rng(0).integers(0, 256, (3, 64, 64)).astype(np.float32)
    colours[:, 0, :6] = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [0, 0, 0], [90, 90, 90], [255, 255, 0]]).T
    hsv = T._rgb_to_hsv(colours)
    assert hsv[0, 0, :6].tolist() == pytest.approx([0, 60, 120, 0, 0, 30])
    assert hsv[1, 0, :6].tolist() == pytest.approx([1, 1, 1, 0, 0, 1])
    assert (hsv[0] >= 0).all() and (hsv[0] < 180).all()
    assert np.abs(T._hsv_to_rgb(hsv) - colours).max() < 1e-2


# ------------------------------------------------------------------------------------------------------ pipelines


def test_train_augmentation_invariants_and_padding():
    _, label = scene()
    label[label == IGNORE] = 0  # so that every ignored output pixel is padding
    image = paint(label)
    augment = TrainAugmentation(crop_size=(96, 128), scale_range=(0.3, 2.0), cat_max_ratio=0.75)
    padded = 0
    for seed in range(12):
        out_image, out_label = augment(image, label, np.random.default_rng(seed))
        assert out_image.shape == (96, 128, 3) and out_image.dtype == np.uint8
        assert out_label.shape == (96, 128) and out_label.dtype == label.dtype
        assert out_image.flags.c_contiguous and out_image.flags.writeable and out_label.flags.writeable
        assert_labels_subset(out_label, label)
        padded += assert_padding_bottom_right(out_image, out_label)
    assert padded > 0, "no seed exercised padding"


def test_train_augmentation_alignment_without_photometric():
    image, label = scene(dtype=np.int64)
    augment = TrainAugmentation(crop_size=(64, 96), scale_range=(0.5, 2.0), photometric=False)
    for seed in range(8):
        out_image, out_label = augment(image, label, np.random.default_rng(seed))
        assert_labels_subset(out_label, label)
        assert_aligned(out_image, out_label, min_fraction=0.1)
    ramp_augment = TrainAugmentation(crop_size=(40, 56), scale_range=(0.5, 2.0), photometric=False, ignore_index=-1)
    ramp_image, ramp_label = ramp()
    for seed in range(8):
        out_image, out_label = ramp_augment(ramp_image, ramp_label, np.random.default_rng(seed))
        assert_ramp_aligned(out_image, out_label)


def test_train_augmentation_matches_the_composed_functions():
    image, label = scene()
    augment = TrainAugmentation(crop_size=(64, 96), scale_range=(1.0, 2.0), photometric=False)
    for seed in range(6):
        fused_image, fused_label = augment(image, label, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        step_image, step_label = random_scale(image, label, rng, augment.scale_range)
        step_image, step_label = random_crop(step_image, step_label, rng, augment.crop_size, cat_max_ratio=0.75)
        step_image, step_label = random_horizontal_flip(step_image, step_label, rng)
        assert (fused_label == step_label).all()
        assert np.abs(fused_image.astype(int) - step_image).max() <= 2  # resizing a window rounds slightly apart


def test_train_augmentation_is_deterministic_and_leaves_global_rng_alone():
    image, label = scene()
    augment = TrainAugmentation(crop_size=(64, 96))
    first = augment(image, label, np.random.default_rng((0, 1, 2)))
    np.random.seed(123)
    second = augment(image, label, np.random.default_rng((0, 1, 2)))
    assert all((a == b).all() for a, b in zip(first, second))
    others = [augment(image, label, np.random.default_rng((0, 1, index))) for index in range(3, 6)]
    assert any((other[0] != first[0]).any() or (other[1] != first[1]).any() for other in others)
    np.random.seed(0)
    state = np.random.get_state()[1].copy()
    augment(image, label, np.random.default_rng(7))
    assert (np.random.get_state()[1] == state).all()


# ---------------------------------------------------------------------------------------------------------- errors


def test_invalid_images_and_labels_name_the_shapes():
    image, label = scene(10, 12)
    with pytest.raises(ValueError, match=r"uint8.*float32.*\(10, 12, 3\)"):
        resize(image.astype(np.float32), label, (5, 5))
    with pytest.raises(ValueError, match=r"\(10, 12\)"):
        resize(image[..., 0], None, (5, 5))
    with pytest.raises(ValueError, match=r"\(10, 11\).*\(10, 12\)"):
        random_crop(image, label[:, :11], np.random.default_rng(0), (5, 5))
    with pytest.raises(ValueError, match=r"integer.*float"):
        pad_to(image, label.astype(np.float64), (20, 20))
    with pytest.raises(ValueError, match="ignore_index"):
        pad_to(image, label, (20, 20), ignore_index=-1)
    with pytest.raises(ValueError, match="label map"):
        TrainAugmentation(crop_size=(4, 4))(image, None, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"uint8.*\(10, 12, 4\)"):
        photometric_distortion(np.zeros((10, 12, 4), np.uint8), np.random.default_rng(0))


@pytest.mark.parametrize(
    "call",
    [
        lambda image, label, rng: random_scale(image, label, rng, (0.0, 1.0)),
        lambda image, label, rng: random_scale(image, label, rng, (2.0, 1.0)),
        lambda image, label, rng: random_crop(image, label, rng, (0, 5)),
        lambda image, label, rng: random_crop(image, label, rng, (5, 5), cat_max_ratio=0.0),
        lambda image, label, rng: random_crop(image, label, rng, (5, 5), max_attempts=0),
        lambda image, label, rng: resize(image, label, (5, -1)),
        lambda image, label, rng: random_horizontal_flip(image, label, rng, probability=1.5),
        lambda image, label, rng: photometric_distortion(image, rng, contrast_range=(1.5, 0.5)),
        lambda image, label, rng: TrainAugmentation(crop_size=(0, 4)),
        lambda image, label, rng: TrainAugmentation(scale_range=(2.0, 1.0)),
        lambda image, label, rng: TrainAugmentation(cat_max_ratio=1.5),
    ],
)
def test_invalid_arguments(call):
    image, label = scene(10, 12)
    with pytest.raises(ValueError):
        call(image, label, np.random.default_rng(0))
