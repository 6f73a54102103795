"""`FaPNRCNNImageProcessor`: detectron2's test input, COCO annotations in as the model's `labels`, and the three
post-processings against independent computations (per-pixel paste, a re-statement of Panoptic FPN's combination,
boxes mapped by hand). Model outputs are built here in the contract's format (`RCNNOutput`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as coco_mask
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.utils import ModelOutput

from fapn_hf.modeling import image_processing_fapn_rcnn
from fapn_hf.modeling.image_decoding import decode_image
from fapn_hf.modeling.image_processing_fapn_rcnn import (
    DETECTRON2_PIXEL_MEAN_BGR,
    IMAGENET_NORMALISATION,
    FaPNRCNNImageProcessor,
    combine_panoptic,
    paste_masks,
)
from fapn_hf.modeling.remote_code import KERNEL_MODULES
from fapn_hf.modeling.shortest_edge_resize import resize_label_map


@dataclass
class RCNNOutput(ModelOutput):
    """The contract's `FaPNRCNNOutput` fields that post-processing reads."""

    pred_boxes: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    pred_labels: torch.Tensor | None = None
    num_detections: torch.Tensor | None = None
    pred_masks: torch.Tensor | None = None
    semantic_logits: torch.Tensor | None = None
    image_sizes: torch.Tensor | None = None


def rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def pil_resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.array(PIL.Image.fromarray(array).resize((size[1], size[0]), PIL.Image.BILINEAR))


# ---------------------------------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------------------------------


def test_pixels_are_detectron2s_input_padded_with_zeros():
    processor = FaPNRCNNImageProcessor(size={"shortest_edge": 40, "longest_edge": 70})
    images = [rgb(30, 45, 1), rgb(50, 20, 2)]
    batch = processor(images, return_tensors="pt")
    sizes = [(40, 60), (70, 28)]  # 60 = 45 * 40 / 30; 50 x 20 capped: 70 x 28
    assert batch["image_sizes"].tolist() == [list(s) for s in sizes] and batch["image_sizes"].dtype == torch.long
    assert batch["pixel_values"].shape == (2, 3, 70, 60) and batch["pixel_values"].dtype == torch.float32
    mean = torch.tensor(DETECTRON2_PIXEL_MEAN_BGR)[:, None, None]
    for image, size, values in zip(images, sizes, batch["pixel_values"]):
        bgr = torch.from_numpy(pil_resize(image, size)[:, :, ::-1].copy()).permute(2, 0, 1).float()
        assert torch.equal(values[:, : size[0], : size[1]], bgr - mean)
        assert values[:, size[0] :].abs().sum() == 0 and values[:, :, size[1] :].abs().sum() == 0


def test_imagenet_settings_for_timm_backbones():
    processor = FaPNRCNNImageProcessor(size={"shortest_edge": 16, "longest_edge": 100}, **IMAGENET_NORMALISATION)
    image = rgb(8, 12)
    values = processor(image, return_tensors="pt")["pixel_values"][0]
    expected = torch.from_numpy(pil_resize(image, (16, 24))).permute(2, 0, 1).float() / 255
    expected = (expected - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[
        :, None, None
    ]
    torch.testing.assert_close(values, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "image, size",
    [
        (np.full((20, 30), 7, dtype=np.uint8), (40, 60)),  # grayscale
        (np.random.default_rng(0).integers(0, 256, (20, 30, 4), dtype=np.uint8), (40, 60)),  # RGBA over white
        (np.random.default_rng(0).integers(0, 65536, (20, 30), dtype=np.uint16), (40, 60)),  # 16-bit
        (np.full((1, 1, 3), 200, dtype=np.uint8), (40, 40)),  # tiny
        (np.zeros((2, 3000, 3), dtype=np.uint8), (1, 1333)),  # huge and thin: 0.89 rows kept at one
    ],
    ids=["gray", "rgba", "uint16", "1x1", "2x3000"],
)
def test_odd_images_are_decoded_by_the_kernels_rule(image, size):
    processor = FaPNRCNNImageProcessor(size={"shortest_edge": 40, "longest_edge": 1333})
    batch = processor(image, return_tensors="pt")
    assert batch["image_sizes"].tolist() == [list(size)]
    decoded = decode_image(image)
    expected = torch.from_numpy(pil_resize(decoded, size)[:, :, ::-1].copy()).permute(2, 0, 1).float()
    assert torch.equal(batch["pixel_values"][0], expected - torch.tensor(DETECTRON2_PIXEL_MEAN_BGR)[:, None, None])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="channel_order must be 'RGB' or 'BGR', got 'rgb'"):
        FaPNRCNNImageProcessor(channel_order="rgb")
    with pytest.raises(ValueError, match="meta_architecture"):
        FaPNRCNNImageProcessor(meta_architecture="retinanet")
    with pytest.raises(ValueError, match="num_thing_labels must be a positive int"):
        FaPNRCNNImageProcessor(num_thing_labels=0)
    with pytest.raises(ValueError, match="shortest_edge"):
        FaPNRCNNImageProcessor(size={"height": 32, "width": 32})
    with pytest.raises(ValueError, match="cannot be stacked with do_pad=False"):
        FaPNRCNNImageProcessor()([rgb(8, 8), rgb(8, 9)], do_pad=False, do_resize=False, return_tensors="pt")


