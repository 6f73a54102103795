"""The detection tasks' data: COCO instances and panoptic folders and `datasets` sources (made small in tmp_path),
the bad-sample policy, the Trainer-facing dataset and collator, and the training augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Sequence, Value
from datasets import Image as ImageFeature
from PIL import Image
from torchvision import tv_tensors

from fapn_hf.tasks.detection.data import (
    DataError,
    DetectionCollator,
    DetectionDataset,
    DetectionLabelSpec,
    MinimalDetectionProcessor,
    check_samples,
    coco_label_names,
    dataset_label_names,
    decode_sample,
    label_settings,
    load_detection_dataset,
)
from fapn_hf.tasks.detection.demo_data import encode_segment_ids
from fapn_hf.tasks.detection.transforms import TrainAugmentation

H, W = 40, 60
CATEGORIES = [{"id": 9, "name": "zebra"}, {"id": 1, "name": "person"}, {"id": 5, "name": "bus"}]


def _image(path, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)


def _coco_instances(root, bad: bool = False):
    """val2017 with 3 images: polygons, an uncompressed RLE (crowd), and (with `bad`) a missing file, a box outside
    the image, a negative size and an unknown category."""
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    images = [{"id": 10 + i, "file_name": f"{i}.png", "height": H, "width": W} for i in range(3)]
    for i in range(3):
        _image(root / "val2017" / f"{i}.png", i)
    crowd = np.zeros((H, W), np.uint8)
    crowd[20:30, 30:50] = 1
    # Uncompressed RLE (column-major run lengths), as COCO stores crowd regions.
    flat = crowd.flatten(order="F")
    runs, value, length = [], 0, 0
    for pixel in flat:
        if pixel == value:
            length += 1
        else:
            runs.append(length)
            value, length = pixel, 1
    runs.append(length)
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 1, "bbox": [2, 3, 10, 8], "area": 80, "iscrowd": 0,
         "segmentation": [[2, 3, 12, 3, 12, 11, 2, 11]]},
        {"id": 2, "image_id": 10, "category_id": 9, "bbox": [30, 20, 20, 10], "area": 200, "iscrowd": 1,
         "segmentation": {"size": [H, W], "counts": runs}},
        {"id": 3, "image_id": 11, "category_id": 5, "bbox": [0, 0, 60, 40], "area": 2400, "iscrowd": 0,
         "segmentation": [[0, 0, 60, 0, 60, 40, 0, 40]]},
    ]  # fmt: skip
    if bad:
        images.append({"id": 13, "file_name": "missing.png", "height": H, "width": W})
        annotations += [
            {"id": 4, "image_id": 12, "category_id": 1, "bbox": [50, 30, 20, 20], "area": 1, "iscrowd": 0},
            {"id": 5, "image_id": 11, "category_id": 1, "bbox": [5, 5, -3, 4], "area": 1, "iscrowd": 0},
            {"id": 6, "image_id": 11, "category_id": 77, "bbox": [5, 5, 3, 4], "area": 1, "iscrowd": 0},
        ]
    data = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return root


def test_coco_instances_folder_maps_categories_and_decodes_masks(tmp_path):
    root = _coco_instances(tmp_path / "coco")
    names, things = coco_label_names(root / "annotations" / "instances_val2017.json")
    assert names == ["person", "bus", "zebra"] and things == 3  # sorted by COCO id: 1, 5, 9
    assert label_settings(str(root), None).labels == "person,bus,zebra"
    with pytest.raises(ValueError, match="2 classes but"):
        label_settings(str(root), "a,b")
    splits = load_detection_dataset(str(root), train_split=None, validation_split="validation")
    validation = splits["validation"]
    assert len(validation) == 3
    spec = DetectionLabelSpec(3, masks=True)
    sample = decode_sample(validation[0], 0, spec)
    assert sample.class_labels.tolist() == [0, 2] and sample.iscrowd.tolist() == [False, True]
    assert np.allclose(sample.boxes, [[2, 3, 12, 11], [30, 20, 50, 30]])
    assert sample.masks.shape == (2, H, W)
    assert sample.masks[1].sum() == 200 and sample.masks[1][20:30, 30:50].all()  # the uncompressed RLE
    assert sample.masks[0][4:10, 3:11].all() and not sample.masks[0][20:, :].any()  # the polygon
    assert len(decode_sample(validation[2], 2, spec).class_labels) == 0  # an image without objects
    with pytest.raises(ValueError, match=r"\(splits \['val2017'\]\) has no split 'train'"):
        load_detection_dataset(str(root), train_split="train")


def test_bad_samples_are_reported_with_their_files_or_skipped(tmp_path):
    root = _coco_instances(tmp_path / "coco", bad=True)
    validation = load_detection_dataset(str(root), train_split=None, validation_split="val2017")["validation"]
    spec = DetectionLabelSpec(3, masks=True)
    with pytest.raises(DataError) as raised:
        check_samples(validation, spec, "fail", "validation")
    message = str(raised.value)
    assert "3 of 4 validation samples" in message
    assert "missing.png" in message and "image file not found" in message
    assert "negative size" in message and "unknown category_id 77" in message
    assert "2.png: annotation 4: box [x, y, w, h] = [50.0, 30.0, 20.0, 20.0] lies outside the 60x40" in message
    kept, report = check_samples(validation, spec, "skip", "validation")
    assert len(kept) == 1 and kept[0]["image_id"] == 10 and report.num_skipped == 3 and report.decoded_samples == 1


def _coco_panoptic(root):
    (root / "annotations" / "panoptic_val2017").mkdir(parents=True)
    (root / "val2017").mkdir()
    _image(root / "val2017" / "0.jpg", 0)
    ids = np.zeros((H, W), np.int64)
    ids[:, :] = 300  # stuff "sky" (category 100)
    ids[5:15, 5:25] = 70000  # thing "car" (category 3)
    ids[20:30, 30:40] = 2  # crowd "person" (category 1)
    ids[35:, :] = 0  # void
    Image.fromarray(encode_segment_ids(ids)).save(root / "annotations" / "panoptic_val2017" / "0.png")
    segments = [
        {"id": 300, "category_id": 100, "iscrowd": 0, "bbox": [0, 0, 60, 35], "area": int((ids == 300).sum())},
        {"id": 70000, "category_id": 3, "iscrowd": 0, "bbox": [5, 5, 20, 10], "area": 200},
        {"id": 2, "category_id": 1, "iscrowd": 1, "bbox": [30, 20, 10, 10], "area": 100},
    ]
    data = {
        "images": [{"id": 1, "file_name": "0.jpg", "height": H, "width": W}],
        "annotations": [{"image_id": 1, "file_name": "0.png", "segments_info": segments}],
        "categories": [
            {"id": 100, "name": "sky", "isthing": 0},
            {"id": 3, "name": "car", "isthing": 1},
            {"id": 1, "name": "person", "isthing": 1},
            {"id": 50, "name": "road", "isthing": 0},
        ],
    }
    (root / "annotations" / "panoptic_val2017.json").write_text(json.dumps(data))
    return root, ids


def test_coco_panoptic_folder_gives_things_first_and_the_semantic_target(tmp_path):
    root, ids = _coco_panoptic(tmp_path / "coco")
    settings = label_settings(str(root), None, kind="panoptic")
    assert settings.labels == "person,car,road,sky" and settings.num_thing_labels == 2
    validation = load_detection_dataset(str(root), kind="panoptic", train_split=None)["validation"]
    spec = DetectionLabelSpec(4, 2, panoptic=True)
    sample = decode_sample(validation[0], 0, spec)
    assert np.array_equal(sample.segment_ids, ids)
    assert sample.class_labels.tolist() == [1, 0] and sample.iscrowd.tolist() == [False, True]
    assert np.array_equal(sample.masks[0], ids == 70000) and np.array_equal(sample.masks[1], ids == 2)
    semantic = sample.semantic_labels(spec)
    # Things (crowd too) -> channel 0; stuff "sky" (contiguous 3 = num_things + 1) -> channel 2; void -> 255.
    assert (semantic[ids == 70000] == 0).all() and (semantic[ids == 2] == 0).all()
    assert (semantic[ids == 300] == 2).all() and (semantic[ids == 0] == 255).all()
    item = DetectionDataset(validation, spec, None, MinimalDetectionProcessor(80, 200), random=False)[0]
    assert item["labels"]["semantic_labels"].shape == (80, 120)  # 40x60 -> shorter side 80
    assert item["target"]["segments_info"][0] == {"id": 300, "category_id": 3, "iscrowd": 0}


def _hf_dataset(mask_size=(H, W)):
    """transformers' object-detection example schema, with per-object masks as images."""
    mask = np.zeros(mask_size, np.uint8)
    mask[3:11, 2:12] = 255
    features = Features(
        {
            "image": ImageFeature(),
            "objects": Sequence(
                {"bbox": Sequence(Value("float32"), length=4), "category": ClassLabel(names=["cat", "dog"]),
                 "area": Value("float32"), "id": Value("int64"), "mask": ImageFeature()}
            ),
        }
    )  # fmt: skip
    image = Image.fromarray(np.full((H, W, 3), 128, np.uint8))
    objects = {"bbox": [[2, 3, 10, 8]], "category": [1], "area": [80.0], "id": [7], "mask": [Image.fromarray(mask)]}
    return Dataset.from_dict({"image": [image, image], "objects": [objects, objects]}, features=features)


