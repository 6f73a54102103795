"""FaPNImageProcessor: odd images, channel layouts, batches of different sizes, label reduction, post-processing,
serialisation and clear errors; what every family's processor checks the same way (issue 19)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as tvF
from conftest import tiny_config
from families_small import PIXEL_CLASS_FAMILIES, SMALL
from PIL import Image
from transformers import AutoImageProcessor
from transformers.modeling_outputs import SemanticSegmenterOutput

from fapn_hf import FAMILIES, FaPNForSemanticSegmentation, FaPNImageProcessor
from fapn_hf.modeling.image_processing_fapn import FaPNImageProcessorKwargs
from fapn_hf.modeling.modeling_fapn import FaPNSemanticSegmenterOutput
from fapn_hf.modeling.modeling_maskformer_fapn import MaskFormerFaPNForSegmentationOutput

RNG = np.random.default_rng(0)


def _rgb(h=30, w=40):
    return RNG.integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "image",
    [
        Image.fromarray(_rgb()),
        Image.fromarray(_rgb()[..., 0]),  # PIL "L"
        Image.fromarray(np.dstack([_rgb(), np.full((30, 40), 128, np.uint8)])),  # RGBA
        Image.fromarray(_rgb()).convert("P"),
        _rgb()[..., 0],  # 2-D NumPy grayscale
        _rgb()[..., :1],  # (H, W, 1)
        np.dstack([_rgb(), np.zeros((30, 40), np.uint8)]),  # (H, W, 4)
        torch.from_numpy(_rgb()[..., 0]).unsqueeze(0),  # (1, H, W) tensor
    ],
    ids=["rgb", "gray", "rgba", "palette", "np-2d", "np-1ch", "np-rgba", "torch-1ch"],
)
def test_any_image_mode_becomes_normalised_rgb(image):
    processor = FaPNImageProcessor(do_resize=False)
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 30, 40) and pixel_values.dtype == torch.float32


def test_grayscale_channels_are_equal_and_rgba_is_composited_over_white():
    processor = FaPNImageProcessor(do_resize=False, do_normalize=False)
    gray = _rgb()[..., 0]
    values = processor(gray, return_tensors="pt")["pixel_values"][0]
    assert torch.equal(values[0], values[1]) and torch.equal(values[1], values[2])
    torch.testing.assert_close(values[0], torch.from_numpy(gray).float() / 255)
    rgb = _rgb()
    alpha = np.tile(np.array([255, 0, 51], np.uint8), (30, 14))[:, :40]  # opaque, transparent, 20 % opaque columns
    composited = processor(np.dstack([rgb, alpha]), return_tensors="pt")["pixel_values"][0].permute(1, 2, 0).numpy()
    # An independent computation: straight alpha over white, rounded to 8 bits.
    expected = np.rint(rgb * (alpha[..., None] / 255.0) + 255 * (1 - alpha[..., None] / 255.0)) / 255
    np.testing.assert_allclose(composited, expected, atol=1e-6)
    assert (composited[:, 1::3] == 1).all()  # hidden pixels are never revealed


def test_resize_keeps_the_aspect_ratio_and_tiny_images_work():
    processor = FaPNImageProcessor(size={"shortest_edge": 64, "longest_edge": 256})
    assert processor(_rgb(30, 40), return_tensors="pt")["pixel_values"].shape[-2:] == (64, 85)
    assert processor(_rgb(10, 300), return_tensors="pt")["pixel_values"].shape[-2:] == (9, 256)
    assert FaPNImageProcessor(do_resize=False)(_rgb(1, 1), return_tensors="pt")["pixel_values"].shape == (1, 3, 1, 1)


def test_segmentation_maps_use_nearest_and_reduce_labels():
    labels = RNG.integers(0, 5, (30, 40), dtype=np.uint8)
    out = FaPNImageProcessor(do_resize=False, do_reduce_labels=True)(
        _rgb(), segmentation_maps=labels, return_tensors="pt"
    )
    expected = np.where(labels == 0, 255, labels.astype(np.int64) - 1)
    assert torch.equal(out["labels"][0], torch.from_numpy(expected))
    resized = FaPNImageProcessor(size={"shortest_edge": 60, "longest_edge": 200})(
        _rgb(), segmentation_maps=labels, return_tensors="pt"
    )
    assert resized["labels"].shape == (1, 60, 80)
    assert set(resized["labels"].unique().tolist()) <= set(np.unique(labels).tolist())


def test_mismatched_or_malformed_segmentation_maps_are_reported():
    processor = FaPNImageProcessor(do_resize=False)
    with pytest.raises(ValueError, match=r"segmentation map 0 has size \(30, 41\).*image has size \(30, 40\)"):
        processor(_rgb(), segmentation_maps=np.zeros((30, 41), np.uint8))
    with pytest.raises(ValueError, match="must be 2-D"):
        processor(_rgb(), segmentation_maps=np.zeros((30, 40, 3), np.uint8))
    with pytest.raises(ValueError, match="2 images but 1 segmentation maps"):
        processor([_rgb(), _rgb()], segmentation_maps=[np.zeros((30, 40), np.uint8)])
    with pytest.raises(ValueError, match=r"must have 1 \(gray\), 2 \(gray \+ alpha\), 3 \(RGB\) or 4 \(RGBA\)"):
        processor(np.zeros((30, 40, 5), np.uint8))


def test_post_process_returns_2d_maps_at_target_sizes():
    logits = torch.randn(2, 4, 16, 16)
    maps = FaPNImageProcessor().post_process_semantic_segmentation(
        SemanticSegmenterOutput(logits=logits), target_sizes=[(30, 40), (16, 16)]
    )
    assert [tuple(m.shape) for m in maps] == [(30, 40), (16, 16)]
    assert torch.equal(maps[1], logits[1].argmax(0))


def test_images_of_different_sizes_are_padded_to_the_largest_with_a_mask():
    processor = FaPNImageProcessor(do_resize=False)
    images, maps = [_rgb(30, 40), _rgb(50, 20)], [RNG.integers(0, 5, (30, 40)), RNG.integers(0, 5, (50, 20))]
    batch = processor(images, segmentation_maps=maps, return_tensors="pt")
    assert batch["pixel_values"].shape == (2, 3, 50, 40)
    assert batch["pixel_mask"].dtype == torch.int64 and batch["labels"].shape == (2, 50, 40)
    for index, (image, segmentation_map) in enumerate(zip(images, maps)):
        height, width = image.shape[:2]
        alone = processor(image, segmentation_maps=segmentation_map, return_tensors="pt")
        assert torch.equal(batch["pixel_values"][index, :, :height, :width], alone["pixel_values"][0])
        assert torch.equal(batch["labels"][index, :height, :width], alone["labels"][0])
        expected_mask = torch.zeros(50, 40, dtype=torch.int64)
        expected_mask[:height, :width] = 1
        assert torch.equal(batch["pixel_mask"][index], expected_mask)
        padding = expected_mask == 0
        assert torch.all(batch["pixel_values"][index][:, padding] == 0) and torch.all(
            batch["labels"][index][padding] == 255
        )
        assert torch.all(alone["pixel_mask"] == 1)


def test_resized_batches_are_padded_after_resizing():
    processor = FaPNImageProcessor(size={"shortest_edge": 32, "longest_edge": 64})
    batch = processor([_rgb(30, 40), _rgb(50, 20)], return_tensors="pt")
    # 30x40 -> 32x42 and 50x20 -> 64x26 (the longer side capped at 64): padded to 64x42.
    assert batch["pixel_values"].shape == (2, 3, 64, 42)
    assert [tuple(m.nonzero().max(0).values + 1) for m in batch["pixel_mask"]] == [(32, 42), (64, 26)]


def test_a_fixed_pad_size_and_unpadded_lists():
    processor = FaPNImageProcessor(do_resize=False)
    assert processor(_rgb(30, 40), pad_size={"height": 64, "width": 64}, return_tensors="pt")["pixel_values"].shape[
        -2:
    ] == (64, 64)
    with pytest.raises(ValueError, match=r"larger than pad_size \(16, 16\)"):
        processor(_rgb(30, 40), pad_size={"height": 16, "width": 16})
    with pytest.raises(ValueError, match=r"cannot be stacked with do_pad=False"):
        processor([_rgb(30, 40), _rgb(20, 40)], do_pad=False, return_tensors="pt")
    unpadded = processor([_rgb(30, 40), _rgb(20, 40)], do_pad=False)["pixel_values"]
    assert [tuple(image.shape) for image in unpadded] == [(3, 30, 40), (3, 20, 40)]


def test_post_processing_crops_each_image_before_resizing():
    logits = torch.randn(2, 4, 50, 40)
    pixel_mask = torch.zeros(2, 50, 40, dtype=torch.int64)
    pixel_mask[0, :30, :40] = 1
    pixel_mask[1, :50, :20] = 1
    processor = FaPNImageProcessor()
    outputs = FaPNSemanticSegmenterOutput(logits=logits, pixel_mask=pixel_mask)
    results = processor.post_process_semantic_segmentation(
        outputs, target_sizes=[(60, 80), (100, 40)], return_segmentation_scores=True
    )
    for index, (result, region, size) in enumerate(zip(results, [(30, 40), (50, 20)], [(60, 80), (100, 40)])):
        cropped = logits[index : index + 1, :, : region[0], : region[1]]
        expected = F.interpolate(cropped, size=size, mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(result.segmentation_scores, expected)
        assert torch.equal(result.segmentation, expected.argmax(0))
    # Without target sizes, each map has its image's (processed) size; the mask may also be given explicitly.
    maps = processor.post_process_semantic_segmentation(SemanticSegmenterOutput(logits=logits), pixel_mask=pixel_mask)
    assert [tuple(m.shape) for m in maps] == [(30, 40), (50, 20)]
    with pytest.raises(ValueError, match="pixel_mask of shape"):
        processor.post_process_semantic_segmentation(outputs, pixel_mask=pixel_mask[:, :10])
    with pytest.raises(ValueError, match="3 target sizes for a batch of 2"):
        processor.post_process_semantic_segmentation(outputs, target_sizes=[(1, 1)] * 3)


def test_a_batch_through_the_model_comes_back_at_each_image_size():
    model = FaPNForSemanticSegmentation(tiny_config()).eval()
    processor = FaPNImageProcessor(size={"shortest_edge": 32, "longest_edge": 64})
    images = [_rgb(30, 40), _rgb(50, 20)]
    inputs = processor(images, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    assert torch.equal(outputs.pixel_mask, inputs["pixel_mask"])
    maps = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.shape[:2] for image in images])
    assert [tuple(m.shape) for m in maps] == [(30, 40), (50, 20)]
    scores = processor.post_process_semantic_segmentation(outputs, return_segmentation_scores=True)
    # The second image (64 x 26 after resizing) is cropped out of the 64 x 42 batch before anything else.
    torch.testing.assert_close(scores[1].segmentation_scores, outputs.logits[1, :, :64, :26])


@pytest.mark.parametrize(
    "layout", ["numpy-channels-first", "torch-channels-last", "numpy-explicit", "torch-explicit", "torch-2d-batch"]
)
def test_channel_layouts_are_inferred_when_unambiguous_and_taken_as_given_otherwise(layout):
    processor = FaPNImageProcessor(do_resize=False)
    image = _rgb(30, 40)
    expected = processor(image, return_tensors="pt")["pixel_values"]
    channels_first = np.ascontiguousarray(np.moveaxis(image, -1, 0))
    if layout == "numpy-channels-first":
        pixel_values = processor(channels_first, return_tensors="pt")["pixel_values"]
    elif layout == "torch-channels-last":
        pixel_values = processor(torch.from_numpy(image), return_tensors="pt")["pixel_values"]
    elif layout == "numpy-explicit":
        pixel_values = processor(channels_first, input_data_format="channels_first", return_tensors="pt")
        pixel_values = pixel_values["pixel_values"]
    elif layout == "torch-explicit":
        tensor = torch.from_numpy(image)
        pixel_values = processor(tensor, input_data_format="channels_last", return_tensors="pt")["pixel_values"]
    else:  # a (N, C, H, W) tensor batch
        pixel_values = processor(torch.from_numpy(channels_first).unsqueeze(0).repeat(2, 1, 1, 1), return_tensors="pt")
        pixel_values = pixel_values["pixel_values"][1:]
    assert torch.equal(pixel_values, expected)


def test_ambiguous_shapes_follow_the_convention_unless_input_data_format_says_otherwise():
    processor = FaPNImageProcessor(do_resize=False, do_normalize=False)
    array = RNG.integers(0, 255, (3, 5, 4), dtype=np.uint8)  # 3 channels first, or 4 (RGBA) last?
    assert processor(array, return_tensors="pt")["pixel_values"].shape == (1, 3, 3, 5)  # NumPy: channels last
    as_first = processor(array, input_data_format="channels_first", return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(as_first[0], torch.from_numpy(array).float() / 255)
    tensor = torch.from_numpy(array)
    assert processor(tensor, return_tensors="pt")["pixel_values"].shape == (1, 3, 5, 4)  # torch: channels first
    one_pixel = processor(np.array([[[10, 20, 30]]], np.uint8), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(one_pixel.flatten(), torch.tensor([10.0, 20.0, 30.0]) / 255)


def test_do_convert_rgb_false_passes_the_channels_through():
    processor = FaPNImageProcessor(do_resize=False, do_normalize=False, do_convert_rgb=False)
    rgb = _rgb()
    torch.testing.assert_close(
        processor(Image.fromarray(rgb), return_tensors="pt")["pixel_values"][0],
        torch.from_numpy(rgb).permute(2, 0, 1).float() / 255,
    )
    gray = processor(rgb[..., 0], return_tensors="pt")["pixel_values"]
    assert gray.shape == (1, 1, 30, 40)  # not repeated to RGB
    with pytest.raises(ValueError, match=r"\[4\] channels cannot be normalised with the 3 values of image_mean"):
        FaPNImageProcessor(do_convert_rgb=False)(np.dstack([rgb, rgb[..., :1]]))


def test_a_processor_saved_on_its_own_reloads_with_auto_image_processor(tmp_path):
    processor = FaPNImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}, do_reduce_labels=True)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "FaPNImageProcessor" and "auto_map" not in saved
    reloaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(reloaded) is FaPNImageProcessor and reloaded.to_dict() == processor.to_dict()


def test_the_kwargs_are_declared_like_transformers_processors():
    assert FaPNImageProcessor.valid_kwargs is FaPNImageProcessorKwargs
    assert {"do_reduce_labels", "do_pad", "pad_size", "input_data_format"} <= set(
        FaPNImageProcessorKwargs.__annotations__
    )


# ------------------------------------------------------------------ every family's processor (issue 19: the kernel's
# image_decoding helpers, one rule for all)

FAMILY_NAMES = sorted(FAMILIES)


def family_processor(name: str, **overrides):
    preset, _ = SMALL[name]
    return FAMILIES[name].preset_image_processor(preset, ["a", "b", "c", "d"], **overrides)


def family_outputs(name: str, batch: int = 2, pixel_mask: torch.Tensor | None = None):
    """Model outputs of the family's shape for a padded batch of `batch` 32 x 40 inputs (random scores)."""
    generator = torch.Generator().manual_seed(0)
    if name == "fapn":
        return FaPNSemanticSegmenterOutput(
            logits=torch.randn(batch, 4, 32, 40, generator=generator), pixel_mask=pixel_mask
        )
    return MaskFormerFaPNForSegmentationOutput(
        class_queries_logits=torch.randn(batch, 6, 5, generator=generator),
        masks_queries_logits=torch.randn(batch, 6, 8, 10, generator=generator),
        pixel_mask=pixel_mask,
    )


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_no_image_is_refused_with_the_packages_message(name):
    """`processor(None)` was transformers' "only a single or a list of entries is supported"."""
    processor = family_processor(name)
    expected = r"^expected an image file path, a PIL image, a NumPy array or a torch tensor, got NoneType$"
    with pytest.raises(ValueError, match=expected):
        processor(None)
    with pytest.raises(ValueError, match=r"got int \(image 1 of 2\)$"):
        processor([_rgb(), 3])