def test_settings_survive_save_and_load(tmp_path):
    FaPNRCNNImageProcessor(num_thing_labels=3, meta_architecture="mask_rcnn", **IMAGENET_NORMALISATION).save_pretrained(
        tmp_path
    )
    loaded = FaPNRCNNImageProcessor.from_pretrained(tmp_path)
    assert (loaded.num_thing_labels, loaded.meta_architecture, loaded.channel_order) == (3, "mask_rcnn", "RGB")
    assert loaded.do_rescale and tuple(loaded.image_std) == (0.229, 0.224, 0.225)


def test_shipped_file_imports_only_the_kernel():
    path = Path(image_processing_fapn_rcnn.__file__)
    imported = {Path(file).stem for file in get_relative_import_files(str(path))}
    assert imported <= set(KERNEL_MODULES) and "shortest_edge_resize" in imported


# ---------------------------------------------------------------------------------------------------------------------
# Annotations
# ---------------------------------------------------------------------------------------------------------------------


def test_annotations_round_trip_boxes_classes_crowd_and_every_mask_form():
    height, width = 30, 45
    blob = np.zeros((height, width), dtype=np.uint8)
    blob[3:17, 20:41] = 1
    blob[10:12, 5:9] = 1
    rle = coco_mask.encode(np.asfortranarray(blob))
    rle["counts"] = rle["counts"].decode()  # as COCO JSON holds it
    annotations = {
        "image_id": 7,
        "annotations": [
            {
                "bbox": [10, 5, 20, 15],
                "category_id": 2,
                "iscrowd": 0,
                "area": 300,
                "segmentation": [[10, 5, 30, 5, 30, 20, 10, 20]],
            },
            {"bbox": [5, 3, 36, 14], "category_id": 0, "iscrowd": 1, "segmentation": rle},
            {"bbox": [0, 0, 45, 30], "category_id": 1, "segmentation": blob.astype(bool)},
        ],
    }
    processor = FaPNRCNNImageProcessor(size={"shortest_edge": 60, "longest_edge": 1000}, num_thing_labels=3)
    labels = processor(rgb(height, width), annotations=annotations, return_tensors="pt")["labels"][0]
    new_size = (60, 90)
    assert labels["class_labels"].tolist() == [2, 0, 1] and labels["iscrowd"].tolist() == [0, 1, 0]
    back = labels["boxes"] / torch.tensor([90 / 45, 60 / 30] * 2)
    torch.testing.assert_close(back, torch.tensor([[10.0, 5, 30, 20], [5, 3, 41, 17], [0, 0, 45, 30]]))
    assert labels["masks"].shape == (3, *new_size) and labels["masks"].dtype == torch.uint8
    # polygon: scaled, then rasterised at the new size by pycocotools (detectron2 keeps polygons)
    scaled = [[20.0, 10.0, 60.0, 10.0, 60.0, 40.0, 20.0, 40.0]]
    expected = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(scaled, *new_size)))
    assert torch.equal(labels["masks"][0], torch.from_numpy(expected))
    assert labels["masks"][0][10:40, 20:60].all() and labels["masks"][0].sum() == 30 * 40
    # RLE and array: decoded at the image's size, resized by nearest neighbour
    nearest = resize_label_map(torch.from_numpy(blob), new_size)
    assert torch.equal(labels["masks"][1], nearest) and torch.equal(labels["masks"][2], nearest)
    # an (N, H, W) array per image; an image without objects; segmentation maps
    stacked = {"annotations": annotations["annotations"][2:], "masks": blob[None]}
    batch = processor(
        [rgb(height, width), rgb(height, width)],
        annotations=[stacked, {"annotations": []}],
        segmentation_maps=[blob * 3, np.full((height, width), 255)],
        return_tensors="pt",
    )
    assert torch.equal(batch["labels"][0]["masks"][0], nearest)
    assert batch["labels"][1]["boxes"].shape == (0, 4) and batch["labels"][1]["masks"].shape == (0, *new_size)
    assert torch.equal(batch["labels"][0]["semantic_labels"], nearest.long() * 3)
    assert (batch["labels"][1]["semantic_labels"] == 255).all()


