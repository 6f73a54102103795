"""Streaming metrics of the detection tasks: COCO box and mask AP through pycocotools' `COCOeval`, and PQ / SQ / RQ by
the COCO panoptic definition (Kirillov et al.; panopticapi's `pq_compute`).

`DetectionMetrics` keeps, per image, only what `COCOeval` reads: ground-truth and predicted boxes, scores, classes,
areas and masks as compressed RLE (a few hundred bytes each, never dense arrays); `compute` hands them to pycocotools
(AP at IoU .50:.05:.95, AP50, AP75, APs / APm / APl, 100 detections per image). `PanopticMetrics` keeps four numbers
per class (matched IoU sum, TP, FP, FN), accumulated image by image as panopticapi does:

* a predicted and a ground-truth segment of the same class match when their IoU > 0.5, where the union leaves out
  the predicted pixels that fall on void (unlabelled) ground truth; crowd ground truth never matches;
* unmatched non-crowd ground truth segments are false negatives;
* an unmatched prediction is a false positive unless more than half of it lies on void or on a crowd region of its
  class;
* PQ = IoU sum / (TP + FP / 2 + FN / 2), SQ = IoU sum / TP, RQ = TP / (TP + FP / 2 + FN / 2) per class, averaged
  over the classes with TP + FP + FN > 0 (all, things, stuff).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = ["AP_KEYS", "DetectionMetrics", "PanopticMetrics", "make_detection_metrics", "make_panoptic_metrics"]

# COCOeval.stats[0:6], in order.
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# Mask probabilities are binarised here (detectron2's paste threshold).
MASK_THRESHOLD = 0.5


def _numpy(values: Any, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    if values is None:
        raise ValueError(f"{name} is missing")
    return np.asarray(values)


def _rles(masks: Any, name: str, size: tuple[int, int]) -> list[dict]:
    """`(N, H, W)` masks (bool, or probabilities thresholded at 0.5) as compressed RLEs of the image `size`."""
    array = _numpy(masks, name)
    if array.ndim != 3 or tuple(array.shape[1:]) != tuple(size):
        raise ValueError(f"{name} must be (N, H, W) with (H, W) = {tuple(size)}, got shape {tuple(array.shape)}")
    binary = array > MASK_THRESHOLD if array.dtype.kind == "f" else array.astype(bool)
    return [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in binary]


class DetectionMetrics:
    """COCO AP over an evaluation set, streamed: `update(predictions, targets)` per batch, `compute()` at the end.

    Args:
        num_labels: the thing classes `0 .. num_labels - 1` (the detector's `num_thing_labels`).
        iou_types: `"bbox"` and / or `"segm"`.
        id2label: names for the per-class AP of `compute` (`AP-<name>`).

    `update` takes, per image, a prediction `{"boxes": (K, 4) absolute xyxy, "scores": (K,), "labels": (K,),
    "masks": (K, H, W) bool or probabilities (for "segm")}` in the pixels of the target's original image (the
    processor's post-processing with `target_sizes` gives these) and a target `{"image_id", "size": (H, W), "boxes":
    (N, 4) xyxy, "class_labels": (N,), "iscrowd": (N,) optional, "area": (N,) optional (COCO's area, which sets
    the small / medium / large ranges; default: mask area for "segm", else box area), "masks": (N, H, W)}`.
    """

    def __init__(
        self, num_labels: int, iou_types: Sequence[str] = ("bbox",), id2label: dict[int, str] | None = None
    ) -> None:
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"num_labels must be a positive int, got {num_labels!r}")
        unknown = [t for t in iou_types if t not in ("bbox", "segm")]
        if unknown or not iou_types:
            raise ValueError(f"iou_types must be a non-empty subset of ('bbox', 'segm'), got {tuple(iou_types)}")
        self.num_labels = num_labels
        self.iou_types = tuple(dict.fromkeys(iou_types))
        names = {int(k): str(v) for k, v in (id2label or {}).items()}
        self.label_names = [names.get(i, str(i)) for i in range(num_labels)]
        self.reset()

    def reset(self) -> None:
        self._images: list[dict] = []
        self._ground_truth: list[dict] = []
        self._detections: list[dict] = []

    def update(self, predictions: Sequence[dict[str, Any]], targets: Sequence[dict[str, Any]]) -> None:
        """Adds a batch: one prediction dict and one target dict per image (class docstring)."""
        if len(predictions) != len(targets):
            raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
        for prediction, target in zip(predictions, targets):
            self._add_image(prediction, target)

    def _add_image(self, prediction: dict[str, Any], target: dict[str, Any]) -> None:
        # Images are numbered here: COCOeval only needs them distinct, and data sets may repeat or lack ids.
        image_id = len(self._images) + 1
        height, width = (int(s) for s in target["size"])
        self._images.append({"id": image_id, "height": height, "width": width})
        segm = "segm" in self.iou_types
        boxes = _numpy(target["boxes"], "target boxes").reshape(-1, 4).astype(np.float64)
        labels = _numpy(target["class_labels"], "target class_labels").reshape(-1).astype(np.int64)
        count = len(boxes)
        crowd = _numpy(target.get("iscrowd", np.zeros(count)), "target iscrowd").reshape(-1).astype(bool)
        rles = _rles(target["masks"], "target masks", (height, width)) if segm else [None] * count
        if target.get("area") is not None:
            area = _numpy(target["area"], "target area").reshape(-1).astype(np.float64)
        elif segm:
            area = np.array([mask_utils.area(r) for r in rles], np.float64)
        else:
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        if not len(labels) == len(crowd) == len(area) == len(rles) == count:
            raise ValueError(f"target of image {target.get('image_id')}: boxes, labels, iscrowd, area differ in length")
        self._check_labels(labels, "target class_labels")
        for k in range(count):
            x0, y0, x1, y1 = boxes[k]
            annotation = {
                "id": len(self._ground_truth) + 1,
                "image_id": image_id,
                "category_id": int(labels[k]),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": float(area[k]),
                "iscrowd": int(crowd[k]),
            }
            if segm:
                annotation["segmentation"] = rles[k]
            self._ground_truth.append(annotation)
        scores = _numpy(prediction["scores"], "prediction scores").reshape(-1).astype(np.float64)
        predicted = _numpy(prediction["labels"], "prediction labels").reshape(-1).astype(np.int64)
        pred_boxes = _numpy(prediction["boxes"], "prediction boxes").reshape(-1, 4).astype(np.float64)
        pred_rles = _rles(prediction["masks"], "prediction masks", (height, width)) if segm else [None] * len(scores)
        if not len(predicted) == len(pred_boxes) == len(pred_rles) == len(scores):
            raise ValueError("prediction boxes, scores, labels and masks differ in length")
        self._check_labels(predicted, "prediction labels")
        for k in range(len(scores)):
            x0, y0, x1, y1 = pred_boxes[k]
            detection = {
                "image_id": image_id,
                "category_id": int(predicted[k]),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": float(scores[k]),
            }
            if segm:
                detection["segmentation"] = pred_rles[k]
            self._detections.append(detection)

    def state(self) -> dict[str, list[dict]]:
        """What `update` has gathered (plain lists, picklable): another process's metrics `merge` it."""
        return {"images": self._images, "ground_truth": self._ground_truth, "detections": self._detections}

    def merge(self, state: dict[str, list[dict]]) -> None:
        """Adds the images of another `state()` (e.g. another process's shard), renumbering images and annotations."""
        image_offset, annotation_offset = len(self._images), len(self._ground_truth)
        self._images += [{**image, "id": image["id"] + image_offset} for image in state["images"]]
        self._ground_truth += [
            {**a, "id": a["id"] + annotation_offset, "image_id": a["image_id"] + image_offset}
            for a in state["ground_truth"]
        ]
        self._detections += [{**d, "image_id": d["image_id"] + image_offset} for d in state["detections"]]

    def _check_labels(self, labels: np.ndarray, name: str) -> None:
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_labels):
            raise ValueError(f"{name} must lie in [0, {self.num_labels}), got {sorted(set(labels.tolist()))}")

    def compute(self) -> dict[str, float]:
        """`bbox_AP`, `bbox_AP50`, ..., `segm_APl` (in [0, 1]; NaN where COCOeval has no ground truth to score), and
        `<type>_AP-<class name>` per class. No prediction at all scores 0 where there is ground truth."""
        results: dict[str, float] = {}
        for iou_type in self.iou_types:
            results.update(self._evaluate(iou_type))
        return results

    def _evaluate(self, iou_type: str) -> dict[str, float]:
        ground_truth = COCO()
        ground_truth.dataset = {
            "images": self._images,
            "annotations": self._ground_truth,
            "categories": [{"id": i, "name": name} for i, name in enumerate(self.label_names)],
        }
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            ground_truth.createIndex()
            if not self._detections:
                has_truth = any(not a["iscrowd"] for a in self._ground_truth)
                value = 0.0 if has_truth else math.nan
                return {f"{iou_type}_{key}": value for key in AP_KEYS}
            detections = ground_truth.loadRes([dict(d) for d in self._detections])
            evaluator = COCOeval(ground_truth, detections, iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        results = {f"{iou_type}_{key}": _defined(value) for key, value in zip(AP_KEYS, evaluator.stats[:6])}
        # precision: (IoU thresholds, recall points, classes, area ranges, max detections); -1 = no ground truth.
        precision = evaluator.eval["precision"][:, :, :, 0, -1]
        for k, name in enumerate(self.label_names):
            values = precision[:, :, k]
            values = values[values > -1]
            results[f"{iou_type}_AP-{name}"] = float(values.mean()) if values.size else math.nan
        return results


def _defined(value: float) -> float:
    return math.nan if value < 0 else float(value)


class PanopticMetrics:
    """PQ, SQ and RQ (all classes, things, stuff) over an evaluation set, streamed (module docstring).

    Args:
        num_labels: all classes, things first (`id2label` of the panoptic model).
        num_thing_labels: classes `0 .. num_thing_labels - 1` are things, the rest stuff.
        id2label: names for the per-class PQ of `compute` (`PQ-<name>`).

    `update(predictions, targets)` takes, per image, a prediction `{"segmentation": (H, W) int segment ids (0 or any
    id absent from segments_info: unassigned), "segments_info": [{"id", "label_id"}]}` (what the processor's
    `post_process_panoptic_segmentation` returns, at the target's size) and a target `{"segment_ids": (H, W)
    (0 = void), "segments_info": [{"id", "category_id", "iscrowd"}]}`.
    """

    def __init__(self, num_labels: int, num_thing_labels: int, id2label: dict[int, str] | None = None) -> None:
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"num_labels must be a positive int, got {num_labels!r}")
        if not 0 <= num_thing_labels <= num_labels:
            raise ValueError(f"num_thing_labels must lie in [0, {num_labels}], got {num_thing_labels}")
        self.num_labels, self.num_thing_labels = num_labels, num_thing_labels
        names = {int(k): str(v) for k, v in (id2label or {}).items()}
        self.label_names = [names.get(i, str(i)) for i in range(num_labels)]
        self.reset()

    def reset(self) -> None:
        # Per class: matched IoU sum, TP, FP, FN.
        self.iou = np.zeros(self.num_labels, np.float64)
        self.tp = np.zeros(self.num_labels, np.int64)
        self.fp = np.zeros(self.num_labels, np.int64)
        self.fn = np.zeros(self.num_labels, np.int64)

    def update(self, predictions: Sequence[dict[str, Any]], targets: Sequence[dict[str, Any]]) -> None:
        """Adds a batch: one prediction and one target per image (class docstring)."""
        if len(predictions) != len(targets):
            raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
        for prediction, target in zip(predictions, targets):
            self._add_image(prediction, target)

    def _add_image(self, prediction: dict[str, Any], target: dict[str, Any]) -> None:
        pred_map = _numpy(prediction["segmentation"], "prediction segmentation").astype(np.int64)
        gt_map = _numpy(target["segment_ids"], "target segment_ids").astype(np.int64)
        if pred_map.shape != gt_map.shape or pred_map.ndim != 2:
            raise ValueError(
                f"the prediction's segmentation {tuple(pred_map.shape)} and the target's segment_ids "
                f"{tuple(gt_map.shape)} must be (H, W) maps of one size (post-process with target_sizes)"
            )
        pred_class = {int(s["id"]): int(s["label_id"]) for s in prediction["segments_info"]}
        gt_info = {int(s["id"]): (int(s["category_id"]), bool(s.get("iscrowd", 0))) for s in target["segments_info"]}
        for name, classes in (("prediction label_id", pred_class.values()), ("target category_id", gt_info.values())):
            values = [c if isinstance(c, int) else c[0] for c in classes]
            if any(not 0 <= c < self.num_labels for c in values):
                raise ValueError(f"{name}s must lie in [0, {self.num_labels}), got {sorted(set(values))}")
        # Pixels of ids missing from the segment lists count as unassigned (prediction) / void (ground truth).
        pred_map = np.where(np.isin(pred_map, list(pred_class)), pred_map, 0)
        gt_map = np.where(np.isin(gt_map, list(gt_info)), gt_map, 0)
        pred_ids, pred_area = np.unique(pred_map, return_counts=True)
        pred_area = dict(zip(pred_ids.tolist(), pred_area.tolist()))
        gt_ids, gt_area = np.unique(gt_map, return_counts=True)
        gt_area = dict(zip(gt_ids.tolist(), gt_area.tolist()))
        # Intersections of every (ground truth, prediction) pair present in the image, by one joint unique.
        offset = int(max(pred_map.max(initial=0), 0)) + 1
        pairs, counts = np.unique(gt_map * offset + pred_map, return_counts=True)
        intersection = {(int(p // offset), int(p % offset)): int(c) for p, c in zip(pairs, counts)}
        gt_matched, pred_matched = set(), set()
        for (gt_id, pred_id), inter in intersection.items():
            if gt_id == 0 or pred_id == 0 or gt_info[gt_id][1] or gt_info[gt_id][0] != pred_class[pred_id]:
                continue
            union = pred_area[pred_id] + gt_area[gt_id] - inter - intersection.get((0, pred_id), 0)
            iou = inter / union
            if iou > 0.5:
                label = gt_info[gt_id][0]
                self.tp[label] += 1
                self.iou[label] += iou
                gt_matched.add(gt_id)
                pred_matched.add(pred_id)
        crowd_of_class = {}
        for gt_id, (label, crowd) in gt_info.items():
            if gt_id in gt_matched or gt_id not in gt_area:
                continue
            if crowd:
                crowd_of_class[label] = gt_id
            else:
                self.fn[label] += 1
        for pred_id, label in pred_class.items():
            if pred_id in pred_matched or pred_id not in pred_area:
                continue
            ignored = intersection.get((0, pred_id), 0)
            if label in crowd_of_class:
                ignored += intersection.get((crowd_of_class[label], pred_id), 0)
            if ignored / pred_area[pred_id] > 0.5:
                continue
            self.fp[label] += 1

    def state(self) -> dict[str, np.ndarray]:
        """The per-class sums `update` has gathered: another process's metrics `merge` them."""
        return {"iou": self.iou, "tp": self.tp, "fp": self.fp, "fn": self.fn}

    def merge(self, state: dict[str, np.ndarray]) -> None:
        """Adds the per-class sums of another `state()` (e.g. another process's shard)."""
        for key in ("iou", "tp", "fp", "fn"):
            setattr(self, key, getattr(self, key) + np.asarray(state[key]))

    def compute(self) -> dict[str, float]:
        """`PQ`, `SQ`, `RQ` (all classes), `PQ_th`, `SQ_th`, `RQ_th` (things), `PQ_st`, `SQ_st`, `RQ_st` (stuff), in
        [0, 1] (NaN when no class of the group appeared), and `PQ-<class name>` per class."""
        denominator = self.tp + 0.5 * self.fp + 0.5 * self.fn
        present = denominator > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            pq = np.where(present, self.iou / denominator, 0.0)
            sq = np.where(self.tp > 0, self.iou / self.tp, 0.0)
            rq = np.where(present, self.tp / denominator, 0.0)
        things = np.arange(self.num_labels) < self.num_thing_labels
        results: dict[str, float] = {}
        for suffix, group in (("", np.ones_like(things)), ("_th", things), ("_st", ~things)):
            selected = group & present
            for name, values in (("PQ", pq), ("SQ", sq), ("RQ", rq)):
                results[f"{name}{suffix}"] = float(values[selected].mean()) if selected.any() else math.nan
        for k, name in enumerate(self.label_names):
            results[f"PQ-{name}"] = float(pq[k]) if present[k] else math.nan
        return results


def make_detection_metrics(
    num_labels: int,
    ignore_index: int = 255,
    id2label: dict[int, str] | None = None,
    *,
    masks: bool = False,
    num_thing_labels: int | None = None,
) -> DetectionMetrics:
    """`Task.make_metrics` of object detection (box AP) and instance segmentation (`masks`: box and mask AP), over
    the thing classes (`num_thing_labels`, default all `num_labels`)."""
    things = num_labels if num_thing_labels is None else num_thing_labels
    return DetectionMetrics(things, ("bbox", "segm") if masks else ("bbox",), id2label)


def make_panoptic_metrics(
    num_labels: int, ignore_index: int = 255, id2label: dict[int, str] | None = None, *, num_thing_labels: int
) -> PanopticMetrics:
    """`Task.make_metrics` of panoptic segmentation."""
    return PanopticMetrics(num_labels, num_thing_labels, id2label)