@pytest.mark.parametrize("name", PIXEL_CLASS_FAMILIES)
def test_a_one_pixel_resize_is_the_float_resize_rounded_and_other_sizes_stay_torchs_uint8_resize(name):
    """torch's uint8 resize stops with an INTERNAL ASSERT on a 1 x 1 output; the processor then resizes in float and
    rounds to uint8 (what the uint8 kernel computes elsewhere). Other sizes are torch's uint8 resize, bit for bit."""
    image = _rgb(48, 64)  # torch 2.14's uint8 kernel fails on this one (not on every size)
    uint8 = torch.from_numpy(image).permute(2, 0, 1)
    plain = family_processor(name, do_normalize=False, do_rescale=False)
    one = plain(image, size={"height": 1, "width": 1}, return_tensors="pt")["pixel_values"]
    expected = tvF.resize(uint8.float(), [1, 1], antialias=True).round()
    assert one.shape == (1, 3, 1, 1)
    torch.testing.assert_close(one[0].float(), expected, rtol=0, atol=0)
    five = plain(image, size={"height": 5, "width": 7}, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(five[0], tvF.resize(uint8, [5, 7], antialias=True), rtol=0, atol=0)
    labels = RNG.integers(0, 4, (48, 64)).astype(np.uint8)
    batch = family_processor(name)(image, segmentation_maps=labels, size={"height": 1, "width": 1}, return_tensors="pt")
    assert batch["pixel_values"].shape == (1, 3, 1, 1)


BAD_TARGET_SIZES = {
    "one pair for a batch of two": (
        (40, 30),
        r"target_sizes takes one \(height, width\) per image, got \(40, 30\) "
        r"for a batch of 2 image\(s\); pass \[\(height, width\)\] \* 2",
    ),  # fmt: skip
    "a zero side": ([(0, 30), (4, 4)], r"target_sizes\[0\] is \(0, 30\): a target size must be at least 1x1"),
    "a negative side": ([(4, 4), (-1, 30)], r"target_sizes\[1\] is \(-1, 30\): a target size must be at least 1x1"),
    "a fraction": ([(4, 4.5), (4, 4)], r"target_sizes\[0\] must be a \(height, width\) pair of whole numbers"),
    "three sides": ([(4, 4, 4), (4, 4)], r"target_sizes\[0\] must be a \(height, width\) pair"),
    "another batch": ([(4, 4)] * 3, r"got 3 target sizes for a batch of 2 images; target_sizes takes one"),
    "a number": (
        40,
        r"target_sizes must be one \(height, width\) per image \(a list, or an \(N, 2\) tensor\), got int",
    ),
}


@pytest.mark.parametrize("case", list(BAD_TARGET_SIZES))
@pytest.mark.parametrize("name", PIXEL_CLASS_FAMILIES)
def test_target_sizes_are_one_positive_height_and_width_per_image(name, case):
    """(40, 30) for a batch of two was `TypeError: 'int' object is not iterable`; zero or negative sizes were torch's
    "Input and output sizes should be greater than 0"."""
    target_sizes, message = BAD_TARGET_SIZES[case]
    processor = family_processor(name)
    with pytest.raises(ValueError, match=message):
        processor.post_process_semantic_segmentation(family_outputs(name), target_sizes=target_sizes)


@pytest.mark.parametrize("name", PIXEL_CLASS_FAMILIES)
def test_target_sizes_as_a_tensor_or_numpy_pairs_give_the_same_maps(name):
    processor, outputs = family_processor(name), family_outputs(name)
    expected = processor.post_process_semantic_segmentation(outputs, target_sizes=[(40, 30), (7, 9)])
    assert [tuple(m.shape) for m in expected] == [(40, 30), (7, 9)]
    for sizes in (torch.tensor([[40, 30], [7, 9]]), np.array([[40, 30], [7, 9]]), [np.array([40, 30]), (7.0, 9)]):
        maps = processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)
        assert all(torch.equal(a, b) for a, b in zip(maps, expected))