def test_boxes_within_a_pixel_of_the_border_are_clipped():
    annotations = {"annotations": [{"bbox": [-0.5, 0, 20.6, 10.4], "category_id": 0}]}
    processor = FaPNRCNNImageProcessor(do_resize=False)
    labels = processor(rgb(10, 20), annotations=annotations, return_tensors="pt")["labels"][0]
    assert labels["boxes"].tolist() == [[0.0, 0.0, 20.0, 10.0]] and "masks" not in labels


@pytest.mark.parametrize(
    "objects, message",
    [
        (
            [{"bbox": [1, 1, -2, 3], "category_id": 0}],
            r"image 0 \(image_id 5\), annotation 0 \(id 9\): 'bbox' .* negative",
        ),
        ([{"bbox": [1, 1, float("nan"), 3], "category_id": 0}], "annotation 0 .*NaN"),
        ([{"bbox": [15, 1, 10, 3], "category_id": 0}], "annotation 0 .*outside its image of 20x10"),
        ([{"bbox": [1, 1, 3], "category_id": 0}], r"'bbox' must be \[x, y, width, height\]"),
        (
            [{"bbox": [1, 1, 2, 2], "category_id": 0}, {"bbox": [1, 1, 2, 2], "category_id": 3}],
            r"annotation 1 .*3 is out of range.*\[0, 3\)",
        ),
        ([{"bbox": [1, 1, 2, 2], "category_id": -1}], "out of range"),
        ([{"bbox": [1, 1, 2, 2], "category_id": "cat"}], "'category_id' must be an int"),
        ([{"bbox": [1, 1, 2, 2], "category_id": 0, "iscrowd": 2}], "'iscrowd' must be 0 or 1"),
        (
            [{"bbox": [1, 1, 2, 2], "category_id": 0, "segmentation": np.zeros((5, 5))}],
            "its mask is 5x5 .* image is 10x20",
        ),
        ([{"bbox": [1, 1, 2, 2], "category_id": 0, "segmentation": [[1, 2, 3]]}], "a polygon is a flat list"),
        ([{"bbox": [1, 1, 2, 2], "category_id": 0, "segmentation": {"counts": "x"}}], "'size'"),
        (
            [
                {"bbox": [1, 1, 2, 2], "category_id": 0, "segmentation": [[1, 1, 3, 1, 3, 3]]},
                {"bbox": [1, 1, 2, 2], "category_id": 0},
            ],
            "annotation 1 .*has no 'segmentation'",
        ),
    ],
)
def test_bad_annotations_name_the_image_and_the_annotation(objects, message):
    processor = FaPNRCNNImageProcessor(num_thing_labels=3)
    annotations = {"image_id": 5, "annotations": [dict(obj, id=9 + i) for i, obj in enumerate(objects)]}
    with pytest.raises(ValueError, match=message):
        processor(rgb(10, 20), annotations=annotations)


def test_bad_annotation_containers_are_refused():
    processor = FaPNRCNNImageProcessor()
    with pytest.raises(ValueError, match="got 2 images but 1 annotation dicts"):
        processor([rgb(10, 20), rgb(10, 20)], annotations=[{"annotations": []}])
    with pytest.raises(ValueError, match="must be a dict with an 'annotations' list"):
        processor(rgb(10, 20), annotations=[{"boxes": []}])
    with pytest.raises(ValueError, match=r"'masks' must be \(1, 10, 20\)"):
        processor(
            rgb(10, 20),
            annotations={"annotations": [{"bbox": [1, 1, 2, 2], "category_id": 0}], "masks": np.zeros((2, 10, 20))},
        )


# ---------------------------------------------------------------------------------------------------------------------
# Post-processing
# ---------------------------------------------------------------------------------------------------------------------


