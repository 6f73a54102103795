"""MaskFormer + FaPN in the predictor (the original semantic inference per view, score averaging over TTA views,
short-side views, the backends) and semantic maps as mask-classification targets (issue 11, part B)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_maskformer_fapn import LABELS, randomise_offsets, tiny_maskformer_config
from transformers.models.maskformer.image_processing_maskformer import MaskFormerImageProcessor

from fapn_hf import MaskFormerFaPNForInstanceSegmentation, MaskFormerFaPNImageProcessor, label_maps
from fapn_hf.cli import commands as cli
from fapn_hf.families.maskformer_fapn.targets import MaskClassificationCollator, semantic_to_mask_targets
from fapn_hf.inference.predictor import SegmentationPredictor, TTAConfig
from fapn_hf.tasks.semantic.demo_data import DEMO_LABELS

NUM_LABELS = len(LABELS)


@pytest.fixture(scope="module")
def model() -> MaskFormerFaPNForInstanceSegmentation:
    torch.manual_seed(0)
    model = MaskFormerFaPNForInstanceSegmentation(tiny_maskformer_config()).eval()
    randomise_offsets(model)
    return model


@pytest.fixture(scope="module")
def processor() -> MaskFormerFaPNImageProcessor:
    return MaskFormerFaPNImageProcessor(size={"shortest_edge": 64, "longest_edge": 128})


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (45, 61, 3), dtype=np.uint8)


def original_semantic_inference(model, pixel_values: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
    """The original MaskFormer's test path written out: pad the input to a multiple of 32, upsample the mask logits
    to the padded size, crop to the image (sem_seg_postprocess), sum_q softmax(class)[:-1] * sigmoid(mask)
    (semantic_inference), resize to the output size. `(num_labels, H, W)` for a `(1, 3, h, w)` input."""
    height, width = pixel_values.shape[-2:]
    padded_h, padded_w = 32 * math.ceil(height / 32), 32 * math.ceil(width / 32)
    padded = F.pad(pixel_values, (0, padded_w - width, 0, padded_h - height))
    with torch.no_grad():
        outputs = model(padded)
    masks = F.interpolate(outputs.masks_queries_logits, size=(padded_h, padded_w), mode="bilinear", align_corners=False)
    masks = masks[0, :, :height, :width].sigmoid()
    classes = outputs.class_queries_logits[0].softmax(-1)[:, :-1]
    scores = torch.zeros(classes.shape[1], height, width)
    for query in range(classes.shape[0]):
        scores += classes[query, :, None, None] * masks[query]
    return F.interpolate(scores[None], size=output_size, mode="bilinear", align_corners=False)[0]


def resized_input(processor, image: np.ndarray, size: tuple[int, int] | None = None) -> torch.Tensor:
    resize = {} if size is None else {"do_resize": True, "size": {"height": size[0], "width": size[1]}}
    return processor(image, return_tensors="pt", **resize)["pixel_values"]


# --------------------------------------------------------------------------------------------- predictor


def test_one_view_is_the_original_semantic_inference(model, processor, image):
    predictor = SegmentationPredictor(model, processor)
    expected = original_semantic_inference(model, resized_input(processor, image), (45, 61))
    scores = predictor.predict_probabilities(image)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)
    labels = predictor.predict(image)
    assert labels.shape == (45, 61) and labels.min() >= 0 and labels.max() < NUM_LABELS
    np.testing.assert_array_equal(labels, expected.argmax(0).numpy())
    # transformers' MaskFormer post-processing (einsum on the stride-4 masks, padding never cropped) differs.
    with torch.no_grad():
        outputs = model(resized_input(processor, image))
    transformers_scores = MaskFormerImageProcessor.post_process_semantic_segmentation(
        processor, outputs, target_sizes=[(45, 61)], return_segmentation_scores=True
    )[0]["segmentation_scores"]
    assert not torch.allclose(transformers_scores, expected, atol=1e-3)


def test_flip_averages_the_views_scores_without_softmax(model, processor, image):
    predictor = SegmentationPredictor(model, processor)
    pixel_values = resized_input(processor, image)
    plain = original_semantic_inference(model, pixel_values, (45, 61))
    flipped = original_semantic_inference(model, pixel_values.flip(-1), (45, 61)).flip(-1)
    tta = TTAConfig(flip=True)
    torch.testing.assert_close(predictor.predict_probabilities(image, tta), (plain + flipped) / 2, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(predictor.predict(image, tta), ((plain + flipped) / 2).argmax(0).numpy())


def test_short_side_views_follow_resize_shortest_edge(model, processor, image):
    predictor = SegmentationPredictor(model, processor)
    shapes = []

    def record(module, args, kwargs):
        shapes.append(tuple(kwargs["pixel_values"].shape[-2:]))

    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        scores = predictor.predict_probabilities(image, TTAConfig(short_sides=(32, 48), max_size=64, flip=True))
    finally:
        hook.remove()
    # 45 x 61: short side 32 gives 32 x 43.4 -> 32 x 43; 48 would make the long side 65.1 > 64, so 47.2 x 64 -> 47 x 64.
    assert shapes == [(32, 43), (32, 43), (47, 64), (47, 64)]
    expected = 0
    for size in ((32, 43), (47, 64)):
        pixel_values = resized_input(processor, image, size)
        expected = expected + original_semantic_inference(model, pixel_values, (45, 61)) / 4
        expected = expected + original_semantic_inference(model, pixel_values.flip(-1), (45, 61)).flip(-1) / 4
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)


def test_original_multi_scale_setting_and_checks():
    tta = TTAConfig.maskformer_multi_scale()
    # FaPN-full's MaskFormer configs (ADE20K Swin-L, COCO-Stuff-10K R101): TEST.AUG MIN_SIZES, MAX_SIZE, FLIP.
    assert tta.short_sides == (320, 480, 640, 800, 960, 1120) and tta.max_size == 4480 and tta.flip
    assert tta.num_views == 12
    for short_sides in ((0,), (32.5,), (), (True,), "abc"):
        with pytest.raises(ValueError, match="short_sides must be positive integers"):
            TTAConfig(short_sides=short_sides)
    with pytest.raises(ValueError, match=r"max_size must be an integer >= the largest short side \(640\)"):
        TTAConfig(short_sides=(320, 640), max_size=600)
    with pytest.raises(ValueError, match="either scales"):
        TTAConfig(scales=(0.5, 1.0), short_sides=(320,))
    with pytest.raises(ValueError, match="give short_sides with it"):
        TTAConfig(max_size=1000)


def test_windows_stitch_mask_classification_scores(model, processor, image):
    predictor = SegmentationPredictor(model, processor)
    whole = predictor.predict_probabilities(image)
    # A window as large as the input is one pass over the whole input.
    torch.testing.assert_close(predictor.predict_probabilities(image, TTAConfig(window=(256, 256))), whole)
    windowed = predictor.predict_probabilities(image, TTAConfig(window=(40, 48)))
    assert windowed.shape == whole.shape and torch.isfinite(windowed).all() and not torch.allclose(windowed, whole)


def test_grayscale_rgba_and_tiny_images(model, processor, image):
    predictor = SegmentationPredictor(model, processor)
    rgb = Image.fromarray(image)
    gray = predictor.predict(rgb.convert("L"))
    np.testing.assert_array_equal(gray, predictor.predict(rgb.convert("L").convert("RGB")))
    np.testing.assert_array_equal(predictor.predict(rgb.convert("RGBA")), predictor.predict(rgb))
    for labels in (gray, predictor.predict(np.zeros((3, 5, 3), dtype=np.uint8))):
        assert labels.min() >= 0 and labels.max() < NUM_LABELS
    assert gray.shape == (45, 61)
    # Without a resize the model sees the 3 x 5 pixels themselves (padded to 32 x 32 inside).
    tiny = SegmentationPredictor(model, MaskFormerFaPNImageProcessor(do_resize=False))
    assert tiny.predict(np.full((3, 5, 3), 200, dtype=np.uint8), TTAConfig(flip=True)).shape == (3, 5)


def test_from_pretrained_without_an_onnx_file_uses_pytorch(model, processor, tmp_path):
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    predictor = SegmentationPredictor.from_pretrained(str(tmp_path), device="cpu", backend="auto")
    assert isinstance(predictor.model, MaskFormerFaPNForInstanceSegmentation) and predictor.scores_are_probabilities
    assert predictor.id2label == dict(enumerate(LABELS))
    image = np.random.default_rng(1).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    np.testing.assert_array_equal(predictor.predict(image), SegmentationPredictor(model, processor).predict(image))
    with pytest.raises(FileNotFoundError, match="has no model.onnx; export it with `fapn-export-onnx"):
        SegmentationPredictor.from_pretrained(str(tmp_path), backend="onnxruntime")


@pytest.mark.slow
def test_onnx_export_gives_the_same_outputs_and_predictions(model, processor, image, tmp_path):
    """`fapn-export-onnx` on a MaskFormer + FaPN folder: the graph's class and mask logits equal PyTorch's at a size
    the model pads, and the predictor on onnxruntime (what backend="auto" picks for the folder now) gives the
    PyTorch predictor's scores with the original multi-scale + flip test."""
    from fapn_hf.export.onnx import OnnxRuntimeModel

    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert cli.export_onnx_main([str(tmp_path)]) == 0  # verified by onnxruntime at two sizes on the way
    onnx_model = OnnxRuntimeModel(tmp_path)
    pixel_values = resized_input(processor, image)  # 64 x 87: padded to 64 x 96 inside
    with torch.no_grad():
        expected = model(pixel_values=pixel_values)
    actual = onnx_model(pixel_values=pixel_values)
    assert type(actual) is type(expected)
    for name in ("class_queries_logits", "masks_queries_logits"):
        torch.testing.assert_close(getattr(actual, name), getattr(expected, name), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(actual.pixel_mask, expected.pixel_mask)

    onnx_predictor = SegmentationPredictor.from_pretrained(str(tmp_path), backend="auto")
    assert isinstance(onnx_predictor.model, OnnxRuntimeModel) and onnx_predictor.scores_are_probabilities
    torch_predictor = SegmentationPredictor(model, processor)
    tta = TTAConfig(short_sides=(48, 64, 80), max_size=160, flip=True)
    torch.testing.assert_close(
        onnx_predictor.predict_probabilities(image, tta), torch_predictor.predict_probabilities(image, tta),
        atol=1e-4, rtol=1e-4,
    )  # fmt: skip
    agreement = (onnx_predictor.predict(image, tta) == torch_predictor.predict(image, tta)).mean()
    assert agreement > 0.999, agreement


# --------------------------------------------------------------------------------------------- targets


def brute_force_targets(label_map: np.ndarray, ignore_index: int) -> tuple[list[np.ndarray], list[int]]:
    """One mask per class id present (other than the ignore index), pixel by pixel."""
    present = sorted({int(v) for v in label_map.flat if v != ignore_index})
    masks = []
    for class_id in present:
        mask = np.zeros(label_map.shape, dtype=np.float32)
        for y in range(label_map.shape[0]):
            for x in range(label_map.shape[1]):
                mask[y, x] = 1.0 if label_map[y, x] == class_id else 0.0
        masks.append(mask)
    return masks, present


def test_targets_match_a_pixel_by_pixel_construction():
    rng = np.random.default_rng(0)
    labels = rng.choice([0, 2, 3, 4, 255], size=(3, 7, 9))
    labels[1][labels[1] == 3] = 255  # a class missing from one image
    mask_labels, class_labels = semantic_to_mask_targets(torch.from_numpy(labels), ignore_index=255, num_labels=5)
    for label_map, masks, classes in zip(labels, mask_labels, class_labels):
        expected_masks, expected_classes = brute_force_targets(label_map, 255)
        assert classes.dtype == torch.int64 and classes.tolist() == expected_classes
        assert masks.dtype == torch.float32 and masks.shape == (len(expected_classes), 7, 9)
        np.testing.assert_array_equal(masks.numpy(), np.stack(expected_masks))
        # Every labelled pixel is in exactly one mask; ignored pixels are in none.
        np.testing.assert_array_equal(masks.sum(0).numpy(), (label_map != 255).astype(np.float32))
    assert 3 not in class_labels[1].tolist()


def test_targets_of_an_ignored_image_are_empty_and_bad_labels_are_refused():
    masks, classes = semantic_to_mask_targets(
        [torch.full((4, 6), 255), torch.tensor([[1, 255], [255, 1]])], num_labels=2
    )
    assert masks[0].shape == (0, 4, 6) and masks[0].dtype == torch.float32
    assert classes[0].shape == (0,) and classes[0].dtype == torch.int64
    assert classes[1].tolist() == [1] and masks[1].tolist() == [[[1.0, 0.0], [0.0, 1.0]]]
    # Another ignore index: 255 becomes a class, 0 is ignored.
    _, classes = semantic_to_mask_targets(torch.tensor([[[0, 255, 2]]]), num_labels=256, ignore_index=0)
    assert classes[0].tolist() == [2, 255]
    with pytest.raises(
        ValueError,
        match=r"label map 0 contain values \[5\] \(1 pixels\) outside the label map: expected class ids in "
        r"\[0, 5\) or the ignore index 255",
    ):
        semantic_to_mask_targets(torch.tensor([[[0, 5]]]), num_labels=5)
    with pytest.raises(ValueError, match=r"values \[-1\]"):
        semantic_to_mask_targets(torch.tensor([[[-1, 0]]]), num_labels=2)
    with pytest.raises(ValueError, match="integer class ids"):
        semantic_to_mask_targets(torch.zeros(1, 2, 2), num_labels=2)
    with pytest.raises(ValueError, match="must be \\(batch, height, width\\)"):
        semantic_to_mask_targets(torch.zeros(2, 2, dtype=torch.long), num_labels=2)


def test_collator_pads_and_the_model_learns_from_its_targets():
    torch.manual_seed(0)
    samples = [
        {"pixel_values": torch.randn(3, 40, 56), "labels": torch.randint(0, NUM_LABELS, (40, 56))},
        {"pixel_values": torch.randn(3, 32, 48), "labels": torch.full((32, 48), 255)},  # all ignored
    ]
    samples[0]["labels"][:5] = 255
    batch = MaskClassificationCollator(num_labels=NUM_LABELS)(samples)
    assert set(batch) == {"pixel_values", "pixel_mask", "mask_labels", "class_labels"}
    assert batch["pixel_values"].shape == (2, 3, 40, 56) and batch["pixel_values"][1, :, 32:].abs().sum() == 0
    assert batch["pixel_mask"][1].sum() == 32 * 48 and batch["pixel_mask"][0].all()
    assert batch["mask_labels"][1].shape == (0, 40, 56) and batch["class_labels"][1].numel() == 0
    assert batch["mask_labels"][0].shape[1:] == (40, 56) and batch["mask_labels"][0][:, :5].sum() == 0
    with pytest.raises(ValueError, match=r"labels of size \(10, 10\) \(H, W\) for an image of size \(40, 56\)"):
        MaskClassificationCollator(num_labels=2)(
            [{"pixel_values": torch.randn(3, 40, 56), "labels": torch.zeros(10, 10)}]
        )

    model = MaskFormerFaPNForInstanceSegmentation(tiny_maskformer_config())
    randomise_offsets(model)

    def loss() -> torch.Tensor:
        return model(**batch).loss

    model.eval()
    with torch.no_grad():
        before = loss().item()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)  # the original trains with AdamW
    for step in range(5):
        optimizer.zero_grad()
        value = loss()
        assert torch.isfinite(value), step
        value.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = loss().item()
    assert after < before, (before, after)


