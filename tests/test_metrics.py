"""Streaming segmentation metrics against brute-force pixel loops and per-class set computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fapn_hf.tasks.semantic.metrics import SegmentationMetrics, boundary_band, confusion_matrix, scores_from_confusion

IGNORE = 255


def random_case(rng: np.random.Generator, shape, num_labels, present=None, ignore_fraction=0.2, block=1):
    """Random (predictions, labels) int64 arrays; labels drawn from ``present`` classes in ``block``-sized squares
    (so that there are regions and boundaries, not only noise), with a random fraction of ignored pixels."""
    present = list(range(num_labels)) if present is None else present
    *lead, h, w = shape
    coarse = rng.choice(present, size=(*lead, -(-h // block), -(-w // block)))
    labels = coarse.repeat(block, axis=-2).repeat(block, axis=-1)[..., :h, :w].astype(np.int64)
    labels[rng.random(shape) < ignore_fraction] = IGNORE
    predictions = rng.integers(0, num_labels, size=shape, dtype=np.int64)
    # Mostly-right predictions, so that IoUs are neither all tiny nor trivial.
    keep = (rng.random(shape) < 0.6) & (labels != IGNORE)
    predictions[keep] = labels[keep]
    return predictions, labels


def brute_confusion(predictions, labels, num_labels, mask=None):
    confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
    for index in np.ndindex(labels.shape):
        if labels[index] == IGNORE or (mask is not None and not mask[index]):
            continue
        confusion[labels[index], predictions[index]] += 1
    return confusion


def brute_scores(predictions, labels, num_labels):
    """Per-class IoU / accuracy from pixel sets over all the (flattened, concatenated) valid pixels."""
    valid = labels != IGNORE
    predictions, labels = predictions[valid], labels[valid]
    ious, accuracies = [], []
    for c in range(num_labels):
        truth, predicted = labels == c, predictions == c
        if not truth.any():
            ious.append(math.nan)
            accuracies.append(math.nan)
            continue
        ious.append((truth & predicted).sum() / (truth | predicted).sum())
        accuracies.append((truth & predicted).sum() / truth.sum())
    return {
        "per_class_iou": ious,
        "per_class_accuracy": accuracies,
        "mean_iou": float(np.nanmean(ious)),
        "mean_accuracy": float(np.nanmean(accuracies)),
        "pixel_accuracy": float((predictions == labels).mean()),
    }


def brute_band(labels, width):
    """Per pixel: is it valid and is some boundary pixel within its (2d+1)^2 window? Labels (N, H, W)."""
    n, h, w = labels.shape
    boundary = np.zeros(labels.shape, dtype=bool)
    for b, y, x in np.ndindex(labels.shape):
        if labels[b, y, x] == IGNORE:
            continue
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            yy, xx = y + dy, x + dx
            if 0 <= yy < h and 0 <= xx < w and labels[b, yy, xx] != IGNORE and labels[b, yy, xx] != labels[b, y, x]:
                boundary[b, y, x] = True
    band = np.zeros(labels.shape, dtype=bool)
    for b, y, x in np.ndindex(labels.shape):
        window = boundary[b, max(0, y - width) : y + width + 1, max(0, x - width) : x + width + 1]
        band[b, y, x] = labels[b, y, x] != IGNORE and window.any()
    return band


def assert_scores_close(actual, expected):
    for key in ("mean_iou", "mean_accuracy", "pixel_accuracy"):
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-12, err_msg=key)
    for key in ("per_class_iou", "per_class_accuracy"):
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-12, equal_nan=True, err_msg=key)


def test_confusion_matrix_matches_pixel_loop():
    rng = np.random.default_rng(0)
    predictions, labels = random_case(rng, (2, 7, 9), num_labels=5)
    expected = brute_confusion(predictions, labels, 5)
    for p, t in ((predictions, labels), (torch.from_numpy(predictions), torch.from_numpy(labels))):
        result = confusion_matrix(p, t, num_labels=5)
        assert result.dtype == torch.int64 and result.shape == (5, 5)
        np.testing.assert_array_equal(result.numpy(), expected)
    # (H, W) inputs, uint8 labels (the usual on-disk dtype) and a restricting mask.
    mask = rng.random(labels.shape) < 0.5
    expected = brute_confusion(predictions[1], labels[1], 5, mask[1])
    result = confusion_matrix(predictions[1], labels[1].astype(np.uint8), num_labels=5, mask=mask[1])
    np.testing.assert_array_equal(result.numpy(), expected)


def test_scores_match_per_class_sets():
    rng = np.random.default_rng(1)
    # Classes 4 and 5 never occur in the ground truth but are predicted: NaN, and out of the means.
    predictions, labels = random_case(rng, (3, 10, 12), num_labels=6, present=[0, 1, 2, 3], block=3)
    metrics = SegmentationMetrics(num_labels=6, boundary_widths=())
    metrics.update(predictions, labels)
    expected = brute_scores(predictions, labels, 6)
    assert_scores_close(scores_from_confusion(metrics.confusion), expected)
    assert math.isnan(expected["per_class_iou"][4]) and math.isnan(expected["per_class_iou"][5])
    assert (metrics.confusion[:, 4:].sum() > 0).item()
    computed = metrics.compute()
    np.testing.assert_allclose(list(computed["per_class_iou"].values()), expected["per_class_iou"], equal_nan=True)
    for key in ("mean_iou", "mean_accuracy", "pixel_accuracy"):
        assert type(computed[key]) is float


def test_streaming_equals_whole_set():
    rng = np.random.default_rng(2)
    batches = [random_case(rng, shape, num_labels=4, block=2) for shape in [(2, 6, 8), (1, 11, 5), (3, 4, 4), (9, 7)]]
    metrics = SegmentationMetrics(num_labels=4, boundary_widths=(1, 3))
    for predictions, labels in batches:
        metrics.update(torch.from_numpy(predictions), torch.from_numpy(labels))
    # Images of different sizes: "all at once" means every valid pixel of the set in one flat row.
    all_predictions = np.concatenate([p.ravel() for p, _ in batches])
    all_labels = np.concatenate([t.ravel() for _, t in batches])
    whole = confusion_matrix(all_predictions[None], all_labels[None], num_labels=4)
    assert torch.equal(metrics.confusion, whole)
    assert_scores_close(scores_from_confusion(metrics.confusion), brute_scores(all_predictions, all_labels, 4))
    for width, confusion in metrics.boundary_confusions.items():
        expected = sum(
            brute_confusion(p, t, 4, brute_band(t.reshape(-1, *t.shape[-2:]), width).reshape(t.shape))
            for p, t in batches
        )
        np.testing.assert_array_equal(confusion.numpy(), expected)


def test_dataset_miou_is_not_mean_of_image_mious():
    large = (np.zeros((4, 4), dtype=np.int64), np.zeros((4, 4), dtype=np.int64))  # perfect, class 0 only
    small = (np.array([[1, 1]]), np.array([[0, 1]]))  # class 0 IoU 0, class 1 IoU 1/2
    per_image = []
    metrics = SegmentationMetrics(num_labels=2)
    for predictions, labels in (large, small):
        metrics.update(predictions, labels)
        one = SegmentationMetrics(num_labels=2)
        one.update(predictions, labels)
        per_image.append(one.compute()["mean_iou"])
    assert per_image == [1.0, 0.25]
    # Over the set: class 0 has TP 16, FN 1; class 1 has TP 1, FP 1.
    assert metrics.compute()["mean_iou"] == pytest.approx((16 / 17 + 1 / 2) / 2, rel=1e-12)
    assert metrics.compute()["mean_iou"] != pytest.approx(sum(per_image) / 2)


@pytest.mark.parametrize("width", [0, 1, 2, 3, 5])
def test_boundary_band_matches_window_search(width):
    rng = np.random.default_rng(10 + width)
    for block, ignore_fraction in ((1, 0.3), (3, 0.1), (4, 0.0)):
        _, labels = random_case(rng, (2, 13, 17), num_labels=3, ignore_fraction=ignore_fraction, block=block)
        # An ignored stripe, as around a void region.
        labels[0, :, 6:8] = IGNORE
        band = boundary_band(torch.from_numpy(labels), width)
        assert band.dtype == torch.bool and band.shape == labels.shape
        np.testing.assert_array_equal(band.numpy(), brute_band(labels, width))
    assert boundary_band(labels[1], width).shape == labels[1].shape


def test_boundary_band_edge_cases():
    assert not boundary_band(torch.zeros(1, 5, 5, dtype=torch.long), 3).any()  # one class: no boundary
    assert not boundary_band(torch.full((5, 5), IGNORE), 3).any()
    # A valid pixel next to an ignored one is not a boundary; an ignored pixel is never in the band.
    labels = torch.tensor([[0, IGNORE, 1]])
    assert not boundary_band(labels, 2).any()
    labels = torch.tensor([[0, 0, 0, 0, 1, IGNORE, IGNORE, IGNORE]])
    assert boundary_band(labels, 1).tolist() == [[False, False, True, True, True, False, False, False]]
    with pytest.raises(ValueError, match="non-negative"):
        boundary_band(labels, -1)


def test_boundary_miou_matches_brute_force():
    rng = np.random.default_rng(3)
    predictions, labels = random_case(rng, (2, 12, 14), num_labels=4, ignore_fraction=0.1, block=3)
    widths = (1, 2, 4)
    metrics = SegmentationMetrics(num_labels=4, boundary_widths=widths)
    metrics.update(predictions, labels)
    computed = metrics.compute()
    expected = []
    for width in widths:
        band = brute_band(labels, width)
        brute = brute_scores(predictions[band], labels[band], 4)["mean_iou"]
        assert computed[f"boundary_iou_{width}px"] == pytest.approx(brute, rel=1e-12)
        expected.append(brute)
    assert computed["boundary_mean_iou"] == pytest.approx(np.mean(expected), rel=1e-12)
    # The band grows with the width, up to every valid pixel.
    sizes = [int(m.sum()) for m in metrics.boundary_confusions.values()]
    assert sizes == sorted(sizes) and sizes[-1] <= int(metrics.confusion.sum())


def test_default_keys_and_names():
    metrics = SegmentationMetrics(num_labels=3, id2label={0: "road", "1": "car"})
    metrics.update(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 2]]))
    result = metrics.compute()
    assert list(result) == [
        "mean_iou",
        "pixel_accuracy",
        "mean_accuracy",
        "boundary_iou_3px",
        "boundary_iou_5px",
        "boundary_iou_8px",
        "boundary_iou_12px",
        "boundary_mean_iou",
        "per_class_iou",
    ]
    assert result["per_class_iou"] == {"road": 1.0, "car": 1.0, "2": 1.0}


def test_perfect_prediction_is_one_everywhere():
    rng = np.random.default_rng(4)
    _, labels = random_case(rng, (2, 16, 16), num_labels=5, block=4)
    predictions = np.where(labels == IGNORE, 0, labels)
    metrics = SegmentationMetrics(num_labels=5)
    metrics.update(predictions, labels)
    result = metrics.compute()
    for key, value in result.items():
        if key == "per_class_iou":
            assert all(v == 1.0 for v in value.values())
        else:
            assert value == 1.0, key


def test_absent_classes_are_nan_and_excluded():
    labels = np.array([[0, 0, 2, 2]])
    predictions = np.array([[0, 1, 2, 2]])  # class 1 predicted but absent from the ground truth; class 3 unused
    scores = scores_from_confusion(confusion_matrix(predictions, labels, num_labels=4))
    assert scores["per_class_iou"][0] == 0.5 and scores["per_class_iou"][2] == 1.0
    assert math.isnan(scores["per_class_iou"][1]) and math.isnan(scores["per_class_iou"][3])
    assert math.isnan(scores["per_class_accuracy"][1]) and math.isnan(scores["per_class_accuracy"][3])
    assert scores["mean_iou"] == 0.75 and scores["mean_accuracy"] == 0.75 and scores["pixel_accuracy"] == 0.75


def test_ignored_pixels_never_count():
    rng = np.random.default_rng(5)
    predictions, labels = random_case(rng, (2, 9, 11), num_labels=4, ignore_fraction=0.4, block=2)
    ignored = labels == IGNORE
    results = []
    for seed in range(3):
        scrambled = predictions.copy()
        scrambled[ignored] = np.random.default_rng(seed).integers(0, 4, size=int(ignored.sum()))
        metrics = SegmentationMetrics(num_labels=4)
        metrics.update(scrambled, labels)
        assert int(metrics.confusion.sum()) == int((~ignored).sum())
        results.append(metrics.state_tensor())
    assert all(torch.equal(results[0], r) for r in results[1:])
    # A configurable ignore_index: relabel 255 -> 7 and nothing changes.
    metrics = SegmentationMetrics(num_labels=4, ignore_index=7)
    metrics.update(predictions, np.where(ignored, 7, labels))
    assert torch.equal(metrics.state_tensor(), results[0])


def test_nothing_seen_gives_nan():
    metrics = SegmentationMetrics(num_labels=3, boundary_widths=(1,))
    metrics.update(np.zeros((2, 2), dtype=np.int64), np.full((2, 2), IGNORE))
    metrics.update(torch.zeros(0, 4, 4, dtype=torch.long), torch.zeros(0, 4, 4, dtype=torch.long))
    result = metrics.compute()
    for key in ("mean_iou", "pixel_accuracy", "mean_accuracy", "boundary_iou_1px", "boundary_mean_iou"):
        assert math.isnan(result[key]), key
    assert all(math.isnan(v) for v in result["per_class_iou"].values())


def test_errors_name_the_values():
    metrics = SegmentationMetrics(num_labels=4)
    with pytest.raises(ValueError, match=r"\(2, 5, 6\).*\(2, 6, 5\)"):
        metrics.update(np.zeros((2, 5, 6), dtype=np.int64), np.zeros((2, 6, 5), dtype=np.int64))
    with pytest.raises(ValueError, match=r"labels contain values \[-1, 4, 9\].*\[0, 4\).*255"):
        metrics.update(np.zeros((1, 5), dtype=np.int64), np.array([[0, 4, 9, -1, IGNORE]]))
    with pytest.raises(ValueError, match=r"predictions contain values \[-2, 4\].*\[0, 4\)"):
        metrics.update(np.array([[0, 4, -2]]), np.array([[0, 1, 2]]))
    with pytest.raises(ValueError, match="shape"):
        metrics.update(np.zeros(5, dtype=np.int64), np.zeros(5, dtype=np.int64))
    with pytest.raises(TypeError, match="float"):
        metrics.update(np.zeros((2, 2)), np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="mask"):
        confusion_matrix(
            np.zeros((2, 2), dtype=np.int64), np.zeros((2, 2), dtype=np.int64), 4, mask=np.ones((3, 2), bool)
        )
    assert not metrics.confusion.any()  # failed updates leave no trace


def test_merge_and_state_tensor_round_trip():
    rng = np.random.default_rng(6)
    batches = [random_case(rng, (1, 8, 10), num_labels=3, block=2) for _ in range(4)]
    whole = SegmentationMetrics(num_labels=3, boundary_widths=(1, 3))
    left = SegmentationMetrics(num_labels=3, boundary_widths=(1, 3))
    right = SegmentationMetrics(num_labels=3, boundary_widths=(1, 3))
    for i, (predictions, labels) in enumerate(batches):
        whole.update(predictions, labels)
        (left if i % 2 else right).update(predictions, labels)

    state = left.state_tensor()
    assert state.dtype == torch.int64 and state.shape == (3, 3, 3)
    assert torch.equal(state[0], left.confusion) and torch.equal(state[2], left.boundary_confusions[3])

    # What an all_reduce(SUM) over two ranks would do.
    reduced = SegmentationMetrics(num_labels=3, boundary_widths=(1, 3))
    reduced.load_state_tensor(left.state_tensor() + right.state_tensor())
    assert torch.equal(reduced.state_tensor(), whole.state_tensor())
    left.merge(right)
    assert torch.equal(left.state_tensor(), whole.state_tensor())
    assert left.compute() == whole.compute()

    state = left.state_tensor()
    state.zero_()  # a copy: the accumulator is untouched
    assert left.confusion.any()
    left.reset()
    assert not left.state_tensor().any()

    with pytest.raises(ValueError, match="boundary_widths"):
        left.merge(SegmentationMetrics(num_labels=3))
    with pytest.raises(ValueError, match="shape"):
        left.load_state_tensor(torch.zeros(5, 3, 3, dtype=torch.int64))