def test_datasets_source_in_the_example_schema(tmp_path):
    _hf_dataset().save_to_disk(str(tmp_path / "saved"))
    splits = load_detection_dataset(str(tmp_path / "saved"), train_split="train", validation_split="train")
    assert dataset_label_names(splits["train"]) == ["cat", "dog"]
    sample = decode_sample(splits["train"][0], 0, DetectionLabelSpec(2, masks=True))
    assert sample.class_labels.tolist() == [1] and np.allclose(sample.boxes, [[2, 3, 12, 11]])
    assert sample.masks[0].sum() == 80
    _hf_dataset(mask_size=(20, 30)).save_to_disk(str(tmp_path / "wrong"))
    wrong = load_detection_dataset(str(tmp_path / "wrong"), validation_split="train")["train"]
    with pytest.raises(DataError, match=r"object 0: a 20x30 mask belongs to a 40x60 image"):
        check_samples(wrong, DetectionLabelSpec(2, masks=True), "fail", "train")
    with pytest.raises(DataError, match="categories \\[1\\] are not thing classes 0..0"):
        decode_sample(splits["train"][0], 0, DetectionLabelSpec(1))


def test_dataset_and_collator_follow_the_processor_resize(tmp_path):
    root = _coco_instances(tmp_path / "coco")
    validation = load_detection_dataset(str(root), train_split=None)["validation"]
    dataset = DetectionDataset(
        validation, DetectionLabelSpec(3, masks=True), None, MinimalDetectionProcessor(80, 400), random=False
    )
    item = dataset[0]
    assert item["pixel_values"].shape == (3, 80, 120)
    assert torch.allclose(item["labels"]["boxes"], torch.tensor([[4.0, 6, 24, 22], [60, 40, 100, 60]]))
    assert item["labels"]["masks"].shape == (2, 80, 120) and int(item["labels"]["masks"][1].sum()) == 800
    assert item["target"]["size"] == (H, W) and item["target"]["masks"].shape == (2, H, W)
    small = DetectionDataset(validation, DetectionLabelSpec(3), None, MinimalDetectionProcessor(40, 400), random=False)
    batch = DetectionCollator()([item, small[1]])
    assert batch["pixel_values"].shape == (2, 3, 80, 120) and batch["image_sizes"].tolist() == [[80, 120], [40, 60]]
    assert (batch["pixel_values"][1, :, 40:, :] == 0).all() and (batch["pixel_values"][1, :, :, 60:] == 0).all()
    assert len(batch["labels"]) == 2 and len(batch["targets"]) == 2