def test_config_ignore_index_is_outside_the_classes():
    assert tiny_maskformer_config().semantic_loss_ignore_index == 255
    assert tiny_maskformer_config(semantic_loss_ignore_index=-1).semantic_loss_ignore_index == -1
    with pytest.raises(ValueError, match=r"semantic_loss_ignore_index \(3\) is a valid class id for num_labels=5"):
        tiny_maskformer_config(semantic_loss_ignore_index=3)


@pytest.mark.slow
def test_evaluate_and_predict_commands_take_a_maskformer_folder_with_short_side_tta(tmp_path):
    """`fapn-evaluate` / `fapn-predict` on a saved MaskFormer + FaPN folder, with the original's kind of test-time
    augmentation (views by shorter side, flip)."""
    id2label, label2id = label_maps(list(DEMO_LABELS))
    folder = tmp_path / "maskformer"
    config = tiny_maskformer_config(id2label=id2label, label2id=label2id)
    MaskFormerFaPNForInstanceSegmentation(config).save_pretrained(folder)
    MaskFormerFaPNImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}).save_pretrained(folder)
    output = tmp_path / "metrics.json"
    assert cli.evaluate_main([
        "--model", str(folder), "--dataset", "demo", "--max_samples", "2", "--short_sides", "48", "64",
        "--max_size", "128", "--flip", "--output", str(output),
    ]) == 0  # fmt: skip
    metrics = json.loads(output.read_text())
    assert metrics["tta"] == {"scales": [1.0], "flip": True, "window": None, "short_sides": [48, 64], "max_size": 128}
    assert metrics["num_images"] == 2 and 0 <= metrics["mean_iou"] <= 1
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (45, 61, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "predictions"
    assert cli.predict_main(["--model", str(folder), "--short_sides", "48", "--output_dir", str(out), str(photo)]) == 0
    labels = np.array(Image.open(out / "photo_labels.png"))
    assert labels.shape == (45, 61) and labels.max() < len(DEMO_LABELS)
