"""Augmentations on torchvision.transforms.v2: label-map invariants, image/label alignment, the category area
constraint, padding, and determinism per seed without touching the caller's random state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from fapn_hf.tasks.semantic import transforms as T
from fapn_hf.tasks.semantic.transforms import (
    CategoryCappedRandomCrop,
    PadToSize,
    PhotometricDistortion,
    RandomScale,
    TrainAugmentation,
)

IGNORE = 255
FILL = {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE}
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


def to_tv(image: np.ndarray, label: np.ndarray) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """NumPy (H, W, 3) image and (H, W) label -> `tv_tensors.Image` (3, H, W) and `tv_tensors.Mask` (H, W) views."""
    return tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)), tv_tensors.Mask(torch.from_numpy(label))


def to_np(image: torch.Tensor, label: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of `to_tv`: (H, W, 3) and (H, W) arrays."""
    return image.permute(1, 2, 0).numpy(), label.numpy()


def resize(image: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """`image` and `label` resized to `size` the way `RandomScale` resizes them."""
    scale = RandomScale((1.0, 1.0))
    return to_np(*(scale.transform(item, {"size": size}) for item in to_tv(image, label)))


def record_windows(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The (top, left) of every crop window drawn from now on (the crop draws top, then left, with `torch.randint`)."""
    values: list[int] = []
    windows: list[tuple[int, int]] = []
    randint = torch.randint

    def recording_randint(*args, **kwargs):
        result = randint(*args, **kwargs)
        values.append(int(result))
        if len(values) % 2 == 0:
            windows.append((values[-2], values[-1]))
        return result

    monkeypatch.setattr(torch, "randint", recording_randint)
    return windows


NO_PHOTOMETRIC = {"brightness": None, "contrast": None, "contrast_first": True, "saturation": None, "hue": None}


def distort(image: np.ndarray, **params) -> np.ndarray:
    """`PhotometricDistortion` of an (H, W, 3) array with the given decisions (the others not applied)."""
    out = PhotometricDistortion().transform(to_tv(image, image[..., 0])[0], {**NO_PHOTOMETRIC, **params})
    return out.permute(1, 2, 0).numpy()


# ------------------------------------------------------------------------------------------------------- resize


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64])
@pytest.mark.parametrize("size", [(60, 80), (240, 320), (90, 250), (37, 211)])
def test_resize_keeps_labels_and_alignment(dtype, size):
    image, label = scene(dtype=dtype)
    out_image, out_label = resize(image, label, size)
    assert out_image.shape == size + (3,) and out_image.dtype == np.uint8
    assert out_label.shape == size and out_label.dtype == dtype
    assert_labels_subset(out_label, label)
    assert_aligned(out_image, out_label)


@pytest.mark.parametrize("size", [(24, 32), (35, 50), (64, 90), (96, 128), (100, 203), (31, 150)])
def test_resize_subpixel_alignment(size):
    out_image, out_label = resize(*ramp(), size)
    assert_ramp_aligned(out_image, out_label)


def test_resize_tiny_sizes_and_large_label_values():
    image, label = scene(dtype=np.int64)
    label = np.where(label == IGNORE, IGNORE, label + 2**40)  # ids that a float32 round trip would corrupt
    for size in [(1, 1), (1, 7), (5, 1), (2, 3)]:
        out_image, out_label = resize(image, label, size)
        assert out_image.shape == size + (3,) and out_label.shape == size
        assert_labels_subset(out_label, label)
    one_image, one_label = resize(np.full((1, 1, 3), 7, np.uint8), np.full((1, 1), 3, np.int32), (4, 6))
    assert (one_image == 7).all() and (one_label == 3).all()


def test_label_resize_is_torchvision_nearest_exact_not_its_mask_default():
    # Pixel-centre nearest neighbour is torchvision's NEAREST_EXACT; v2 resizes a Mask with legacy NEAREST by default,
    # which takes floor(i * H / height): half a pixel off the bilinear image, the reason RandomScale does not use it.
    _, label = ramp()
    mask = tv_tensors.Mask(torch.from_numpy(label))
    for size in [(24, 32), (35, 50), (96, 128), (100, 203)]:
        ours = RandomScale((1.0, 1.0)).transform(mask, {"size": size})
        assert isinstance(ours, tv_tensors.Mask)
        assert torch.equal(ours, F.resize(mask, list(size), interpolation=v2.InterpolationMode.NEAREST_EXACT))
    assert not torch.equal(RandomScale((1.0, 1.0)).transform(mask, {"size": (24, 32)}), v2.Resize((24, 32))(mask))


def test_resize_to_the_same_size_returns_the_input():
    image, label = to_tv(*scene())
    scale = RandomScale((1.0, 1.0))
    assert (
        scale.transform(image, {"size": (120, 160)}) is image and scale.transform(label, {"size": (120, 160)}) is label
    )


def test_random_scale_range_alignment_and_minimum_size():
    image, label = scene()
    sizes = set()
    for seed in range(6):
        torch.manual_seed(seed)
        out_image, out_label = to_np(*RandomScale((0.5, 2.0))(*to_tv(image, label)))
        height, width = out_label.shape
        sizes.add((height, width))
        assert 60 <= height <= 240 and 80 <= width <= 320
        assert abs(height / width - 120 / 160) < 1 / min(height, width)  # one factor for both sides
        assert_labels_subset(out_label, label)
        assert_aligned(out_image, out_label)
    assert len(sizes) > 1
    tiny = RandomScale((0.001, 0.001))(*to_tv(image, label))
    assert [tuple(item.shape[-2:]) for item in tiny] == [(1, 1)] * 2


# --------------------------------------------------------------------------------------------------- pad / crop


@pytest.mark.parametrize("dtype", [np.uint8, np.int64])
def test_pad_to_size_fills_bottom_right_with_zero_and_ignore(dtype):
    image, label = scene(30, 40, dtype=dtype)
    out_image, out_label = to_np(*PadToSize((50, 35), FILL)(*to_tv(image, label)))
    assert out_image.shape == (50, 40, 3) and out_label.shape == (50, 40) and out_label.dtype == dtype
    assert (out_image[:30] == image).all() and (out_label[:30] == label).all()
    assert (out_image[30:] == 0).all() and (out_label[30:] == IGNORE).all()
    same_image, same_label = to_tv(image, label)
    assert PadToSize((10, 10), FILL)(same_image, same_label) == (same_image, same_label)


def test_pad_to_size_custom_ignore_index():
    image, label = to_tv(np.full((2, 2, 3), 9, np.uint8), np.zeros((2, 2), np.int32))
    out_image, out_label = PadToSize((3, 4), {tv_tensors.Image: 0, tv_tensors.Mask: -1})(image, label)
    assert (out_label[2:] == -1).all() and (out_label[:, 2:] == -1).all() and (out_label[:2, :2] == 0).all()
    assert (out_image[:, 2:] == 0).all() and (out_image[:, :, 2:] == 0).all() and (out_image[:, :2, :2] == 9).all()


def test_random_crop_is_an_exact_window():
    image, label = ramp()
    for seed in range(5):
        torch.manual_seed(seed)
        out_image, out_label = to_np(*CategoryCappedRandomCrop((30, 40))(*to_tv(image, label)))
        assert out_image.shape == (30, 40, 3) and out_label.shape == (30, 40)
        top, left = divmod(int(out_label[0, 0]), RAMP_WIDTH)
        assert (out_label == label[top : top + 30, left : left + 40]).all()
        assert (out_image == image[top : top + 30, left : left + 40]).all()


def test_random_crop_then_pad_on_small_images():
    _, label = scene(30, 40)
    label[label == IGNORE] = 0  # so that every ignored output pixel is padding
    image = paint(label)
    crop_and_pad = v2.Compose([CategoryCappedRandomCrop((50, 30)), PadToSize((50, 30), FILL)])
    for seed in range(5):
        torch.manual_seed(seed)
        out_image, out_label = to_np(*crop_and_pad(*to_tv(image, label)))
        assert out_image.shape == (50, 30, 3) and out_label.shape == (50, 30)
        assert assert_padding_bottom_right(out_image, out_label)
        assert (out_label[30:] == IGNORE).all() and (out_image[30:] == 0).all()
        assert_labels_subset(out_label, label)
        assert_aligned(out_image[:30], out_label[:30], min_fraction=0.2)


def _meets_constraint(label: np.ndarray, ratio: float) -> bool:
    """The category area constraint by brute force: every class's share of the non-ignored pixels, from np.unique."""
    values, counts = np.unique(label, return_counts=True)
    counts = counts[values != IGNORE]
    return counts.size > 1 and counts.max() < ratio * counts.sum()


def test_random_crop_category_area_constraint(monkeypatch):
    # One 40x40 block of class 1 in a 200x200 field of class 0: 9% of the 40x40 windows meet the constraint.
    label = np.zeros((200, 200), np.uint8)
    label[80:120, 80:120] = 1
    image, mask = to_tv(paint(label), label)
    unconstrained = CategoryCappedRandomCrop((40, 40), cat_max_ratio=1.0, max_attempts=100)
    torch.manual_seed(0)
    assert sum(_meets_constraint(unconstrained(image, mask)[1].numpy(), 0.75) for _ in range(40)) <= 12
    assert unconstrained.make_params([image, mask])["attempts"] == 1
    crop = CategoryCappedRandomCrop((40, 40), cat_max_ratio=0.75, max_attempts=100)
    windows = record_windows(monkeypatch)
    for seed in range(40):
        torch.manual_seed(seed)
        windows.clear()
        out_image, out_label = to_np(*crop(image, mask))
        # The output is the last window drawn, the first to meet the constraint: every earlier one failed it.
        top, left = windows[-1]
        assert (out_label == label[top : top + 40, left : left + 40]).all()
        assert _meets_constraint(out_label, 0.75)
        assert not any(_meets_constraint(label[row : row + 40, col : col + 40], 0.75) for row, col in windows[:-1])
        assert (out_image == paint(out_label)).all()


def test_random_crop_keeps_last_attempt_when_impossible(monkeypatch):
    image, label = ramp()
    single_class = np.zeros_like(label)  # no window can hold two classes
    crop = CategoryCappedRandomCrop((20, 30), cat_max_ratio=0.75, max_attempts=7)
    windows = record_windows(monkeypatch)
    torch.manual_seed(3)
    out_image, _ = to_np(*crop(*to_tv(image, single_class)))
    assert len(windows) == 7 and len(set(windows)) > 1
    top, left = windows[-1]
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
    crop = CategoryCappedRandomCrop((20, 20), cat_max_ratio=0.75, max_attempts=5)
    assert crop.make_params(list(to_tv(paint(label), label)))["attempts"] == attempts


def test_random_crop_without_a_mask_draws_one_window():
    image, _ = to_tv(*ramp())
    assert CategoryCappedRandomCrop((20, 30), cat_max_ratio=0.5).make_params([image])["attempts"] == 1


# ---------------------------------------------------------------------------------------------------------- flip


def test_horizontal_flip_mirrors_image_and_label_together():
    image, label = scene(dtype=np.int32)
    flipped_image, flipped_label = to_np(*v2.RandomHorizontalFlip(1.0)(*to_tv(image, label)))
    assert (flipped_image == image[:, ::-1]).all() and (flipped_label == label[:, ::-1]).all()
    assert (decode(flipped_image) == flipped_label).all()  # a pure permutation: exact everywhere, edges included
    kept_image, kept_label = to_np(*v2.RandomHorizontalFlip(0.0)(*to_tv(image, label)))
    assert (kept_image == image).all() and (kept_label == label).all()
    outcomes = set()
    for seed in range(20):
        torch.manual_seed(seed)
        out_image, out_label = to_np(*v2.RandomHorizontalFlip()(*to_tv(image, label)))
        assert (decode(out_image) == out_label).all()
        outcomes.add(int(out_label[15, 40]))
    assert outcomes == {int(label[15, 40]), int(label[15, -41])}


# --------------------------------------------------------------------------------------------------- photometric


def test_photometric_changes_image_values_not_geometry_nor_labels():
    image, label = scene()
    tv_image, mask = to_tv(image, label)
    changed = 0
    for seed in range(8):
        torch.manual_seed(seed)
        out_image, out_mask = PhotometricDistortion()(tv_image, mask)
        assert out_mask is mask and isinstance(out_image, tv_tensors.Image)
        out = out_image.permute(1, 2, 0).numpy()
        assert out.shape == image.shape and out.dtype == np.uint8
        # A pixel-wise colour map: equal input colours give equal output colours.
        for value in np.unique(label):
            region = out[label == value]
            assert (region == region[0]).all()
        changed += bool((out != image).any())
    assert changed > 0


def test_photometric_brightness_shifts_the_mean():
    image = np.random.default_rng(0).integers(60, 190, (16, 24, 3), dtype=np.uint8)
    brighter = distort(image, brightness=32.0)
    assert brighter.astype(float).mean() - image.astype(float).mean() == pytest.approx(32, abs=0.5)
    assert (distort(image) == image).all()


def test_photometric_contrast_saturation_and_hue():
    image = np.array([[[255, 0, 0], [40, 80, 120], [100, 100, 100]]], np.uint8)
    for contrast_first in (True, False):
        contrast = distort(image, contrast=1.5, contrast_first=contrast_first)
        assert (contrast == np.clip(np.rint(image * 1.5), 0, 255)).all()
    grey = distort(image, saturation=0.0)
    assert (grey == image.max(axis=-1, keepdims=True)).all()  # no saturation: every channel at the value
    # Hue on the 0-180 scale: +60 turns red into green; +180 is a full turn.
    shifted = distort(image, hue=60.0)
    assert shifted[0, 0].tolist() == [0, 255, 0] and shifted[0, 2].tolist() == [100, 100, 100]
    full_turn = distort(image, hue=180.0)
    assert (np.abs(full_turn.astype(int) - image) <= 1).all()


def test_photometric_draws_within_its_ranges():
    distortion = PhotometricDistortion(brightness_delta=10, contrast_range=(0.8, 0.9), hue_delta=5)
    torch.manual_seed(0)
    draws = [distortion.make_params([]) for _ in range(200)]
    for key, (low, high) in {"brightness": (-10, 10), "contrast": (0.8, 0.9), "hue": (-5, 5)}.items():
        applied = [params[key] for params in draws if params[key] is not None]
        assert 60 < len(applied) < 140  # probability 0.5
        assert all(low <= value <= high for value in applied)
    assert 60 < sum(params["contrast_first"] for params in draws) < 140


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
        out_image, out_label = augment(*to_tv(image, label), seed)
        assert isinstance(out_image, tv_tensors.Image) and isinstance(out_label, tv_tensors.Mask)
        assert out_image.shape == (3, 96, 128) and out_image.dtype == torch.uint8 and out_image.is_contiguous()
        assert out_label.shape == (96, 128) and out_label.dtype == torch.uint8
        out_image, out_label = to_np(out_image, out_label)
        assert_labels_subset(out_label, label)
        padded += assert_padding_bottom_right(out_image, out_label)
    assert padded > 0, "no seed exercised padding"


def test_train_augmentation_alignment_without_photometric():
    image, label = scene(dtype=np.int64)
    augment = TrainAugmentation(crop_size=(64, 96), scale_range=(0.5, 2.0), photometric=False)
    for seed in range(8):
        out_image, out_label = to_np(*augment(*to_tv(image, label), seed))
        assert out_label.dtype == np.int64  # augmented as uint8 (the ids fit), handed back in the label's dtype
        assert_labels_subset(out_label, label)
        assert_aligned(out_image, out_label, min_fraction=0.1)
    ramp_augment = TrainAugmentation(crop_size=(40, 56), scale_range=(0.5, 2.0), photometric=False, ignore_index=-1)
    ramp_image, ramp_label = ramp()
    for seed in range(8):
        out_image, out_label = to_np(*ramp_augment(*to_tv(ramp_image, ramp_label), seed))
        assert out_label.dtype == np.int32  # ids up to 3071: augmented in their own dtype
        assert_ramp_aligned(out_image, out_label)


def test_train_augmentation_is_scale_crop_flip_pad_in_that_order():
    image, label = scene()
    augment = TrainAugmentation(crop_size=(64, 96), scale_range=(0.5, 2.0), photometric=False)
    steps = v2.Compose(
        [
            RandomScale(augment.scale_range),
            CategoryCappedRandomCrop(augment.crop_size, cat_max_ratio=0.75),
            v2.RandomHorizontalFlip(),
            PadToSize(augment.crop_size, FILL),
        ]
    )
    for seed in range(6):
        fused = augment(*to_tv(image, label), seed)
        torch.manual_seed(T._torch_seed(seed))
        composed = steps(*to_tv(image, label))
        assert all(torch.equal(a, b) for a, b in zip(fused, composed))


def test_train_augmentation_is_deterministic_and_leaves_global_rng_alone():
    image, label = scene()
    augment = TrainAugmentation(crop_size=(64, 96))
    torch.manual_seed(0)
    state, numpy_state = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    first = augment(*to_tv(image, label), (0, 1, 2))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert (np.random.get_state()[1] == numpy_state).all()
    torch.manual_seed(123)  # the caller's own seed has no influence
    second = augment(*to_tv(image, label), (0, 1, 2))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    # Another epoch or index gives another sample: the crops (the image without colour changes) differ.
    geometric = TrainAugmentation(crop_size=(64, 96), hflip_probability=0.0, photometric=False)
    crops = {
        geometric(*to_tv(image, label), (0, epoch, index))[1].numpy().tobytes()
        for epoch in range(3)
        for index in (2, 3)
    }
    assert len(crops) >= 5


def test_train_augmentation_outputs_share_no_memory_with_inputs():
    # Scale 1 with a crop as large as the image and no flip: every step passes its input through.
    image, label = to_tv(*scene())
    augment = TrainAugmentation(crop_size=(120, 160), scale_range=(1.0, 1.0), hflip_probability=0.0, photometric=False)
    out_image, out_label = augment(image, label, 0)
    assert torch.equal(out_image, image) and torch.equal(out_label, label)
    out_image.fill_(1)
    out_label.fill_(1)
    assert not (image == 1).all() and not (label == 1).all()


# ---------------------------------------------------------------------------------------------------------- errors


def test_invalid_images_and_labels_name_the_shapes():
    image, label = to_tv(*scene(10, 12))
    augment = TrainAugmentation(crop_size=(4, 4))
    with pytest.raises(ValueError, match=r"uint8.*float32.*\(3, 10, 12\)"):
        augment(image.float(), label, 0)
    with pytest.raises(ValueError, match=r"\(10, 12\)"):
        augment(image[0], label, 0)
    with pytest.raises(ValueError, match=r"\(10, 11\).*\(10, 12\)"):
        augment(image, label[:, :11], 0)
    with pytest.raises(ValueError, match=r"integer.*float"):
        augment(image, label.double(), 0)
    with pytest.raises(ValueError, match=r"ignore_index -1.*uint8"):
        TrainAugmentation(crop_size=(4, 4), ignore_index=-1)(image, label, 0)
    with pytest.raises(ValueError, match="label must be"):
        augment(image, None, 0)
    with pytest.raises(ValueError, match="ndarray"):
        augment(image.permute(1, 2, 0).numpy(), label, 0)
    with pytest.raises(ValueError, match=r"uint8.*\(4, 10, 12\)"):
        PhotometricDistortion().transform(tv_tensors.Image(torch.zeros(4, 10, 12, dtype=torch.uint8)), NO_PHOTOMETRIC)


@pytest.mark.parametrize(
    "make",
    [
        lambda: RandomScale((0.0, 1.0)),
        lambda: RandomScale((2.0, 1.0)),
        lambda: CategoryCappedRandomCrop((0, 5)),
        lambda: CategoryCappedRandomCrop((5, 5), cat_max_ratio=0.0),
        lambda: CategoryCappedRandomCrop((5, 5), max_attempts=0),
        lambda: PadToSize((5, -1), FILL),
        lambda: PadToSize((5, 5), {tv_tensors.Image: 0}),
        lambda: PhotometricDistortion(contrast_range=(1.5, 0.5)),
        lambda: PhotometricDistortion(brightness_delta=-1),
        lambda: TrainAugmentation(crop_size=(0, 4)),
        lambda: TrainAugmentation(scale_range=(2.0, 1.0)),
        lambda: TrainAugmentation(cat_max_ratio=1.5),
        lambda: TrainAugmentation(hflip_probability=1.5),
    ],
)
def test_invalid_arguments(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("seed", [-1, (0, -1), (), 1.5, (0, True), "0"])
def test_invalid_seeds_name_the_seed(seed):
    image, label = to_tv(*scene(10, 12))
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        TrainAugmentation(crop_size=(4, 4))(image, label, seed)


# ------------------------------------------------------------------------------------------- exact fast paths


@pytest.mark.parametrize("size", [(1, 1), (7, 5), (37, 23)], ids=lambda size: f"{size[0]}x{size[1]}")
def test_photometric_row_blocks_give_the_whole_image_result_bit_for_bit(size, monkeypatch):
    """The distortion runs on row blocks that stay in the CPU cache: blocks of 1, 2 and 3 rows give exactly the
    result of one block (the whole image, as computed before blocks), for every combination of steps."""
    image = torch.from_numpy(np.random.default_rng(size[0]).integers(0, 256, (3, *size), dtype=np.uint8))
    distortion = PhotometricDistortion()
    combinations = [
        {"brightness": b, "contrast": c, "contrast_first": first, "saturation": s, "hue": h}
        for b in (None, -20.5)
        for c in (None, 1.3)
        for first in (True, False)
        for s in (None, 0.6)
        for h in (None, 11.0)
    ]
    for params in combinations:
        monkeypatch.setattr(T, "_PHOTOMETRIC_BLOCK_PIXELS", 1 << 40)
        whole = distortion.transform(tv_tensors.Image(image), params)
        for rows in (1, 2, 3):
            monkeypatch.setattr(T, "_PHOTOMETRIC_BLOCK_PIXELS", rows * size[1])
            assert torch.equal(distortion.transform(tv_tensors.Image(image), params), whole), (params, rows)


@pytest.mark.parametrize("dtype", [np.uint8, np.int64])
def test_train_augmentation_equals_its_pipeline_applied_whole(dtype):
    """`TrainAugmentation` crops the label's window from the source label instead of resizing it whole: its output
    is bit for bit that of its own `v2.Compose` (scale, capped crop, flip, photometric, pad) on the same seed."""
    image, label = scene(dtype=dtype)
    augment = TrainAugmentation(crop_size=(64, 96), scale_range=(0.3, 2.5), cat_max_ratio=0.5)
    attempts = set()
    for seed in range(24):
        fused = augment(*to_tv(image, label), (1, seed))
        torch.manual_seed(T._torch_seed((1, seed)))
        composed = augment.pipeline(*to_tv(image, label))
        assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(fused, composed)), seed
        torch.manual_seed(T._torch_seed((1, seed)))
        scale, crop = augment.pipeline.transforms[:2]
        attempts.add(crop.make_params(list(scale(*to_tv(image, label))))["attempts"])
    assert len(attempts) > 1, "the category cap never drew a second window"
