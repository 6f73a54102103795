"""FaPNImageProcessor: odd images, label reduction, post-processing and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.modeling_outputs import SemanticSegmenterOutput

from fapn_hf import FaPNImageProcessor

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