@pytest.mark.parametrize("name", PIXEL_CLASS_FAMILIES)
def test_a_tuple_output_is_refused_saying_what_post_processing_needs(name):
    """`model(x, return_dict=False)` then post-processing was `AttributeError: 'tuple' object has no attribute
    'logits'`; the tuple drops the fields that are None, so its tensors cannot be told apart."""
    processor, outputs = family_processor(name), family_outputs(name)
    with pytest.raises(ValueError, match=r"takes the model's output object \(with `\.\w+`\), got a tuple, which the "
                       r"model returns with return_dict=False; call the model with return_dict=True"):  # fmt: skip
        processor.post_process_semantic_segmentation(outputs.to_tuple())
    # A plain mapping with the fields works as the output object does.
    maps = processor.post_process_semantic_segmentation(dict(outputs))
    assert all(torch.equal(a, b) for a, b in zip(maps, processor.post_process_semantic_segmentation(outputs)))


@pytest.mark.parametrize("name", PIXEL_CLASS_FAMILIES)
def test_segmentation_maps_are_checked_the_same_way_by_every_processor(name):
    processor = family_processor(name, do_resize=False)
    wrong_size = r"segmentation map 0 has size \(40, 30\) \(H, W\) but its image has size \(30, 40\)"
    with pytest.raises(ValueError, match=wrong_size):
        processor(_rgb(30, 40), segmentation_maps=np.zeros((40, 30), np.uint8))
    with pytest.raises(ValueError, match=r"segmentation map 0 must be 2-D \(height, width\) class ids, got shape"):
        processor(_rgb(30, 40), segmentation_maps=np.zeros((30, 40, 3), np.uint8))
    with pytest.raises(ValueError, match="segmentation map 0 must hold integer class ids, got float32 values that"):
        processor(_rgb(30, 40), segmentation_maps=np.full((30, 40), 0.5, np.float32))
    with pytest.raises(ValueError, match="2 images but 1 segmentation maps"):
        processor([_rgb(30, 40), _rgb(30, 40)], segmentation_maps=[np.zeros((30, 40), np.uint8)])
    # Whole-number floats and booleans are class ids.
    whole = processor(_rgb(30, 40), segmentation_maps=np.ones((30, 40), np.float32), return_tensors="pt")
    binary = processor(_rgb(30, 40), segmentation_maps=np.ones((30, 40), bool), return_tensors="pt")
    for batch in (whole, binary):
        if name == "fapn":
            assert torch.equal(batch["labels"], torch.ones(1, 30, 40, dtype=torch.int64))
        else:
            assert batch["class_labels"][0].tolist() == [1] and bool(batch["mask_labels"][0].all())
