"""The built-in detection demo set: deterministic, and its boxes, masks, panoptic map and semantic target agree."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fapn_hf.tasks.detection.data import DetectionLabelSpec, decode_sample
from fapn_hf.tasks.detection.demo_data import (
    DEMO_LABELS,
    DEMO_THING_LABELS,
    MIN_VISIBLE_AREA,
    encode_segment_ids,
    make_demo_dataset,
    make_demo_splits,
    render_sample,
)


def test_samples_depend_only_on_seed_and_index():
    a, b = render_sample(5, seed=1), render_sample(5, seed=1)
    assert np.array_equal(a["image"], b["image"]) and a["segments"] == b["segments"]
    assert not np.array_equal(a["image"], render_sample(5, seed=2)["image"])
    small, large = make_demo_splits(2, 2, seed=3), make_demo_splits(5, 2, seed=3)
    assert small["validation"]["segments_info"] == large["validation"]["segments_info"]
    assert small["train"]["segments_info"] == large["train"]["segments_info"][:2]


def test_boxes_masks_and_panoptic_map_agree():
    things, stuff_seen = 0, set()
    for index in range(20):
        sample = render_sample(index, seed=0, size=(96, 128))
        ids, segments = sample["segment_ids"], sample["segments"]
        assert sample["image"].shape == (96, 128, 3) and sample["image"].dtype == np.uint8
        assert sorted(s["id"] for s in segments) == sorted(set(np.unique(ids).tolist()) - {0})
        for segment in segments:
            mask = ids == segment["id"]
            assert mask.sum() == segment["area"]
            ys, xs = np.nonzero(mask)
            x, y, w, h = segment["bbox"]
            assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            if segment["category_id"] < len(DEMO_THING_LABELS):
                things += 1
                assert segment["area"] >= MIN_VISIBLE_AREA
            else:
                stuff_seen.add(DEMO_LABELS[segment["category_id"]])
    assert things >= 20 and stuff_seen == {"sand", "water"}


def test_rows_decode_to_consistent_instance_and_panoptic_samples():
    dataset = make_demo_dataset(6, seed=0)
    instance_spec = DetectionLabelSpec(len(DEMO_THING_LABELS), masks=True)
    panoptic_spec = DetectionLabelSpec(len(DEMO_LABELS), len(DEMO_THING_LABELS), panoptic=True)
    for index in range(len(dataset)):
        row = dataset.with_format(None)[index]
        from_rle = decode_sample(row, index, instance_spec)
        from_png = decode_sample(row, index, panoptic_spec)
        # The objects' RLE masks and the panoptic PNG's segments are the same pixels.
        assert np.array_equal(from_rle.masks, from_png.masks)
        assert np.array_equal(from_rle.boxes, from_png.boxes)
        semantic = from_png.semantic_labels(panoptic_spec)
        info = {s["id"]: s["category_id"] for s in json.loads(row["segments_info"])}
        for segment_id, category in info.items():
            expected = 0 if category < 3 else category - 3 + 1
            assert (semantic[from_png.segment_ids == segment_id] == expected).all()
        assert (semantic[from_png.segment_ids == 0] == 255).all()


def test_encoding_and_arguments():
    ids = np.array([[0, 1, 256], [65536 + 2, 70000, 3]])
    rgb = encode_segment_ids(ids).astype(np.int64)
    assert np.array_equal(rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2], ids)
    with pytest.raises(ValueError, match="segment ids"):
        encode_segment_ids(np.array([[-1]]))
    with pytest.raises(ValueError, match="size must be at least"):
        render_sample(0, size=(16, 64))
    with pytest.raises(ValueError, match="non-negative"):
        render_sample(-1)