def brute_force_paste(mask: np.ndarray, box: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Per pixel: its centre in the box frame (M cells over the box), the bilinear value of the zero-padded mask."""
    m = mask.shape[0]
    x0, y0, x1, y1 = box.astype(np.float64)
    out = np.zeros(size)
    for i in range(size[0]):
        for j in range(size[1]):
            u = (j + 0.5 - x0) / (x1 - x0) * m - 0.5
            v = (i + 0.5 - y0) / (y1 - y0) * m - 0.5
            total = 0.0
            for r in (math.floor(v), math.floor(v) + 1):
                for c in (math.floor(u), math.floor(u) + 1):
                    if 0 <= r < m and 0 <= c < m:
                        total += (1 - abs(v - r)) * (1 - abs(u - c)) * mask[r, c]
            out[i, j] = total
    return out


def test_paste_equals_bilinear_sampling_at_pixel_centres():
    generator = torch.Generator().manual_seed(0)
    size = (37, 52)
    masks = torch.rand(6, 7, 7, generator=generator)
    masks[0] = 1.0
    boxes = torch.tensor(
        [[10.0, 5.0, 30.0, 25.0], [0.3, 0.7, 51.9, 36.2], [40.2, 30.1, 58.0, 44.0], [3.5, 3.5, 4.5, 6.0],
         [-2.0, -3.0, 8.3, 9.9], [20.0, 10.0, 20.4, 30.0]]
    )  # fmt: skip
    pasted = paste_masks(masks, boxes, size)
    soft = paste_masks(masks, boxes, size, threshold=-1)
    assert pasted.dtype == torch.bool and pasted.shape == (6, *size)
    for index in range(6):
        expected = brute_force_paste(masks[index].double().numpy(), boxes[index].numpy(), size)
        clear = np.abs(expected - 0.5) > 1e-5
        assert np.array_equal(pasted[index].numpy()[clear], (expected >= 0.5)[clear]), index
        near = np.abs(expected) > 0
        # soft values: the same inside the widened box (detectron2's CPU region), 0 elsewhere
        region = soft[index].double().numpy()
        assert np.allclose(region[region > 0], expected[region > 0], atol=1e-5) and (region[~near] == 0).all()
    # the full mask: its box's pixels but the 4 corners (0.675^2 < 0.5 there: bilinear weight on the zero padding)
    full = torch.zeros(size, dtype=torch.bool)
    full[5:25, 10:30] = True
    full[[5, 5, 24, 24], [10, 29, 10, 29]] = False
    assert torch.equal(pasted[0], full)


def detections(batch: int = 2, k: int = 5, m: int = 6, seed: int = 0) -> RCNNOutput:
    generator = torch.Generator().manual_seed(seed)
    boxes = torch.tensor(
        [[[2.0, 3.0, 30.0, 20.0], [10.0, 8.0, 50.0, 38.0], [38.0, 1.0, 60.0, 12.0], [0.0, 0.0, 0.0, 0.0],
          [0.0, 0.0, 0.0, 0.0]],
         [[0.0, 0.0, 20.0, 20.0], [5.0, 5.0, 25.0, 35.0], [1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0],
          [0.0, 0.0, 0.0, 0.0]]]
    )[:batch]  # fmt: skip
    return RCNNOutput(
        pred_boxes=boxes,
        scores=torch.tensor([[0.95, 0.7, 0.3, 0.0, 0.0], [0.9, 0.6, 0.55, 0.0, 0.0]])[:batch],
        pred_labels=torch.tensor([[1, 0, 2, -1, -1], [2, 2, 0, -1, -1]])[:batch],
        num_detections=torch.tensor([3, 3])[:batch],
        pred_masks=torch.rand(batch, k, m, m, generator=generator),
        image_sizes=torch.tensor([[40, 60], [40, 30]])[:batch],
    )


def test_object_detection_maps_boxes_to_target_sizes_clips_and_thresholds():
    outputs = detections()
    outputs.pred_boxes[0, 2] = torch.tensor([58.0, 1.0, 70.0, 12.0])  # leaves the image: clipped to 58..60
    outputs.pred_boxes[1, 2] = torch.tensor([31.0, 2.0, 35.0, 4.0])  # wholly right of a 30-wide image: dropped
    processor = FaPNRCNNImageProcessor()
    results = processor.post_process_object_detection(outputs, threshold=0.5, target_sizes=[(80, 90), (20, 15)])
    first, second = results
    assert first["scores"].tolist() == pytest.approx([0.95, 0.7]) and first["labels"].tolist() == [1, 0]
    torch.testing.assert_close(first["boxes"], torch.tensor([[3.0, 6.0, 45.0, 40.0], [15.0, 16.0, 75.0, 76.0]]))
    assert second["labels"].tolist() == [2, 2] and second["scores"].tolist() == pytest.approx([0.9, 0.6])
    torch.testing.assert_close(second["boxes"], torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.5, 2.5, 12.5, 17.5]]))
    low = processor.post_process_object_detection(
        outputs, threshold=0.0, target_sizes=torch.tensor([[40, 60], [40, 30]])
    )
    torch.testing.assert_close(low[0]["boxes"][2], torch.tensor([58.0, 1.0, 60.0, 12.0]))
    assert len(low[1]["boxes"]) == 2  # the box outside the image is gone, the padding never counted
    # no target sizes: the processed image's pixels
    same = processor.post_process_object_detection(outputs, threshold=0.0)
    torch.testing.assert_close(same[0]["boxes"], low[0]["boxes"])
    with pytest.raises(ValueError, match="one .height, width. per image"):
        processor.post_process_object_detection(outputs, target_sizes=[(80, 90)])
    with pytest.raises(ValueError, match="return_dict=False"):
        processor.post_process_object_detection(outputs.to_tuple())


def test_instance_segmentation_pastes_at_the_target_size_in_the_pipelines_format():
    outputs = detections()
    processor = FaPNRCNNImageProcessor()
    # as the image-segmentation pipeline calls it
    results = processor.post_process_instance_segmentation(
        outputs, threshold=0.5, mask_threshold=0.5, overlap_mask_area_threshold=0.5, target_sizes=[(80, 120), (40, 30)]
    )
    binary = processor.post_process_instance_segmentation(
        outputs, threshold=0.5, target_sizes=[(80, 120), (40, 30)], return_binary_maps=True
    )
    first = results[0]
    assert first["segmentation"].shape == (80, 120) and first["segmentation"].dtype == torch.int32
    assert [s["label_id"] for s in first["segments_info"]] == [1, 0] and [s["id"] for s in first["segments_info"]] == [
        0,
        1,
    ]
    assert first["segments_info"][0]["score"] == pytest.approx(0.95) and not first["segments_info"][0]["was_fused"]
    boxes = outputs.pred_boxes[0, :2] * 2
    expected = paste_masks(outputs.pred_masks[0, :2], boxes, (80, 120))
    assert torch.equal(binary[0]["segmentation"], expected)
    painted = torch.full((80, 120), -1, dtype=torch.int32)
    painted[expected[1]] = 1
    painted[expected[0]] = 0  # the higher score on top
    assert torch.equal(first["segmentation"], painted)
    assert len(results[1]["segments_info"]) == 3
    assert results[1]["segmentation"].shape == (40, 30)


def test_post_processing_offered_follows_the_architecture():
    assert not hasattr(FaPNRCNNImageProcessor(meta_architecture="faster_rcnn"), "post_process_instance_segmentation")
    assert not hasattr(FaPNRCNNImageProcessor(meta_architecture="mask_rcnn"), "post_process_panoptic_segmentation")
    mask_rcnn = FaPNRCNNImageProcessor(meta_architecture="mask_rcnn")
    assert hasattr(mask_rcnn, "post_process_instance_segmentation")
    panoptic = FaPNRCNNImageProcessor(meta_architecture="panoptic_fpn")
    assert hasattr(panoptic, "post_process_panoptic_segmentation") and hasattr(
        panoptic, "post_process_object_detection"
    )
    with pytest.raises(ValueError, match="needs the model output's `pred_masks`"):
        mask_rcnn.post_process_instance_segmentation(RCNNOutput(**{**detections().__dict__, "pred_masks": None}))
    with pytest.raises(ValueError, match="num_thing_labels"):
        with_semantic = detections()
        with_semantic.semantic_logits = torch.zeros(2, 3, 10, 15)
        panoptic.post_process_panoptic_segmentation(with_semantic)
    with pytest.raises(ValueError, match="needs the model output's `semantic_logits`"):
        FaPNRCNNImageProcessor(num_thing_labels=2).post_process_panoptic_segmentation(detections())


def brute_force_panoptic(masks, scores, labels, classes, num_things, area_limit):
    """The rules, restated on NumPy: instances by score (>= 0.5), skipped above half overlap, free pixels painted;
    then stuff classes (never channel 0) with at least `area_limit` free pixels."""
    masks, classes = masks.numpy(), classes.numpy()
    seg = np.zeros(classes.shape, dtype=np.int64)
    info = []
    for index in sorted(range(len(scores)), key=lambda i: -float(scores[i])):
        if float(scores[index]) < 0.5:
            continue
        own = masks[index]
        if own.sum() == 0 or (own & (seg != 0)).sum() > 0.5 * own.sum():
            continue
        seg[own & (seg == 0)] = len(info) + 1
        info.append(("thing", int(labels[index])))
    for channel in sorted(set(classes.ravel().tolist()) - {0}):
        free = (classes == channel) & (seg == 0)
        if free.sum() >= area_limit:
            seg[free] = len(info) + 1
            info.append(("stuff", num_things + channel - 1))
    return seg, info


@pytest.mark.parametrize("seed", range(4))
def test_panoptic_combination_follows_detectron2s_rules(seed):
    generator = torch.Generator().manual_seed(seed)
    size = (24, 32)
    n = 7
    corners = torch.randint(0, 20, (n, 2), generator=generator)
    masks = torch.zeros(n, *size, dtype=torch.bool)
    for i, (y, x) in enumerate(corners.tolist()):
        masks[i, y : y + 4 + i, x : x + 6 + i] = True
    masks[3] = masks[1] | masks[2]  # mostly taken by two better instances when they win
    scores = torch.rand(n, generator=generator) * 0.6 + 0.3
    labels = torch.randint(0, 4, (n,), generator=generator)
    logits = torch.randn(4, *size, generator=generator)
    logits[2, :, :5] += 10  # a stuff region of 24 x 5 = 120 pixels (channel 2)
    segmentation, segments = combine_panoptic(masks, scores, labels, logits, num_thing_labels=4, stuff_area_limit=60)
    seg, info = brute_force_panoptic(masks, scores, labels, logits.argmax(0), 4, 60)
    assert np.array_equal(segmentation.numpy(), seg)
    assert [s["label_id"] for s in segments] == [label for _, label in info]
    assert [s["id"] for s in segments] == list(range(1, len(info) + 1))


def test_panoptic_post_processing_reads_the_semantic_head_as_detectron2():
    outputs = detections()
    outputs.scores[0] = torch.tensor([0.95, 0.45, 0.3, 0.0, 0.0])  # one instance over 0.5
    # logits at stride 4 of a padded 48 x 64 input; image 0 is 40 x 60 inside it
    generator = torch.Generator().manual_seed(3)
    outputs.semantic_logits = torch.randn(2, 3, 12, 16, generator=generator)
    outputs.semantic_logits[0, 1, :, :8] += 20  # stuff channel 1 on the left half, channel 2 elsewhere
    outputs.semantic_logits[0, 2, :, 8:] += 20
    processor = FaPNRCNNImageProcessor(num_thing_labels=5, meta_architecture="panoptic_fpn")
    result = processor.post_process_panoptic_segmentation(
        outputs, target_sizes=[(80, 120), (40, 30)], stuff_area_limit=100
    )[0]
    up = F.interpolate(outputs.semantic_logits[:1], size=(48, 64), mode="bilinear", align_corners=False)[..., :40, :60]
    classes = F.interpolate(up, size=(80, 120), mode="bilinear", align_corners=False)[0].argmax(0)
    masks = paste_masks(outputs.pred_masks[0, :1], outputs.pred_boxes[0, :1] * 2, (80, 120))
    seg, info = brute_force_panoptic(masks, outputs.scores[0, :1], outputs.pred_labels[0, :1], classes, 5, 100)
    assert np.array_equal(result["segmentation"].numpy(), seg)
    assert [s["label_id"] for s in result["segments_info"]] == [1, 5, 6] == [label for _, label in info]
    stuff = result["segments_info"][1]
    assert 0.99 < stuff["score"] <= 1.0 and set(stuff) == {"id", "label_id", "was_fused", "score"}
    # the pipeline's call: its default threshold 0.9 keeps the instance, 0.99 drops it
    strict = processor.post_process_panoptic_segmentation(
        outputs, threshold=0.99, mask_threshold=0.5, overlap_mask_area_threshold=0.5, target_sizes=[(80, 120), (40, 30)]
    )[0]
    assert [s["label_id"] for s in strict["segments_info"]] == [5, 6]