def test_training_augmentation_moves_boxes_masks_and_labels_together():
    image = tv_tensors.Image(torch.zeros(3, 40, 60, dtype=torch.uint8))
    mask = torch.zeros(1, 40, 60, dtype=torch.uint8)
    mask[0, 3:11, 2:12] = 1
    target = {
        "boxes": tv_tensors.BoundingBoxes(torch.tensor([[2.0, 3, 12, 11]]), format="XYXY", canvas_size=(40, 60)),
        "class_labels": torch.tensor([1]),
        "masks": tv_tensors.Mask(mask),
        "semantic_labels": tv_tensors.Mask(mask[0].long() * 3),
    }
    augmentation = TrainAugmentation((80, 120), max_size=150, hflip_probability=0.5)
    flips, sizes = set(), set()
    for seed in range(12):
        out_image, out = augmentation(image, dict(target), (0, 0, seed))
        again_image, again = augmentation(image, dict(target), (0, 0, seed))
        assert torch.equal(out["boxes"], again["boxes"]) and out_image.shape == again_image.shape  # seeded
        h, w = out_image.shape[-2:]
        sizes.add((h, w))
        ys, xs = torch.nonzero(out["masks"][0], as_tuple=True)
        mask_box = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        assert torch.allclose(out["boxes"][0].as_subclass(torch.Tensor), mask_box, atol=1.0)
        assert torch.equal(out["semantic_labels"] == 3, out["masks"][0].bool())
        assert out["class_labels"].tolist() == [1]
        flips.add(bool(out["boxes"][0, 0] > w / 2))
    # Shorter side 80 -> 80x120; 120 -> 120x180 capped at 150 -> 100x150 (detectron2's arithmetic).
    assert sizes == {(80, 120), (100, 150)} and flips == {True, False}
    with pytest.raises(ValueError, match="hflip_probability"):
        TrainAugmentation(hflip_probability=2)


