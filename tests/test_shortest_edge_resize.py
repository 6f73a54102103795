"""The kernel's detectron2 `ResizeShortestEdge` (`fapn_hf/modeling/shortest_edge_resize.py`) and the converted
MaskFormer + FaPN processors that use it: sizes against an independent computation in exact rational arithmetic,
pixels against PIL's bilinear resize of the uint8 image (what detectron2's `ResizeTransform` calls)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F

from fapn_hf.families.maskformer_fapn.presets import maskformer_preset_image_processor
from fapn_hf.modeling.image_processing_maskformer_fapn import MaskFormerFaPNImageProcessor
from fapn_hf.modeling.shortest_edge_resize import (
    DETECTRON2_TRAIN_SHORT_EDGES,
    ResizeShortestEdge,
    resize_image,
    resize_label_map,
    scale_boxes,
    shortest_edge_size,
)


def exact_size(height: int, width: int, short: int, max_size: int | None) -> tuple[int, int]:
    """The rule in exact fractions: shorter side `short`, longer `short * long / shorter`, both times
    `max_size / longer` when the longer exceeds `max_size`, each rounded half up."""
    shorter, longer = min(height, width), max(height, width)
    new_short, new_long = Fraction(short), Fraction(short * longer, shorter)
    if max_size is not None and new_long > max_size:
        new_short, new_long = new_short * Fraction(max_size) / new_long, Fraction(max_size)
    rounded_short, rounded_long = (int(value + Fraction(1, 2)) for value in (new_short, new_long))
    return (rounded_short, rounded_long) if height < width else (rounded_long, rounded_short)


def near_half(height: int, width: int, short: int, max_size: int | None) -> bool:
    """Whether a side falls within 1e-9 of a .5 (where float64 and exact arithmetic may round apart)."""
    shorter, longer = min(height, width), max(height, width)
    new_short, new_long = Fraction(short), Fraction(short * longer, shorter)
    if max_size is not None and new_long > max_size:
        new_short, new_long = new_short * Fraction(max_size) / new_long, Fraction(max_size)
    return any(abs(value - int(value) - Fraction(1, 2)) < Fraction(1, 10**9) for value in (new_short, new_long))


def test_sizes_of_every_height_at_width_640_are_rounded_not_truncated():
    from transformers.image_transforms import get_size_with_aspect_ratio  # transformers' rule: sides truncated

    differ = 0
    for height in range(1, 1001):
        expected = exact_size(height, 640, 640, 2560)
        assert shortest_edge_size(height, 640, 640, 2560) == expected, height
        if 400 <= height <= 800:
            old = get_size_with_aspect_ratio((height, 640), 640, 2560)
            assert old[0] == expected[0] and old[1] in (expected[1], expected[1] - 1)  # one pixel short at most
            differ += old != expected
    assert differ == 108  # of the 401 heights 400..800, transformers' resize made 108 one pixel narrower


@pytest.mark.parametrize("short, max_size", [(800, 1333), (640, 2560), (512, 2048), (1024, 2048), (37, None)])
def test_sizes_match_exact_arithmetic_on_a_grid(short, max_size):
    checked = 0
    for height in range(1, 2000, 23):
        for width in range(1, 2000, 29):
            if near_half(height, width, short, max_size):
                continue  # a float64 tie: detectron2's own float result is what counts (next test)
            assert shortest_edge_size(height, width, short, max_size) == exact_size(height, width, short, max_size)
            checked += 1
    assert checked > 5500


def test_sizes_follow_detectron2s_float_order_at_ties():
    # 1333 / 1.5 = 888.666..., 800 * 1000 / 600 capped: detectron2 scales (800, 1333.33) by 1333 / 1333.33.
    assert shortest_edge_size(600, 1000, 800, 1333) == (800, 1333)
    assert shortest_edge_size(480, 640, 800, 1333) == (800, 1067)  # 1066.67 rounds up; int() gives 1066
    assert shortest_edge_size(427, 640, 800, 1333) == (800, 1199)  # 1199.06
    assert shortest_edge_size(100, 1000, 800, 1333) == (133, 1333)  # capped: 133.3
    assert shortest_edge_size(1, 100000, 800, 1333) == (1, 1333)  # 0.013 kept at one pixel


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="short_edge_length must be a positive int, got 0"):
        shortest_edge_size(10, 10, 0, 100)
    with pytest.raises(ValueError, match="height must be a positive int"):
        shortest_edge_size(0, 10, 5, 100)
    with pytest.raises(ValueError, match="max_size"):
        shortest_edge_size(10, 10, 5, -1)
    with pytest.raises(ValueError, match="uint8 or floating-point"):
        resize_image(torch.zeros(3, 4, 4, dtype=torch.int16), (2, 2))
    with pytest.raises(ValueError, match=r"\(C, H, W\) or \(N, C, H, W\)"):
        resize_image(torch.zeros(4, 4, dtype=torch.uint8), (2, 2))
    with pytest.raises(ValueError, match="integer or boolean labels"):
        resize_label_map(torch.zeros(4, 4), (2, 2))
    with pytest.raises(ValueError, match="sample_style"):
        ResizeShortestEdge((640, 800), 1333, sample_style="uniform")
    with pytest.raises(ValueError, match="short_edge_lengths"):
        ResizeShortestEdge([], 1333)


def _pil_bilinear(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.array(PIL.Image.fromarray(array).resize((size[1], size[0]), PIL.Image.BILINEAR))


@pytest.mark.parametrize(
    "shape, size", [((37, 53), (20, 29)), ((20, 29), (61, 88)), ((1, 9), (3, 27)), ((40, 3), (13, 1))]
)
def test_uint8_pixels_are_pils_bilinear(shape, size):
    rgb = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    resized = resize_image(torch.from_numpy(rgb).permute(2, 0, 1), size)
    assert resized.dtype == torch.uint8 and resized.shape == (3, *size)
    np.testing.assert_array_equal(resized.permute(1, 2, 0).numpy(), _pil_bilinear(rgb, size))
    # one channel, and a batch: plane by plane, the same numbers
    gray = resize_image(torch.from_numpy(rgb[:, :, 1])[None], size)
    np.testing.assert_array_equal(gray[0].numpy(), _pil_bilinear(rgb[:, :, 1], size))
    batch = resize_image(torch.from_numpy(np.stack([rgb, rgb[::-1].copy()])).permute(0, 3, 1, 2), size)
    np.testing.assert_array_equal(batch[1].permute(1, 2, 0).numpy(), _pil_bilinear(rgb[::-1].copy(), size))


def test_pils_filter_is_not_torchvisions_antialiased_resize():
    # Why PIL: torchvision's antialiased bilinear (transformers' resize) differs on some uint8 values.
    import torchvision.transforms.v2.functional as tvF

    rgb = np.random.default_rng(1).integers(0, 256, (300, 451, 3), dtype=np.uint8)
    tensor = torch.from_numpy(rgb).permute(2, 0, 1)
    ours = resize_image(tensor, (213, 320))
    theirs = tvF.resize(tensor, [213, 320], antialias=True)
    assert (ours.int() - theirs.int()).abs().max() <= 1 and not torch.equal(ours, theirs)


def test_float_images_follow_interpolate_and_labels_pils_nearest():
    image = torch.rand(2, 3, 15, 22, dtype=torch.float64)
    expected = F.interpolate(image, size=(9, 31), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resize_image(image, (9, 31)), expected, rtol=0, atol=0)
    # detectron2 hands PIL the uint8 map (mode L); the kernel goes through int32 (mode I) to keep ids above 255
    labels = torch.randint(0, 256, (2, 15, 22))
    resized = resize_label_map(labels, (9, 31))
    assert resized.dtype == labels.dtype and resized.shape == (2, 9, 31)
    for plane, result in zip(labels, resized):
        expected = PIL.Image.fromarray(plane.numpy().astype(np.uint8)).resize((31, 9), PIL.Image.NEAREST)
        assert torch.equal(result, torch.from_numpy(np.asarray(expected).astype(np.int64)))
    large = labels * 1000 + 70000
    assert torch.equal(resize_label_map(large, (9, 31)), resized * 1000 + 70000)
    # each output pixel copies one input pixel near its centre's preimage
    rows = torch.tensor([min(14, int((y + 0.5) * 15 / 9)) for y in range(9)])
    assert (resized[0, :, 3] - labels[0, rows, int(3.5 * 22 / 31)]).count_nonzero() <= 1
    masks = torch.rand(3, 8, 8) > 0.5
    assert torch.equal(resize_label_map(masks, (8, 8)), masks)
    assert resize_label_map(masks, (5, 4)).dtype == torch.bool


def test_boxes_scale_with_the_image():
    boxes = torch.tensor([[0.0, 10.0, 20.0, 30.0]])
    assert torch.equal(scale_boxes(boxes, (40, 80), (20, 160)), torch.tensor([[0.0, 5.0, 40.0, 15.0]]))


def test_training_resize_samples_detectron2s_choices():
    resize = ResizeShortestEdge(DETECTRON2_TRAIN_SHORT_EDGES, 1333)
    generator = torch.Generator().manual_seed(0)
    drawn = {resize.sample_short_edge(generator) for _ in range(300)}
    assert drawn == set(DETECTRON2_TRAIN_SHORT_EDGES)
    for _ in range(20):
        height, width = resize.output_size(480, 640, generator)
        assert height in DETECTRON2_TRAIN_SHORT_EDGES and width == exact_size(480, 640, height, 1333)[1]
    ranged = ResizeShortestEdge((10, 12), 100, sample_style="range")
    assert {ranged.sample_short_edge(generator) for _ in range(100)} == {10, 11, 12}
    image = torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8)
    assert ResizeShortestEdge(15, 1333)(image).shape == (3, 15, 20)


def _rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_converted_maskformer_processor_gives_what_the_original_saw():
    processor = maskformer_preset_image_processor("maskformer-fapn-r101-cocostuff")
    assert processor.detectron2_resize
    mean = torch.tensor(processor.image_mean, dtype=torch.float64)[:, None, None] * 255
    std = torch.tensor(processor.image_std, dtype=torch.float64)[:, None, None] * 255
    for height in (401, 437, 523, 799):  # int(x) would give each of these one pixel less of width... or height
        rgb = _rgb(height, 640 if height < 640 else 300, seed=height)
        size = exact_size(*rgb.shape[:2], 640, 2560)
        pixels = processor(rgb, return_tensors="pt")["pixel_values"][0]
        assert tuple(pixels.shape[-2:]) == size
        expected = (torch.from_numpy(_pil_bilinear(rgb, size).copy()).permute(2, 0, 1).double() - mean) / std
        torch.testing.assert_close(pixels.double(), expected, rtol=0, atol=1e-4)


def test_processor_maps_follow_the_image_and_the_old_rule_stays_off_by_default():
    rgb = _rgb(45, 61)
    classes = np.random.default_rng(2).integers(0, 4, (45, 61))
    processor = MaskFormerFaPNImageProcessor(
        size={"shortest_edge": 64, "longest_edge": 128}, detectron2_resize=True, num_labels=4
    )
    batch = processor(rgb, segmentation_maps=classes, return_tensors="pt")
    size = exact_size(45, 61, 64, 128)
    assert size == (64, 87) and tuple(batch["pixel_values"].shape[-2:]) == size
    expected_map = resize_label_map(torch.from_numpy(classes), size)
    rebuilt = (batch["mask_labels"][0].bool() * batch["class_labels"][0][:, None, None].add(1)).sum(0) - 1
    assert torch.equal(rebuilt, expected_map)
    # transformers' rule, still the class default: 86 columns (int(86.76))
    legacy = MaskFormerFaPNImageProcessor(size={"shortest_edge": 64, "longest_edge": 128})
    assert not legacy.detectron2_resize and legacy(rgb, return_tensors="pt")["pixel_values"].shape[-1] == 86
    # per call, and saved with the processor
    assert legacy(rgb, detectron2_resize=True, return_tensors="pt")["pixel_values"].shape[-1] == 87
    # an explicit size (the predictor's test-time views): PIL's pixels at that size
    fixed = MaskFormerFaPNImageProcessor(
        size={"height": 30, "width": 50}, detectron2_resize=True, image_std=[1 / 255] * 3
    )
    values = fixed(rgb, image_mean=[0.0] * 3, return_tensors="pt")["pixel_values"][0]
    assert torch.equal(values.round().to(torch.uint8), torch.from_numpy(_pil_bilinear(rgb, (30, 50))).permute(2, 0, 1))
    with pytest.raises(ValueError, match="shortest_edge"):
        MaskFormerFaPNImageProcessor(size={"longest_edge": 32}, detectron2_resize=True)(rgb)


def test_the_setting_survives_save_and_load(tmp_path):
    maskformer_preset_image_processor("maskformer-fapn-swin-l-ade20k").save_pretrained(tmp_path)
    assert MaskFormerFaPNImageProcessor.from_pretrained(tmp_path).detectron2_resize


def test_converted_fapn_processor_resizes_as_detectron2():
    from fapn_hf.families.fapn.presets import fapn_preset_image_processor
    from fapn_hf.modeling.image_processing_fapn import FaPNImageProcessor

    image, classes = _rgb(45, 61), np.random.default_rng(3).integers(0, 19, (45, 61))
    processor = fapn_preset_image_processor(labels="cityscapes", size={"shortest_edge": 64, "longest_edge": 128})
    assert not processor.detectron2_resize  # presets keep transformers' resize; the converter sets it
    processor.detectron2_resize = True
    batch = processor(image, segmentation_maps=classes, return_tensors="pt")
    size = exact_size(45, 61, 64, 128)
    assert tuple(batch["pixel_values"].shape[-2:]) == size == (64, 87)
    mean = torch.tensor(processor.image_mean, dtype=torch.float64)[:, None, None]
    std = torch.tensor(processor.image_std, dtype=torch.float64)[:, None, None]
    expected = (torch.from_numpy(_pil_bilinear(image, size).copy()).permute(2, 0, 1).double() / 255 - mean) / std
    torch.testing.assert_close(batch["pixel_values"][0].double(), expected, rtol=0, atol=1e-5)
    assert torch.equal(batch["labels"][0], resize_label_map(torch.from_numpy(classes), size))
    assert FaPNImageProcessor(size={"shortest_edge": 64, "longest_edge": 128})(image)["pixel_values"][0].shape[-1] == 86
