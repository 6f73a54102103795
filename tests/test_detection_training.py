"""fapn-train and fapn-evaluate for the FaPN detectors (issue 20, items 4-5): the task's scoring of evaluation
batches (post-processed at the original image size), a tiny end-to-end run, and the agreement of the Trainer's
evaluation with `evaluate_detector` on the same images."""

from __future__ import annotations

import json

import pytest
import torch

from fapn_hf.modeling.image_processing_fapn_rcnn import FaPNRCNNImageProcessor
from fapn_hf.modeling.modeling_fapn_rcnn import FaPNRCNNOutput
from fapn_hf.tasks.detection import INSTANCE_SEGMENTATION, OBJECT_DETECTION, score_instances
from fapn_hf.tasks.detection.metrics import DetectionMetrics, PanopticMetrics


def _outputs(boxes: torch.Tensor, labels: torch.Tensor, processed: tuple[int, int]) -> FaPNRCNNOutput:
    """One image's detections (all valid, mask probability 1 over each box) at the processed size."""
    count = len(boxes)
    return FaPNRCNNOutput(
        pred_boxes=boxes[None].float(),
        scores=torch.linspace(0.9, 0.6, count)[None],
        pred_labels=labels[None],
        num_detections=torch.tensor([count]),
        pred_masks=torch.ones(1, count, 28, 28),
        image_sizes=torch.tensor([processed]),
    )


def _target(boxes: torch.Tensor, labels: torch.Tensor, size: tuple[int, int]) -> dict:
    masks = torch.zeros(len(boxes), *size, dtype=torch.bool)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes.long().tolist()):
        mask[y0:y1, x0:x1] = True
    return {"image_id": 0, "size": size, "boxes": boxes.float(), "class_labels": labels, "masks": masks}


def test_scoring_maps_detections_to_the_original_size():
    # Detections at the processed 64x80 image are the ground truth's boxes at the original 128x160 image, halved:
    # scored at the original size they match exactly (AP 1); scored where they were predicted they would not.
    boxes = torch.tensor([[8.0, 8.0, 40.0, 36.0], [44.0, 20.0, 76.0, 60.0]])
    labels = torch.tensor([0, 2])
    target = _target(boxes * 2, labels, (128, 160))
    processor = FaPNRCNNImageProcessor(meta_architecture="mask_rcnn", num_thing_labels=3)
    predictions = score_instances(processor, _outputs(boxes, labels, (64, 80)), [target])
    assert torch.allclose(predictions[0]["boxes"], boxes * 2)
    assert predictions[0]["masks"].shape == (2, 128, 160)
    metrics = INSTANCE_SEGMENTATION.make_metrics(3)
    metrics.update(predictions, [target])
    scores = metrics.compute()
    assert scores["bbox_AP"] == pytest.approx(1.0)
    assert scores["segm_AP"] == pytest.approx(1.0)
    # The same detections at the processed size (no target_sizes mapping) miss the ground truth.
    unscaled = OBJECT_DETECTION.make_metrics(3)
    raw = processor.post_process_object_detection(_outputs(boxes, labels, (64, 80)), threshold=-1.0)
    unscaled.update(raw, [target])
    assert unscaled.compute()["bbox_AP"] < 0.2


def test_metrics_merge_equals_one_pass():
    boxes = torch.tensor([[8.0, 8.0, 40.0, 36.0], [44.0, 20.0, 76.0, 60.0]])
    labels = torch.tensor([0, 2])
    processor = FaPNRCNNImageProcessor(meta_architecture="mask_rcnn", num_thing_labels=3)
    good = _target(boxes * 2, labels, (128, 160))
    bad = _target(boxes.flip(0) * 2, labels, (128, 160))  # classes swapped between the boxes: false positives
    items = [(score_instances(processor, _outputs(boxes, labels, (64, 80)), [t]), [t]) for t in (good, bad)]
    whole, first, second = (DetectionMetrics(3, ("bbox", "segm")) for _ in range(3))
    for prediction, target in items:
        whole.update(prediction, target)
    first.update(*items[0])
    second.update(*items[1])
    first.merge(second.state())
    assert first.compute() == pytest.approx(whole.compute(), nan_ok=True)
    assert whole.compute()["bbox_AP"] < 1.0
    panoptic_a, panoptic_b = PanopticMetrics(3, 2), PanopticMetrics(3, 2)
    panoptic_a.tp[:] = [1, 0, 2]
    panoptic_b.fp[:] = [0, 1, 0]
    panoptic_a.merge(panoptic_b.state())
    assert panoptic_a.tp.tolist() == [1, 0, 2] and panoptic_a.fp.tolist() == [0, 1, 0]


def test_tiny_run_trains_scores_and_evaluates_the_same(tmp_path):
    # A few steps of the FPN Faster R-CNN demo on 48 px shapes: metrics.json and the card carry box AP, and
    # fapn-evaluate's path scores the saved model on the same images as the Trainer's evaluation did.
    from fapn_hf.inference.evaluation import evaluate_detector
    from fapn_hf.training.args import parse_arguments
    from fapn_hf.training.run import run_training

    output = tmp_path / "run"
    args = parse_arguments(
        [
            "recipes/demo_detection.yaml",
            "--preset", "fpn-faster-rcnn-demo",
            "--max_steps", "1", "--eval_strategy", "no", "--save_strategy", "no",
            "--demo_train_samples", "2", "--demo_validation_samples", "2", "--demo_size", "48",
            "--min_size_train", "48", "--max_size_train", "64", "--per_device_train_batch_size", "2",
            "--report_to", "none", "--output_dir", str(output),
        ]
    )  # fmt: skip
    run = run_training(*args)
    scores = run.metrics["eval"]
    assert {"eval_bbox_AP", "eval_bbox_AP50", "eval_loss"} <= set(scores)
    assert "segm_AP" not in json.dumps(scores)
    recorded = json.loads((output / "metrics.json").read_text())["eval"]
    assert recorded["eval_bbox_AP50"] == scores["eval_bbox_AP50"]
    card = (output / "README.md").read_text()
    assert "pipeline_tag: object-detection" in card and "box AP" in card
    result = evaluate_detector(
        output, "demo", demo_options={"num_train": 0, "num_validation": 2, "size": (48, 48)}, device="cpu"
    )
    assert result["num_images"] == 2 and result["task"] == "object-detection"
    for key in ("bbox_AP", "bbox_AP50", "bbox_AP75"):
        assert result["scores"][key] == pytest.approx(scores[f"eval_{key}"], nan_ok=True)
