"""The detection tasks' metrics: COCO AP through pycocotools checked on hand-computed cases, PQ / SQ / RQ checked
against a brute-force re-statement of the COCO panoptic definition on random synthetic images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fapn_hf.tasks.detection.metrics import DetectionMetrics, PanopticMetrics


def _box_mask(box: list[float], size: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(size, bool)
    x0, y0, x1, y1 = (int(v) for v in box)
    mask[y0:y1, x0:x1] = True
    return mask


def _target(boxes: list[list[float]], labels: list[int], size=(64, 64), iscrowd=None) -> dict:
    return {
        "size": size,
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "class_labels": torch.tensor(labels, dtype=torch.long),
        "iscrowd": torch.tensor(iscrowd or [0] * len(labels), dtype=torch.bool),
        "masks": torch.from_numpy(
            np.stack([_box_mask(b, size) for b in boxes]) if boxes else np.zeros((0, *size), bool)
        ),
    }


def _prediction(boxes, labels, scores, size=(64, 64)) -> dict:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.long),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "masks": torch.from_numpy(
            np.stack([_box_mask(b, size) for b in boxes]) if boxes else np.zeros((0, *size), bool)
        ),
    }


# Sizes: 10x10 = 100 px (small, < 32^2), 40x40 = 1600 px (medium).
BOXES = [[2, 2, 12, 12], [20, 20, 60, 60], [5, 40, 15, 50]]
LABELS = [0, 1, 0]


def test_perfect_predictions_give_ap_one_for_boxes_and_masks():
    metrics = DetectionMetrics(2, ("bbox", "segm"), {0: "a", 1: "b"})
    # Streamed over two batches, the second image with different boxes.
    metrics.update([_prediction(BOXES, LABELS, [0.9, 0.8, 0.7])], [_target(BOXES, LABELS)])
    metrics.update([_prediction(BOXES[:1], [1], [0.6])], [_target(BOXES[:1], [1])])
    scores = metrics.compute()
    for iou_type in ("bbox", "segm"):
        for key in ("AP", "AP50", "AP75", "APs", "APm"):
            assert scores[f"{iou_type}_{key}"] == pytest.approx(1.0), (iou_type, key)
        assert math.isnan(scores[f"{iou_type}_APl"])  # no large object: COCOeval's -1, reported as NaN
        assert scores[f"{iou_type}_AP-a"] == pytest.approx(1.0)


def test_a_missed_object_gives_the_expected_recall_and_ap():
    # Class 0 has 2 objects, one found: precision 1 up to recall 0.5, then none -> AP = 51/101 on COCO's 101 recall
    # points (0, 0.01, ..., 0.5 reached). Class 1 is found perfectly: AP 1. Mean over classes.
    metrics = DetectionMetrics(2, ("bbox",))
    metrics.update([_prediction(BOXES[:2], LABELS[:2], [0.9, 0.8])], [_target(BOXES, LABELS)])
    scores = metrics.compute()
    assert scores["bbox_AP"] == pytest.approx((51 / 101 + 1.0) / 2)
    assert scores["bbox_AP-0"] == pytest.approx(51 / 101)


def test_a_shifted_box_counts_only_below_its_iou():
    # Prediction shifted by 2 px on a 10x10 box: IoU = 80 / 120 = 2/3, a true positive at IoU thresholds
    # 0.50 .. 0.65 (4 of 10) only.
    metrics = DetectionMetrics(1, ("bbox",))
    metrics.update([_prediction([[4, 2, 14, 12]], [0], [0.9])], [_target([[2, 2, 12, 12]], [0])])
    scores = metrics.compute()
    assert scores["bbox_AP50"] == pytest.approx(1.0)
    assert scores["bbox_AP75"] == pytest.approx(0.0)
    assert scores["bbox_AP"] == pytest.approx(0.4)


def test_false_positive_with_higher_score_halves_precision():
    # A wrong box scored above the right one: at recall 1 precision is 1/2, so every recall point has 1/2.
    metrics = DetectionMetrics(1, ("bbox",))
    prediction = _prediction([[40, 40, 50, 50], [2, 2, 12, 12]], [0, 0], [0.9, 0.5])
    metrics.update([prediction], [_target([[2, 2, 12, 12]], [0])])
    assert metrics.compute()["bbox_AP"] == pytest.approx(0.5)


def test_crowd_ground_truth_neither_counts_nor_penalises():
    metrics = DetectionMetrics(1, ("bbox",))
    target = _target([[2, 2, 12, 12], [30, 30, 60, 60]], [0, 0], iscrowd=[0, 1])
    prediction = _prediction([[2, 2, 12, 12], [31, 31, 59, 59]], [0, 0], [0.9, 0.95])
    metrics.update([prediction], [target])
    assert metrics.compute()["bbox_AP"] == pytest.approx(1.0)


def test_no_prediction_scores_zero_and_probability_masks_are_thresholded():
    metrics = DetectionMetrics(1, ("segm",))
    metrics.update([_prediction([], [], [])], [_target(BOXES[:1], [0])])
    assert metrics.compute()["segm_AP"] == 0.0
    metrics.reset()
    probabilities = _prediction(BOXES[:1], [0], [0.9])
    probabilities["masks"] = probabilities["masks"].float() * 0.6 + 0.2  # 0.8 inside, 0.2 outside
    metrics.update([probabilities], [_target(BOXES[:1], [0])])
    assert metrics.compute()["segm_AP"] == pytest.approx(1.0)


def test_detection_metrics_refuse_bad_input():
    metrics = DetectionMetrics(2, ("bbox", "segm"))
    with pytest.raises(ValueError, match="prediction labels must lie in"):
        metrics.update([_prediction(BOXES[:1], [5], [0.9])], [_target(BOXES[:1], [0])])
    with pytest.raises(ValueError, match="prediction masks must be"):
        bad = _prediction(BOXES[:1], [0], [0.9], size=(32, 32))
        metrics.update([bad], [_target(BOXES[:1], [0])])
    with pytest.raises(ValueError, match="iou_types"):
        DetectionMetrics(2, ("keypoints",))
    with pytest.raises(ValueError, match="2 predictions for 1 targets"):
        metrics.update([_prediction([], [], [])] * 2, [_target([], [])])


# --------------------------------------------------------------------------------------------------------- panoptic


def _brute_force_pq(images: list[tuple[dict, dict]], num_labels: int, num_things: int) -> dict[str, float]:
    """The COCO panoptic definition restated on pixel sets, pair by pair (no joint histogram)."""
    tp, fp, fn, iou_sum = ([0.0] * num_labels for _ in range(4))
    for prediction, target in images:
        pred_map, gt_map = np.asarray(prediction["segmentation"]), np.asarray(target["segment_ids"])
        pred_segments = {s["id"]: s["label_id"] for s in prediction["segments_info"] if (pred_map == s["id"]).any()}
        gt_segments = {
            s["id"]: (s["category_id"], s["iscrowd"]) for s in target["segments_info"] if (gt_map == s["id"]).any()
        }
        void = ~np.isin(gt_map, list(gt_segments))
        matched_gt, matched_pred = set(), set()
        for g, (gl, crowd) in gt_segments.items():
            for p, pl in pred_segments.items():
                if crowd or gl != pl:
                    continue
                pred_px, gt_px = pred_map == p, gt_map == g
                inter = (pred_px & gt_px).sum()
                union = (pred_px & ~void).sum() + gt_px.sum() - inter
                if inter / union > 0.5:
                    tp[gl] += 1
                    iou_sum[gl] += inter / union
                    matched_gt.add(g)
                    matched_pred.add(p)
        for g, (gl, crowd) in gt_segments.items():
            if g not in matched_gt and not crowd:
                fn[gl] += 1
        for p, pl in pred_segments.items():
            if p in matched_pred:
                continue
            pred_px = pred_map == p
            crowd_px = np.isin(gt_map, [g for g, (gl, c) in gt_segments.items() if c and gl == pl])
            if ((void | crowd_px) & pred_px).sum() / pred_px.sum() > 0.5:
                continue
            fp[pl] += 1
    results = {}
    for suffix, classes in (
        ("", range(num_labels)),
        ("_th", range(num_things)),
        ("_st", range(num_things, num_labels)),
    ):
        pq, sq, rq = [], [], []
        for c in classes:
            if tp[c] + fp[c] + fn[c] == 0:
                continue
            pq.append(iou_sum[c] / (tp[c] + fp[c] / 2 + fn[c] / 2))
            sq.append(iou_sum[c] / tp[c] if tp[c] else 0.0)
            rq.append(tp[c] / (tp[c] + fp[c] / 2 + fn[c] / 2))
        for name, values in (("PQ", pq), ("SQ", sq), ("RQ", rq)):
            results[name + suffix] = float(np.mean(values)) if values else math.nan
    return results


def _random_panoptic(rng: np.random.Generator, size=(24, 24), num_labels=5, num_things=3):
    """A ground truth of random rectangles (some crowd, some void) and a prediction that perturbs it: shifted,
    relabelled, merged or extra segments, so that every branch of the definition is hit."""
    gt = np.zeros(size, np.int64)
    infos = []
    for sid in range(1, int(rng.integers(2, 7))):
        y, x = rng.integers(0, size[0] - 3), rng.integers(0, size[1] - 3)
        h, w = rng.integers(3, size[0] // 2), rng.integers(3, size[1] // 2)
        gt[y : y + h, x : x + w] = sid
        label = int(rng.integers(0, num_labels))
        # At most one crowd region per class, as in COCO panoptic (panopticapi keeps one per class).
        crowd = (
            label < num_things and rng.uniform() < 0.3 and all(s["category_id"] != label for s in infos if s["iscrowd"])
        )
        infos.append({"id": sid, "category_id": label, "iscrowd": int(crowd)})
    pred = np.roll(gt, shift=(int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1)) * 3 + 7
    pred[rng.uniform(size=size) < 0.05] = 0
    pred_infos = []
    for value in np.unique(pred):
        if value == 0:
            continue
        source = (value - 7) // 3
        label = next((s["category_id"] for s in infos if s["id"] == source), int(rng.integers(0, num_labels)))
        if rng.uniform() < 0.15:
            label = int(rng.integers(0, num_labels))
        pred_infos.append({"id": int(value), "label_id": label})
    if rng.uniform() < 0.5:  # an extra prediction over part of the image
        y, x = rng.integers(0, size[0] - 4, 2)
        pred[y : y + 4, x : x + 6] = 999
        pred_infos.append({"id": 999, "label_id": int(rng.integers(0, num_labels))})
    return {"segmentation": torch.from_numpy(pred), "segments_info": pred_infos}, {
        "segment_ids": torch.from_numpy(gt),
        "segments_info": infos,
    }


def test_pq_equals_a_brute_force_restatement_on_random_images():
    rng = np.random.default_rng(0)
    images = [_random_panoptic(rng) for _ in range(60)]
    metrics = PanopticMetrics(5, 3)
    for start in range(0, len(images), 7):  # streamed in uneven batches
        batch = images[start : start + 7]
        metrics.update([p for p, _ in batch], [t for _, t in batch])
    computed, expected = metrics.compute(), _brute_force_pq(images, 5, 3)
    for key, value in expected.items():
        assert computed[key] == pytest.approx(value, abs=1e-12), key
    assert 0.1 < computed["PQ"] < 0.9  # a non-trivial case: matches and misses both present
    assert metrics.fp.sum() > 0 and metrics.fn.sum() > 0 and metrics.tp.sum() > 0


def test_pq_hand_computed_case():
    # GT: thing 0 (ids 1: 4x4 = 16 px), stuff 1 (id 2: the rest but a void column). Prediction: the thing shifted
    # by one column (IoU 12 / 20 = 0.6 -> TP), stuff exactly right (IoU 1 after ignoring void), an extra thing
    # segment of 3 px lying on void only (not a FP).
    gt = np.full((8, 8), 2)
    gt[0:4, 0:4] = 1
    gt[:, 7] = 0
    pred = np.full((8, 8), 20)
    pred[0:4, 1:5] = 10
    pred[0:3, 7] = 30
    pred[3:, 7] = 20  # stuff prediction spills onto void: no penalty
    prediction = {"segmentation": pred, "segments_info": [{"id": 10, "label_id": 0}, {"id": 20, "label_id": 1},
                                                          {"id": 30, "label_id": 0}]}  # fmt: skip
    target = {"segment_ids": gt, "segments_info": [{"id": 1, "category_id": 0}, {"id": 2, "category_id": 1}]}
    metrics = PanopticMetrics(2, 1, {0: "thing", 1: "stuff"})
    metrics.update([prediction], [target])
    scores = metrics.compute()
    # Stuff: GT 56 - 16 ... : gt stuff px = 8*7 - 16 = 40; pred 20 covers 64 - 16 (thing) - 3 (id 30) = 45 px, of
    # which 5 on void; intersection = 40 - 4 (the thing's shifted-in column) = 36; union = 45 + 40 - 36 - 5 = 44.
    stuff_iou = 36 / 44
    assert scores["PQ-thing"] == pytest.approx(0.6)
    assert scores["PQ-stuff"] == pytest.approx(stuff_iou)
    assert scores["PQ"] == pytest.approx((0.6 + stuff_iou) / 2)
    assert scores["RQ"] == pytest.approx(1.0)
    assert scores["PQ_th"] == pytest.approx(0.6) and scores["PQ_st"] == pytest.approx(stuff_iou)


def test_panoptic_metrics_refuse_bad_input():
    metrics = PanopticMetrics(2, 1)
    target = {"segment_ids": np.zeros((4, 4)), "segments_info": []}
    with pytest.raises(ValueError, match="one size"):
        metrics.update([{"segmentation": np.zeros((4, 5)), "segments_info": []}], [target])
    with pytest.raises(ValueError, match="label_ids must lie in"):
        metrics.update([{"segmentation": np.ones((4, 4)), "segments_info": [{"id": 1, "label_id": 7}]}], [target])
    assert math.isnan(PanopticMetrics(2, 1).compute()["PQ"])