def test_task_objects_bind_their_kind():
    from fapn_hf.tasks.detection import INSTANCE_SEGMENTATION, OBJECT_DETECTION, PANOPTIC_SEGMENTATION, TASKS
    from fapn_hf.tasks.detection.metrics import DetectionMetrics, PanopticMetrics

    assert sorted(TASKS) == ["instance-segmentation", "object-detection", "panoptic-segmentation"]
    assert (
        OBJECT_DETECTION.pipeline_tag == "object-detection"
        and PANOPTIC_SEGMENTATION.pipeline_tag == "image-segmentation"
    )
    assert OBJECT_DETECTION.make_metrics(3).iou_types == ("bbox",)
    assert INSTANCE_SEGMENTATION.make_metrics(3).iou_types == ("bbox", "segm")
    assert isinstance(PANOPTIC_SEGMENTATION.make_metrics(5, num_thing_labels=3), PanopticMetrics)
    assert isinstance(INSTANCE_SEGMENTATION.make_metrics(3), DetectionMetrics)
    spec = PANOPTIC_SEGMENTATION.label_spec(5, 255, None, False, num_thing_labels=3)
    assert spec.panoptic and spec.masks and spec.num_stuff_labels == 2
    assert INSTANCE_SEGMENTATION.label_spec(3).masks and not OBJECT_DETECTION.label_spec(3).masks
    assert PANOPTIC_SEGMENTATION.label_settings("demo", None).labels == "disc,square,triangle,sand,water"
    assert OBJECT_DETECTION.label_settings("demo", None).labels == "disc,square,triangle"
    with pytest.raises(ValueError, match="apply to semantic label maps"):
        OBJECT_DETECTION.label_spec(3, 255, "cityscapes", False)
